"""Shar export (external global shuffle, FLAC) and reading it back lazily, incl. the iterable sampler mode."""

import os
import tarfile
from itertools import islice

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording
from lhotse.dataset import IterableDatasetWrapper

from nest_ssl.data import AudioNoiseBatch, build_dataloader
from nest_ssl.data.manifests import ManifestError, open_cutset, open_source
from nest_ssl.data.sampler import build_sampler
from nest_ssl.prepare.shar import export_shar, external_shuffle_lines

SR = 8000


def test_external_shuffle_is_a_bounded_memory_permutation(tmp_path):
    lines = [f"{i}\n" for i in range(2000)]
    tmp = tmp_path / "tmp"
    # 2000 lines, at most 50 in memory, fanout 4: forces several levels of re-splitting on disk
    out = list(external_shuffle_lines(iter(lines), tmp, seed=3, fanout=4, max_lines_in_memory=50))
    assert sorted(out) == sorted(lines) and out != lines
    assert not tmp.exists()  # temporary buckets removed
    assert out == list(external_shuffle_lines(iter(lines), tmp, seed=3, fanout=4, max_lines_in_memory=50))
    other = list(external_shuffle_lines(iter(lines), tmp, seed=4, fanout=4, max_lines_in_memory=50))
    assert other != out
    # a global shuffle: the first 10% of the output draws from the whole input, not just its head
    head = [int(x) for x in out[:200]]
    assert max(head) > 1500 and min(head) < 500


@pytest.fixture(scope="module")
def cuts_manifest(tmp_path_factory):
    d = tmp_path_factory.mktemp("shar")
    rng = np.random.default_rng(0)
    cuts = []
    for i in range(10):
        path = str(d / f"u{i}.wav")
        sf.write(path, (rng.standard_normal(int((1.0 + 0.25 * i) * SR)) * 0.1).astype(np.float32), SR)
        cuts.append(Recording.from_file(path, recording_id=f"u{i:02d}").to_cut())
    # one cut is a window inside its recording: only that span must be stored
    cuts[3] = cuts[3].truncate(offset=0.5, duration=1.0, preserve_id=True)
    path = str(d / "cuts.jsonl.gz")
    CutSet(cuts).to_file(path)
    return d, path


def test_export_shar_roundtrip_flac_shuffled(tmp_path, cuts_manifest):
    _, src = cuts_manifest
    out = tmp_path / "shar"
    written = export_shar(src, out, shard_size=4, seed=1)
    assert [os.path.basename(p) for p in written["cuts"]] == [f"cuts.00000{i}.jsonl.gz" for i in range(3)]
    with tarfile.open(written["recording"][0]) as tar:
        audio = [m for m in tar.getmembers() if not m.name.endswith(".json")]
        assert audio and all(m.name.endswith(".flac") for m in audio)
        assert tar.extractfile(audio[0]).read(4) == b"fLaC"
    assert not (out / ".shuffle-tmp").exists()

    back = open_cutset(str(out))
    assert back.is_lazy
    back_cuts = list(back)
    original = {c.id: c for c in CutSet.from_file(src)}
    assert sorted(c.id for c in back_cuts) == sorted(original)
    assert [c.id for c in back_cuts] != sorted(original)  # globally shuffled
    for c in back_cuts:
        ref = original[c.id].load_audio()
        got = c.load_audio()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4)  # FLAC is lossless (16-bit source)
    assert len(back) == 10


def test_export_refuses_to_mix_with_existing_shards(tmp_path, cuts_manifest):
    _, src = cuts_manifest
    out = tmp_path / "shar"
    export_shar(src, out, shard_size=5, seed=0, shuffle=False)
    with pytest.raises(ManifestError, match="already holds Shar files"):
        export_shar(src, out, shard_size=5)
    with pytest.raises(ManifestError, match="shard size"):
        export_shar(src, tmp_path / "x", shard_size=0)


class _Ids(torch.utils.data.Dataset):
    """Minimal lhotse-style dataset: a batch of cuts -> their ids (the sampler is what is tested)."""

    def __getitem__(self, cuts):
        return [c.id for c in cuts]


