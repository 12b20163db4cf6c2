"""The Lhotse internals nest_ssl relies on (nest_ssl/data/lhotse_adapter.py), checked against the installed Lhotse
(written for 1.33.0): a Lhotse upgrade that changes one of them fails here, by name, instead of as a silently wrong
resume or a mixed-up stream. Real Lhotse samplers over real (dummy-recording) cuts; nothing is mocked."""

import copy

import pytest
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler, IterableDatasetWrapper, SimpleCutSampler
from lhotse.testing.dummies import dummy_cut

from nest_ssl.data import NestDataLoader
from nest_ssl.data.lhotse_adapter import (
    NEST_SAMPLER_ATTRIBUTES,
    NEST_WRAPPER_ATTRIBUTES,
    add_nest_attributes,
    just_restored,
    map_style_sampler_of,
    mark_shard_origin,
    rewind_sampler_state,
    sampler_of,
    set_iteration_seed,
    update_dataloading_info,
)


def _cuts(n=60):
    # Durations 1.0 .. 3.9 s in a scrambled order, so that bucketing and shuffling have something to do.
    return CutSet.from_cuts(dummy_cut(i, duration=1.0 + (i * 7 % 30) / 10) for i in range(n))


SAMPLERS = {
    "DynamicBucketingSampler": lambda cuts, seed: DynamicBucketingSampler(
        cuts, max_duration=8.0, num_buckets=3, shuffle=True, seed=seed, buffer_size=100),
    "DynamicCutSampler": lambda cuts, seed: DynamicCutSampler(cuts, max_duration=8.0, shuffle=True, seed=seed),
    "SimpleCutSampler": lambda cuts, seed: SimpleCutSampler(cuts, max_duration=8.0, shuffle=True, seed=seed),
}


def _ids(batch):
    return [c.id for c in batch]


def _epoch(sampler, epoch=1):
    sampler.set_epoch(epoch)
    return [_ids(b) for b in sampler]


# The samplers nest_ssl.data.sampler builds on. (SimpleCutSampler restores differently: its fast-forward does not
# replay `kept + discarded` batches, so rewind_sampler_state does not apply to it; nest_ssl never builds one.)
USED = ("DynamicBucketingSampler", "DynamicCutSampler")


@pytest.fixture(params=sorted(SAMPLERS))
def make(request):
    return SAMPLERS[request.param]


@pytest.fixture(params=USED)
def make_used(request):
    return SAMPLERS[request.param]


def test_state_dict_has_the_diagnostics_the_rewind_edits(make):
    s = make(_cuts(), 3)
    s.set_epoch(1)
    it = iter(s)
    for _ in range(4):
        next(it)
    diag = s.state_dict()["diagnostics"]
    assert diag["current_epoch"] == 1
    stats = diag["stats_per_epoch"][1]
    assert stats["kept_batches"] + stats["discarded_batches"] == 4


def test_rewound_state_resumes_after_the_batches_trained_on(make_used):
    """The trainer's case: the loader drew 3 batches ahead of the 5 trained; the restored sampler must give the
    6th batch of the uninterrupted epoch (and, unrewound, it would give the 9th: the rewind is what matters)."""
    full = _epoch(make_used(_cuts(), 3))
    assert len(full) >= 10
    s = make_used(_cuts(), 3)
    s.set_epoch(1)
    it = iter(s)
    for _ in range(8):
        next(it)
    state = s.state_dict()

    fresh = make_used(_cuts(), 3)
    assert not just_restored(fresh)
    fresh.load_state_dict(rewind_sampler_state(state, consumed=5))
    assert just_restored(fresh)  # so that the trainer's set_epoch + iter() keep the restored position
    fresh.set_epoch(1)
    rest = [_ids(b) for b in fresh]
    assert rest == full[5:]
    assert not just_restored(fresh)

    unrewound = make_used(_cuts(), 3)
    unrewound.load_state_dict(copy.deepcopy(state))
    assert [_ids(b) for b in unrewound] == full[8:]


