"""CheckpointManager (nest_ssl.checkpoint.manager): which files a run keeps, with real files in tmp_path."""

import logging

import pytest
import torch

from nest_ssl.checkpoint import PREV_SUFFIX, CheckpointManager, load_checkpoint
from nest_ssl.train.trainer_config import CheckpointSettings


def make_ckpt(step):
    return {
        "epoch": 0,
        "global_step": step,
        "state_dict": {"encoder.w": torch.full((3,), float(step))},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}],
        "lr_schedulers": [],
        "nest_ssl": {"loop": {"global_step": step}, "sampler": None, "rng": {"torch": torch.zeros(2)}},
    }


class NemoWriter:
    """The .nemo callback the trainer passes: records what it was asked to write and writes it."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, state_dict):
        self.calls.append((path, float(state_dict["encoder.w"][0])))
        torch.save(dict(state_dict), path)


def manager(tmp_path, enabled=True, **overrides):
    policy = CheckpointSettings(filename="run--{val_loss:.3f}-{step}", **overrides)
    return CheckpointManager(policy, tmp_path, "run", enabled=enabled)


def save(m, step, val_loss=None, nemo=None):
    metrics = {"epoch": 0, "step": step}
    if val_loss is not None:
        metrics["val_loss"] = val_loss
    m.save(make_ckpt(step), metrics, nemo or NemoWriter())


def topk_files(tmp_path):
    return sorted(p.name for p in tmp_path.glob("*.ckpt") if not p.name.endswith("-last.ckpt"))


def test_top_k_by_min_keeps_the_best_and_removes_the_displaced_file(tmp_path):
    m = manager(tmp_path, monitor="val_loss", mode="min", save_top_k=2)
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0)):
        save(m, step, loss)
    # step 3 (2.0) displaced step 1 (3.0): its file is gone
    assert topk_files(tmp_path) == ["run--val_loss=1.000-step=2.ckpt", "run--val_loss=2.000-step=3.ckpt"]
    save(m, 4, 5.0)  # worse than both: not kept, nothing removed
    assert topk_files(tmp_path) == ["run--val_loss=1.000-step=2.ckpt", "run--val_loss=2.000-step=3.ckpt"]
    save(m, 5, 0.5)
    assert topk_files(tmp_path) == ["run--val_loss=0.500-step=5.ckpt", "run--val_loss=1.000-step=2.ckpt"]
    assert m.best_model_path == str(tmp_path / "run--val_loss=0.500-step=5.ckpt") and m.best_model_score == 0.5
    assert set(m.best_k_models.values()) == {0.5, 1.0}
    assert load_checkpoint(m.best_model_path)["global_step"] == 5


def test_top_k_by_max(tmp_path):
    m = manager(tmp_path, monitor="val_loss", mode="max", save_top_k=1)
    for step, acc in ((1, 0.2), (2, 0.7), (3, 0.5)):
        save(m, step, acc)
    assert topk_files(tmp_path) == ["run--val_loss=0.700-step=2.ckpt"]
    assert m.best_model_score == 0.7 and m.state_dict()["kth_value"] == 0.7


def test_save_top_k_all_and_none(tmp_path):
    every = manager(tmp_path / "all", monitor="val_loss", save_top_k=-1)
    for step, loss in ((1, 3.0), (2, 4.0), (3, 1.0)):
        save(every, step, loss)
    assert len(topk_files(tmp_path / "all")) == 3
    assert every.best_model_path.endswith("val_loss=1.000-step=3.ckpt")

    none = manager(tmp_path / "none", monitor="val_loss", save_top_k=0)
    for step, loss in ((1, 3.0), (2, 1.0)):
        save(none, step, loss)
    assert topk_files(tmp_path / "none") == [] and none.best_model_path == ""
    assert [p.name for p in (tmp_path / "none").glob("*-last.ckpt")] == ["run--val_loss=1.000-step=2-last.ckpt"]


def test_last_checkpoint_replaces_the_previous_one_kept_as_prev(tmp_path):
    m = manager(tmp_path, monitor="val_loss", save_top_k=1)
    save(m, 1, 2.0)
    save(m, 2, 3.0)
    save(m, 3, 4.0)
    lasts = sorted(p.name for p in tmp_path.glob("*-last.ckpt"))
    prevs = sorted(p.name for p in tmp_path.glob(f"*-last.ckpt{PREV_SUFFIX}"))
    assert lasts == ["run--val_loss=4.000-step=3-last.ckpt"] and m.last_model_path == str(tmp_path / lasts[0])
    assert prevs == [f"run--val_loss=3.000-step=2-last.ckpt{PREV_SUFFIX}"]  # only the one before
    assert load_checkpoint(tmp_path / lasts[0])["global_step"] == 3
    assert load_checkpoint(tmp_path / prevs[0])["global_step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_no_monitor_keeps_the_newest(tmp_path):
    m = manager(tmp_path, monitor=None, save_top_k=1)
    for step in (1, 2, 3):
        save(m, step)
    # Without a metric the name has val_loss=0 (Lightning formats a missing metric as 0)
    assert topk_files(tmp_path) == ["run--val_loss=0.000-step=3.ckpt"]
    assert m.best_model_path == str(tmp_path / "run--val_loss=0.000-step=3.ckpt")


def test_monitor_without_a_value_writes_only_the_last_and_warns_once(tmp_path, caplog):
    m = manager(tmp_path, monitor="val_loss", save_top_k=3)
    with caplog.at_level(logging.WARNING, logger="nest_ssl.train"):
        save(m, 1)
        save(m, 2)
        save(m, 3, float("nan"))  # a non-finite value ranks nothing either
    assert topk_files(tmp_path) == [] and m.best_k_models == {}
    assert len([p for p in tmp_path.glob("*-last.ckpt")]) == 1
    assert sum("has no value yet" in r.getMessage() for r in caplog.records) == 1


def test_state_dict_round_trip_continues_the_ranking(tmp_path):
    m = manager(tmp_path, monitor="val_loss", save_top_k=2)
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0)):
        save(m, step, loss)
    state = m.state_dict()
    assert state["best_model_score"] == 1.0 and state["kth_value"] == 2.0
    assert state["kth_best_model_path"].endswith("val_loss=2.000-step=3.ckpt")

    resumed = manager(tmp_path, monitor="val_loss", save_top_k=2)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state and resumed.key == m.key
    save(resumed, 4, 2.5)  # worse than both kept: the resumed ranking knows it
    assert topk_files(tmp_path) == ["run--val_loss=1.000-step=2.ckpt", "run--val_loss=2.000-step=3.ckpt"]
    save(resumed, 5, 1.5)  # displaces step 3, whose file the first manager wrote
    assert topk_files(tmp_path) == ["run--val_loss=1.000-step=2.ckpt", "run--val_loss=1.500-step=5.ckpt"]

    # The state written into a checkpoint includes that save itself (as Lightning's): a run resumed from the last
    # checkpoint knows every top-k file, this save's too, and displaces them in turn.
    written = load_checkpoint(next(tmp_path.glob("*-last.ckpt")))["callbacks"][m.key]
    assert written == resumed.state_dict() and str(tmp_path / "run--val_loss=1.500-step=5.ckpt") in written["best_k_models"]
    from_file = manager(tmp_path, monitor="val_loss", save_top_k=2)
    from_file.load_state_dict(written)
    save(from_file, 6, 0.1)
    assert topk_files(tmp_path) == ["run--val_loss=0.100-step=6.ckpt", "run--val_loss=1.000-step=2.ckpt"]

    # A file listed in the state but gone from disk is forgotten rather than counted as kept
    (tmp_path / "run--val_loss=0.100-step=6.ckpt").unlink()
    again = manager(tmp_path, monitor="val_loss", save_top_k=2)
    again.load_state_dict(from_file.state_dict())
    assert list(again.best_k_models) == [str(tmp_path / "run--val_loss=1.000-step=2.ckpt")]


def test_weights_only_top_k_and_full_last(tmp_path):
    m = manager(tmp_path, monitor="val_loss", save_top_k=1, save_weights_only=True)
    save(m, 1, 1.0)
    topk = load_checkpoint(tmp_path / "run--val_loss=1.000-step=1.ckpt")
    assert "optimizer_states" not in topk and "loop" not in topk["nest_ssl"]
    last = load_checkpoint(next(tmp_path.glob("*-last.ckpt")))
    assert last["optimizer_states"] and "loop" in last["nest_ssl"]


def test_always_save_nemo_writes_the_best_model(tmp_path):
    nemo = NemoWriter()
    m = manager(tmp_path, monitor="val_loss", save_top_k=1, always_save_nemo=True, save_best_model=True)
    save(m, 1, 2.0, nemo)
    save(m, 2, 1.0, nemo)  # new best: its weights
    save(m, 3, 5.0, nemo)  # not better: the .nemo on disk already holds the best
    assert nemo.calls == [(tmp_path / "run.nemo", 1.0), (tmp_path / "run.nemo", 2.0)]
    assert (tmp_path / "run.nemo").is_file()


def test_disabled_manager_writes_nothing(tmp_path):
    m = manager(tmp_path / "ck", enabled=False, monitor="val_loss")
    save(m, 1, 1.0)
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("every_n_train_steps,step,due", [(None, 3, False), (3, 3, True), (3, 4, False), (3, 0, False)])
def test_due_after_step(tmp_path, every_n_train_steps, step, due):
    m = manager(tmp_path, every_n_train_steps=every_n_train_steps)
    assert m.due_after_step(step) is due


def test_save_last_writes_the_last_checkpoint_only(tmp_path):
    """What a preempted run writes first: the last checkpoint, no top-k file, no .nemo, the ranking untouched; the
    full save that may follow writes the top-k file and the last again, the previous one kept as .prev."""
    m = manager(tmp_path, monitor="val_loss", mode="min", save_top_k=1, always_save_nemo=True)
    nemo = NemoWriter()
    save(m, 2, 1.0, nemo)
    assert nemo.calls and topk_files(tmp_path) == ["run--val_loss=1.000-step=2.ckpt"]
    nemo.calls.clear()
    ck = make_ckpt(3)
    path = m.save_last(ck, {"epoch": 0, "step": 3, "val_loss": 1.0})  # named by the previous validation
    assert path == tmp_path / "run--val_loss=1.000-step=3-last.ckpt" and path.exists()
    assert load_checkpoint(path)["global_step"] == 3 and m.last_model_path == str(path)
    assert topk_files(tmp_path) == ["run--val_loss=1.000-step=2.ckpt"] and not nemo.calls
    assert m.best_k_models == {str(tmp_path / "run--val_loss=1.000-step=2.ckpt"): 1.0}
    assert ck["callbacks"][m.key]["last_model_path"] == str(path)  # the file knows it is the last one
    save(m, 3, 0.5, nemo)  # the validation fitted before the deadline: the full save of the same step
    assert topk_files(tmp_path) == ["run--val_loss=0.500-step=3.ckpt"] and len(nemo.calls) == 1
    assert sorted(p.name for p in tmp_path.glob("*last.ckpt*")) == [
        "run--val_loss=0.500-step=3-last.ckpt", "run--val_loss=1.000-step=3-last.ckpt" + PREV_SUFFIX]
    assert manager(tmp_path, enabled=False).save_last(make_ckpt(4), {"step": 4}) is None
