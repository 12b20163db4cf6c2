"""build_sampler: batching, bucketing, DDP disjointness, exact mid-epoch resume, duration filtering."""

import bisect
import random
from itertools import islice

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording

from nest_ssl.config import ConfigError
from nest_ssl.data.bucketing import bins_from_durations
from nest_ssl.data.manifests import ManifestError, open_cutset, open_source
from nest_ssl.data.sampler import build_sampler
from nest_ssl.prepare.bucket_bins import estimate_bucket_bins, sample_durations

SR = 8000


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """600 cuts of 0.5-20 s over one real 60 s recording, as a lazy lhotse manifest split in two files."""
    d = tmp_path_factory.mktemp("sampler")
    wav = str(d / "long.wav")
    sf.write(wav, (np.random.default_rng(0).standard_normal(60 * SR) * 0.1).astype(np.float32), SR)
    rec = Recording.from_file(wav, recording_id="long")
    rng = random.Random(0)
    paths = []
    for part in range(2):
        cuts = []
        for i in range(300):
            dur = round(rng.uniform(0.5, 20.0), 3)
            start = round(rng.uniform(0.0, 60.0 - dur), 3)
            c = rec.to_cut().truncate(offset=start, duration=dur, preserve_id=True)
            c.id = f"p{part}-{i:04d}"
            cuts.append(c)
        path = str(d / f"cuts.{part}.jsonl.gz")
        CutSet(cuts).to_file(path)
        paths.append(path)
    return ",".join(paths)


def _ids(sampler, n=None):
    return [[c.id for c in batch] for batch in islice(sampler, n)]


BUCKETING = dict(use_bucketing=True, batch_duration=60.0, num_buckets=4, bucket_buffer_size=200, shuffle_buffer_size=100)


def test_duration_batches_and_bucketing(manifest):
    sampler = build_sampler(open_source(manifest), dict(BUCKETING, shuffle=True), seed=1)
    assert not sampler.iterable_dataset and sampler.worker_init_fn is None
    batches = list(sampler)
    ids = [c.id for b in batches for c in b]
    assert sorted(ids) == sorted(c.id for c in open_cutset(manifest))  # one epoch = every cut once
    bins = sampler.duration_bins
    assert len(bins) == 3
    for b in batches:
        durs = [c.duration for c in b]
        # Lhotse closes a batch once one more cut as long as the longest would exceed batch_duration, so the
        # padded size before the last cut was added stays within it.
        if len(durs) > 1:
            assert len(durs) * max(durs[:-1]) <= 60.0 + 1e-6
        assert sum(durs) <= 60.0
        # all cuts of a batch come from one duration bucket (lhotse: bins[i-1] < d <= bins[i])
        k = {bisect.bisect_left(bins, d) for d in durs}
        assert len(k) == 1