def test_rewind_sampler_state_counts_consumed_batches():
    state = {"epoch": 2, "diagnostics": {"current_epoch": 2, "stats_per_epoch": {
        2: {"epoch": 2, "kept_cuts": 40, "discarded_cuts": 0, "kept_batches": 10, "discarded_batches": 1}}}}
    out = rewind_sampler_state(state, consumed=7)
    assert out["diagnostics"]["stats_per_epoch"][2]["kept_batches"] == 6  # replay 6 kept + 1 discarded = 7
    assert state["diagnostics"]["stats_per_epoch"][2]["kept_batches"] == 10  # input untouched


def test_iter_reads_the_seed_then_and_restarts_the_epoch(make):
    """Windowed streams (nest_ssl.data.sampler) reseed the sampler and call iter() again after each window."""
    s = make(_cuts(), 3)
    s.set_epoch(1)
    first = [_ids(b) for b in s]
    assert [_ids(b) for b in s] == first  # iter() again: the same epoch from its start
    set_iteration_seed(s, 4)
    assert [_ids(b) for b in s] == _epoch(make(_cuts(), 4))
    assert [_ids(b) for b in s] != first


def test_names_nest_ssl_adds_are_free_in_lhotse(make):
    s = make(_cuts(), 3)
    taken = [n for n in NEST_SAMPLER_ATTRIBUTES if hasattr(s, n)]
    assert not taken, f"lhotse's {type(s).__name__} now has {taken}: rename them in nest_ssl/data/lhotse_adapter.py"
    add_nest_attributes(s, source="src", iterable=True, worker_init_fn=print)
    assert (s.source, s.iterable_dataset, s.worker_init_fn) == ("src", True, print)
    w = IterableDatasetWrapper(dataset=lambda cuts: cuts, sampler=s)
    taken = [n for n in NEST_WRAPPER_ATTRIBUTES if hasattr(w, n)]
    assert not taken, f"lhotse's IterableDatasetWrapper now has {taken}: rename them in nest_ssl.data"


def test_update_dataloading_info_sets_rank_and_world_size():
    s = DynamicCutSampler(_cuts(), max_duration=8.0, rank=0, world_size=1)
    w = IterableDatasetWrapper(dataset=lambda cuts: cuts, sampler=s)
    batch = next(iter(s))
    for c in batch:
        c.dataloading_info = {}
    update_dataloading_info(w, batch)
    assert all(c.dataloading_info["rank"] == 0 and c.dataloading_info["world_size"] == 1 for c in batch)


def test_mark_shard_origin_matches_lhotse_shar_reader(tmp_path):
    cuts = CutSet.from_cuts(dummy_cut(i, duration=1.0) for i in range(4))
    cuts.to_shar(tmp_path, fields={}, shard_size=2)
    read = list(CutSet.from_shar(in_dir=tmp_path))
    assert read and all(hasattr(c, "shard_origin") and c.shar_epoch == 0 for c in read)
    ours = dummy_cut(0, duration=1.0)
    mark_shard_origin(ours, read[0].shard_origin)
    assert (ours.shard_origin, ours.shar_epoch) == (read[0].shard_origin, read[0].shar_epoch)


def test_sampler_of_finds_nest_and_torch_loaders():
    s = DynamicCutSampler(_cuts(), max_duration=8.0)
    loader = NestDataLoader(_cuts(), batch_size=None, sampler=s, collate_fn=lambda b: b)
    loader.cut_sampler = s
    assert sampler_of(loader) is s and map_style_sampler_of(loader) is s
    add_nest_attributes(s, source=None, iterable=True, worker_init_fn=None)
    assert sampler_of(loader) is s and map_style_sampler_of(loader) is None  # its state lives in the workers
    assert sampler_of(NestDataLoader(list(range(3)))) is None  # torch's own samplers have no state_dict