def test_iterable_mode_over_shar_is_infinite_and_rank_worker_specific(tmp_path, cuts_manifest):
    _, src = cuts_manifest
    out = tmp_path / "shar"
    export_shar(src, out, shard_size=2, seed=0)  # 5 shards
    cfg = {"batch_size": 2, "shuffle": True, "shuffle_buffer_size": 1}

    samplers = [build_sampler(open_source(str(out)), cfg, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in samplers:
        assert s.iterable_dataset and s.rank == 0 and s.world_size == 1 and s.worker_init_fn is not None
    # infinite: more batches than one pass holds; every cut keeps coming back
    per_rank = [[c.id for b in islice(s, 15) for c in b] for s in samplers]
    assert all(len(ids) == 30 and len(set(ids)) == 10 for ids in per_rank)
    # the two ranks read the shards in different orders
    assert per_rank[0][:10] != per_rank[1][:10]

    # the same through a DataLoader with two workers: each worker runs its own sampler copy, in its own order
    sampler = build_sampler(open_source(str(out)), cfg, seed=5, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(
        IterableDatasetWrapper(dataset=_Ids(), sampler=sampler),
        batch_size=None,
        num_workers=2,
        worker_init_fn=sampler.worker_init_fn,
    )
    batches = list(islice(iter(loader), 10))  # workers alternate: 0, 1, 0, 1, ...
    worker0 = [i for b in batches[0::2] for i in b]
    worker1 = [i for b in batches[1::2] for i in b]
    assert worker0 != worker1 and len(set(worker0)) > 2 and len(set(worker1)) > 2

    # force_finite: one pass, then the iteration ends
    finite = build_sampler(open_source(str(out)), dict(cfg, force_finite=True), seed=5)
    assert sorted(c.id for b in finite for c in b) == sorted(c.id for c in open_cutset(src))
    # validation is always map-style and finite, even over Shar
    val = build_sampler(open_source(str(out)), {"batch_size": 3}, seed=5, rank=1, world_size=2, training=False)
    assert not val.iterable_dataset and val.rank == 1


def test_bucketing_over_shar_estimates_bins_from_cuts_files_only(tmp_path, cuts_manifest):
    _, src = cuts_manifest
    out = tmp_path / "shar"
    written = export_shar(src, out, shard_size=5, seed=0)
    # Break the audio: if bin estimation read the tars, building the sampler would fail.
    for tar_path in written["recording"]:
        with open(tar_path, "wb") as f:
            f.write(b"not a tar")
    cfg = {"use_bucketing": True, "num_buckets": 3, "batch_duration": 5.0, "num_cuts_for_bins_estimate": 10}
    sampler = build_sampler(open_source(str(out)), cfg, seed=0)
    assert sampler.iterable_dataset and len(sampler.duration_bins) == 2
    with pytest.raises(tarfile.ReadError):
        next(iter(sampler))  # the training stream itself does read the (broken) audio tars


def _pass_ids(loader):
    """The cut ids of one full pass of a build_dataloader loader, in order (duplicates kept)."""
    ids = []
    for batch in loader:
        assert isinstance(batch, AudioNoiseBatch)
        ids += batch.sample_id
    return ids


@pytest.mark.parametrize("num_workers", [0, 2])
def test_finite_iterable_pass_covers_every_cut_once_across_ranks_and_workers(tmp_path, cuts_manifest, num_workers):
    _, src = cuts_manifest
    out = tmp_path / "shar"
    export_shar(src, out, shard_size=2, seed=0)  # 5 shards: with 2 ranks x 2 workers the shares are uneven
    expected = sorted(c.id for c in CutSet.from_file(src))
    cfg = {"manifest_filepath": str(out), "sample_rate": SR, "batch_size": 2, "shuffle": True, "force_finite": True,
           "num_workers": num_workers}

    loader = build_dataloader(cfg, sample_rate=SR, seed=3)
    assert loader.cut_sampler.iterable_dataset
    assert sorted(_pass_ids(loader)) == expected  # sorted lists: a duplicate would make it longer

    shares = []
    for epoch in range(3):
        per_rank = []
        for rank in range(2):
            ranked = build_dataloader(cfg, sample_rate=SR, seed=3, rank=rank, world_size=2)
            ranked.cut_sampler.set_epoch(epoch)
            per_rank.append(_pass_ids(ranked))
        assert sorted(per_rank[0] + per_rank[1]) == expected
        assert per_rank[0] and per_rank[1]
        shares.append(frozenset(per_rank[0]))
    # which shards a rank reads changes with the epoch (the common order is seeded with it)
    assert len(set(shares)) > 1


def test_finite_iterable_over_a_cutset_without_parts_keeps_a_stride_per_rank(cuts_manifest):
    _, src = cuts_manifest
    cuts = CutSet.from_file(src)  # not a ManifestSource: there are no parts to hand out
    cfg = {"batch_size": 3, "force_iterable_dataset": True, "force_finite": True}
    per_rank = [[c.id for b in build_sampler(cuts, cfg, seed=0, rank=r, world_size=2) for c in b] for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(c.id for c in cuts)
    assert len(per_rank[0]) == len(per_rank[1]) == 5


NEST_AUG = dict(
    _target_="nemo.collections.asr.modules.ssl_modules.MultiSpeakerNoiseAugmentation",
    prob=0.5, noise_ratio=0.5, min_r_speech=-5.0, max_r_speech=5.0, min_r_noise=-5.0, max_r_noise=20.0,
    min_mix_rate=0.5, max_mix_rate=0.5, min_num_segments=1, max_num_segments=1, min_num_speakers=1,
    max_num_speakers=1,
)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_build_dataloader_over_shar_streams_nemo_batches_per_worker(tmp_path, cuts_manifest, num_workers):
    d, src = cuts_manifest
    out = tmp_path / "shar"
    export_shar(src, out, shard_size=2, seed=0)  # 5 shards, 10 cuts
    noise_path = str(tmp_path / "noise.wav")
    sf.write(noise_path, (0.05 * np.random.default_rng(1).standard_normal(3 * SR)).astype(np.float32), SR)
    noise_manifest = tmp_path / "noise.json"
    noise_manifest.write_text(f'{{"audio_filepath": "{noise_path}", "duration": 3.0}}\n')
    cfg = {"manifest_filepath": str(out), "noise_manifest": str(noise_manifest), "sample_rate": SR,
           "batch_size": 2, "shuffle": True, "num_workers": num_workers, "batch_augmentor": NEST_AUG,
           # A small buffer: the default (10000) over an infinite 10-cut stream would read 1000 passes first.
           "shuffle_buffer_size": 4}
    loader = build_dataloader(cfg, sample_rate=SR, seed=3)
    assert loader.cut_sampler.iterable_dataset

    original = {c.id: c for c in CutSet.from_file(src)}
    batches = list(islice(iter(loader), 12))  # 24 cuts: more than one pass over the 10, so the stream is infinite
    assert len(batches) == 12
    augmented = 0
    for b in batches:
        assert isinstance(b, AudioNoiseBatch)
        assert len(b.sample_id) == 2 and b.audio.shape[0] == 2
        for name in ("audio", "noise", "noisy_audio"):
            t = getattr(b, name)
            assert t.dtype == torch.float32 and t.shape == b.audio.shape
        for name in ("audio_len", "noise_len", "noisy_audio_len"):
            assert getattr(b, name).dtype == torch.int64 and torch.equal(getattr(b, name), b.audio_len)
        assert torch.equal(b.noisy_audio, b.audio + b.noise)
        for i, cut_id in enumerate(b.sample_id):
            ref = original[cut_id].load_audio()[0]
            assert int(b.audio_len[i]) == ref.size
            np.testing.assert_allclose(b.audio[i, : ref.size].numpy(), ref, atol=1e-4)  # the cut's own audio
            assert torch.count_nonzero(b.audio[i, ref.size :]) == 0
        augmented += sum(info is not None for info in b.aug_info)
    assert 0 < augmented < 24  # prob 0.5: some utterances mixed, some clean

    ids = [b.sample_id for b in batches]
    assert {i for pair in ids for i in pair} == set(original)
    if num_workers == 2:
        # The DataLoader takes batches from the workers in turn; each worker runs its own sampler over the shards
        # in its own order.
        worker0 = [i for pair in ids[0::2] for i in pair]
        worker1 = [i for pair in ids[1::2] for i in pair]
        assert worker0 != worker1
        assert len(set(worker0)) > 4 and len(set(worker1)) > 4


def test_iterable_mode_buffers_default_small_because_shar_cuts_carry_audio(tmp_path, cuts_manifest):
    from nest_ssl.data.config import ITERABLE_BUFFERS as ITERABLE_DEFAULTS, MAP_STYLE_BUFFERS as SAMPLER_DEFAULTS

    _, src = cuts_manifest
    out = tmp_path / "shar"
    export_shar(src, out, shard_size=5, seed=0)
    cfg = {"use_bucketing": True, "num_buckets": 2, "batch_duration": 5.0, "bucket_duration_bins": [2.0]}
    shar = build_sampler(open_source(str(out)), cfg, seed=0)
    assert shar.iterable_dataset and shar.buffer_size == ITERABLE_DEFAULTS["bucket_buffer_size"]
    assert shar.source.shuffle_buffer_size == ITERABLE_DEFAULTS["shuffle_buffer_size"]
    plain = build_sampler(open_source(src), cfg, seed=0)
    assert not plain.iterable_dataset and plain.buffer_size == SAMPLER_DEFAULTS["bucket_buffer_size"]
    # a value the user gives wins in both modes
    given = build_sampler(open_source(str(out)), dict(cfg, bucket_buffer_size=50, shuffle_buffer_size=7), seed=0)
    assert given.buffer_size == 50 and given.source.shuffle_buffer_size == 7