def test_batch_size_only_and_drop_last(manifest):
    sampler = build_sampler(open_source(manifest), {"batch_size": 7, "shuffle": False}, seed=0, training=False)
    sizes = [len(b) for b in sampler]
    assert sizes == [7] * (600 // 7) + [600 % 7]
    # not shuffled: the manifest order
    first = next(iter(sampler))
    assert [c.id for c in first] == [f"p0-{i:04d}" for i in range(7)]
    dropped = build_sampler(open_source(manifest), {"batch_size": 7, "drop_last": True}, seed=0)
    assert [len(b) for b in dropped] == [7] * (600 // 7)
    with pytest.raises(ConfigError, match="batch_size .* or .*batch_duration"):
        build_sampler(open_source(manifest), {"shuffle": True}, seed=0)


@pytest.mark.parametrize("cfg", [dict(BUCKETING, shuffle=True), {"batch_size": 5, "shuffle": True, "shuffle_buffer_size": 50}])
def test_exact_mid_epoch_resume(manifest, cfg):
    uninterrupted = build_sampler(open_source(manifest), cfg, seed=7)
    uninterrupted.set_epoch(1)  # a later epoch: the order depends on it
    expected = _ids(uninterrupted)

    run = build_sampler(open_source(manifest), cfg, seed=7)
    run.set_epoch(1)
    head = _ids(run, 9)
    state = run.state_dict()

    resumed = build_sampler(open_source(manifest), cfg, seed=7)  # fresh process: fresh objects
    resumed.load_state_dict(state)
    tail = _ids(resumed)
    assert head + tail == expected
    assert len(tail) > 0 and len(head) == 9
    # and the next epoch still differs from this one
    resumed.set_epoch(2)
    assert _ids(resumed, 3) != expected[:3]


def test_stream_order_is_reshuffled_per_epoch_and_follows_the_sampler(manifest):
    sampler = build_sampler(open_source(manifest), dict(BUCKETING, shuffle=True), seed=7)
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        _ids(sampler, 1)  # iter() hands the epoch to the stream
        assert sampler.source.epoch == epoch
        orders.append([c.id for c in islice(sampler.source, 600)])
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]
    # which manifest file comes first changes with the epoch too (seeded, so this is deterministic)
    firsts = set()
    for epoch in range(6):
        sampler.source.epoch = epoch
        firsts.add(next(iter(sampler.source)).id[:2])
    assert firsts == {"p0", "p1"}


def test_ddp_ranks_get_disjoint_batches(manifest):
    per_rank = []
    for rank in range(2):
        s = build_sampler(open_source(manifest), dict(BUCKETING, shuffle=True), seed=3, rank=rank, world_size=2)
        per_rank.append(_ids(s))
    a = {c for b in per_rank[0] for c in b}
    b = {c for b in per_rank[1] for c in b}
    assert not a & b
    assert len(a | b) == 600
    assert len(per_rank[0]) == len(per_rank[1])  # same number of steps on every rank


def test_duration_filter_and_filter_everything(manifest):
    s = build_sampler(open_source(manifest), {"batch_size": 50, "min_duration": 5.0, "max_duration": 10.0}, seed=0)
    durs = [c.duration for b in s for c in b]
    assert durs and all(5.0 <= d <= 10.0 for d in durs)
    with pytest.raises(ManifestError, match=r"min_duration=30\.0 .* removed all 600 cuts"):
        s = build_sampler(open_source(manifest), {"batch_size": 4, "min_duration": 30.0}, seed=0)
        list(s)
    # with bucketing the bins estimate meets the empty stream already at construction
    with pytest.raises(ManifestError, match=r"train_ds.min_duration"):
        build_sampler(open_source(manifest, what="train_ds.manifest_filepath"), dict(BUCKETING, min_duration=30.0), seed=0)


def test_estimate_bucket_bins(manifest):
    bins = estimate_bucket_bins(open_source(manifest), 5, num_cuts=600)
    assert len(bins) == 4 and bins == sorted(bins)
    durs = np.array([c.duration for c in open_cutset(manifest)])
    totals = [durs[(durs >= lo) & (durs < hi)].sum() for lo, hi in zip([0] + bins, bins + [1e9])]
    assert max(totals) < 2.0 * min(totals)  # roughly equal total duration per bucket
    with pytest.raises(ManifestError, match="num_buckets"):
        estimate_bucket_bins(open_source(manifest), 1)


def test_nemo_yaml_train_ds_section_works_as_is(manifest):
    """NeMo's nest_fast-conformer train_ds keys (no Lhotse keys at all) give a batch_size sampler with its filter."""
    from omegaconf import OmegaConf

    train_ds = OmegaConf.create(
        {
            "manifest_filepath": manifest,
            "sample_rate": 16000,
            "batch_size": 8,
            "shuffle": True,
            "num_workers": 8,
            "max_duration": 60.0,
            "min_duration": 1.0,
            "drop_last": True,
            "is_tarred": False,
            "tarred_audio_filepaths": None,
            "shuffle_n": 2048,
            "bucketing_strategy": "synced_randomized",
            "bucketing_batch_size": None,
        }
    )
    s = build_sampler(open_source(manifest, what="train_ds.manifest_filepath"), train_ds, seed=0)
    batches = list(s)
    assert all(len(b) == 8 for b in batches)
    assert all(c.duration >= 1.0 for b in batches for c in b)
    with pytest.raises(ConfigError, match="is_tarred"):
        build_sampler(open_source(manifest), OmegaConf.merge(train_ds, {"is_tarred": True}), seed=0)
    with pytest.raises(ConfigError, match=r"train_ds\.seed='trng': must be an integer .*shard_seed"):
        build_sampler(open_source(manifest), OmegaConf.merge(train_ds, {"seed": "trng"}), seed=0)


def test_estimate_bins_sample_the_whole_manifest_sorted_by_duration(tmp_path, capsys):
    """3000 cuts sorted by duration (0.5-20 s): the first 300 are all shorter than 2.5 s, so bins from the head of
    the file would all be below that; a uniform sample of 300 matches the bins of all 3000."""
    wav = str(tmp_path / "long.wav")
    sf.write(wav, (np.random.default_rng(0).standard_normal(21 * SR) * 0.1).astype(np.float32), SR)
    rec = Recording.from_file(wav, recording_id="long")
    durations = np.round(np.linspace(0.5, 20.0, 3000), 3)
    cuts = []
    for i, d in enumerate(durations):
        c = rec.to_cut().truncate(offset=0.0, duration=float(d), preserve_id=True)
        c.id = f"c{i:05d}"
        cuts.append(c)
    path = str(tmp_path / "sorted.jsonl.gz")
    CutSet(cuts).to_file(path)

    exact = bins_from_durations(list(durations), 5)
    est = estimate_bucket_bins(open_source(path), 5, num_cuts=300)
    assert len(est) == 4 and est[0] > 5.0 and est[-1] > 15.0
    for e, x in zip(est, exact):
        assert abs(e - x) < 1.5, (est, exact)
    assert estimate_bucket_bins(open_source(path), 5, num_cuts=300) == est  # seeded
    # what reading the head gives, for contrast (and max_cuts_read's meaning)
    assert max(estimate_bucket_bins(open_source(path), 5, num_cuts=300, max_cuts_read=300)) < 2.5

    # the reservoir: bounded, uniform over the file (each tenth of the sorted file holds about a tenth of the sample)
    sample, kept, exhausted = sample_durations(open_source(path), 300, seed=1)
    assert len(sample) == 300 and kept == 3000 and exhausted
    per_tenth = np.histogram(sample, bins=np.quantile(durations, np.linspace(0, 1, 11)))[0]
    assert per_tenth.min() >= 12 and per_tenth.max() <= 50, per_tenth
    # the duration filter applies before sampling
    sample, kept, _ = sample_durations(open_source(path), 300, min_duration=15.0)
    assert min(sample) >= 15.0 and kept == int((durations >= 15.0).sum())

    # the CLI prints the same bins
    from nest_ssl.cli import main

    assert main(["cuts", "estimate-bins", path, "-b", "5", "-n", "300", "--key", "model.train_ds"]) == 0
    assert capsys.readouterr().out.strip() == f"model.train_ds.bucket_duration_bins=[{','.join(f'{b:g}' for b in est)}]"


def test_sampler_warns_when_it_estimated_bins_from_the_head(manifest, caplog):
    import logging

    cfg = dict(BUCKETING, num_cuts_for_bins_estimate=100)
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data.sampler"):
        build_sampler(open_source(manifest), cfg, seed=0)
    assert any("first 100 cuts" in r.getMessage() and "estimate-bins" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data.sampler"):
        build_sampler(open_source(manifest), dict(BUCKETING, num_cuts_for_bins_estimate=600), seed=0)
    assert not any("first" in r.getMessage() for r in caplog.records)  # it read every cut


def test_small_dataset_that_bucketing_and_drop_last_shrink_gets_one_warning(tmp_path, caplog):
    """40 cuts of 1-10 s in 4 buckets of 60 s batches with drop_last: each bucket drops its incomplete last batch,
    so an epoch trains on a fraction of the data; the sampler says how much, once, and what to change."""
    import logging

    wav = str(tmp_path / "long.wav")
    sf.write(wav, (np.random.default_rng(0).standard_normal(12 * SR) * 0.1).astype(np.float32), SR)
    rec = Recording.from_file(wav, recording_id="long")
    rng = random.Random(1)
    cuts = []
    for i in range(40):
        c = rec.to_cut().truncate(offset=0.0, duration=round(rng.uniform(1.0, 10.0), 2), preserve_id=True)
        c.id = f"c{i:03d}"
        cuts.append(c)
    path = str(tmp_path / "small.jsonl.gz")
    CutSet(cuts).to_file(path)
    total_h = sum(c.duration for c in cuts) / 3600
    cfg = dict(use_bucketing=True, batch_duration=60.0, num_buckets=4, drop_last=True, shuffle=True)
    sampler = build_sampler(open_source(path), cfg, seed=0)
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data.sampler"):
        used = sum(len(b) for b in sampler)
        sampler.set_epoch(1)
        list(sampler)  # a second epoch: no second warning
    warnings = [r.getMessage() for r in caplog.records if "an epoch trains on" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert used < 0.9 * 40
    msg = warnings[0]
    assert f"trains on {used} of 40 cuts ({100 * used / 40:.0f}%" in msg
    assert f"of {total_h:.2f} h" in msg
    assert "drop_last=false" in msg and "num_buckets" in msg and "batch_duration" in msg

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data.sampler"):
        kept = build_sampler(open_source(path), dict(cfg, drop_last=False), seed=0)
        assert sum(len(b) for b in kept) == 40  # nothing dropped: nothing to say
    assert not [r for r in caplog.records if "an epoch trains on" in r.getMessage()]
