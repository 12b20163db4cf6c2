"""Checkpoint files: atomic writes, corruption and truncation detection, fallback to the previous one."""

import os
import time

import pytest
import torch

from nest_ssl import checkpoint as ck


def make_ckpt(step, size=2000):
    g = torch.Generator().manual_seed(step)
    return {
        "epoch": 0,
        "global_step": step,
        "state_dict": {"encoder.w": torch.randn(size, generator=g), "decoder.b": torch.zeros(3)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4)}}, "param_groups": [{"lr": 1e-3}]}],
        "lr_schedulers": [{"last_epoch": step}],
        "nest_ssl": {"loop": {"global_step": step}, "rng": {"python": (3, [1, 2, 3], None)}},
    }


def flip_byte(path, where=0.5):
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_roundtrip_and_digest(tmp_path):
    p = ck.save_checkpoint(make_ckpt(3), tmp_path / "a.ckpt")
    got = ck.load_checkpoint(p)
    assert got["global_step"] == 3 and torch.equal(got["state_dict"]["encoder.w"], make_ckpt(3)["state_dict"]["encoder.w"])
    assert got["nest_ssl"]["digest"] == ck.digest(got)
    assert ck.is_resumable(got)
    assert not list(tmp_path.glob(f"{ck.TMP_PREFIX}*")), "no temporary file may remain"


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_flipped_byte_is_detected(tmp_path, where):
    p = ck.save_checkpoint(make_ckpt(3, size=20000), tmp_path / "a.ckpt")
    flip_byte(p, where)
    with pytest.raises(ck.CorruptCheckpointError):
        ck.load_checkpoint(p)


def test_truncated_file_is_detected(tmp_path):
    p = ck.save_checkpoint(make_ckpt(3), tmp_path / "a.ckpt")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ck.CorruptCheckpointError, match="cannot be read"):
        ck.load_checkpoint(p)


def test_failed_write_leaves_the_old_file(tmp_path):
    p = ck.save_checkpoint(make_ckpt(1), tmp_path / "a.ckpt")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.atomic_write(p, broken)
    assert ck.load_checkpoint(p)["global_step"] == 1
    assert not list(tmp_path.glob(f"{ck.TMP_PREFIX}*"))


def _age(path, seconds_ago):
    """Sets a file's modification time (the resume search orders by it) without sleeping."""
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_resume_search_skips_corrupt_newest(tmp_path):
    prev = ck.save_checkpoint(make_ckpt(4), tmp_path / "run--step=4-last.ckpt.prev")
    newest = ck.save_checkpoint(make_ckpt(6), tmp_path / "run--step=6-last.ckpt")
    weights_only = make_ckpt(6)
    del weights_only["optimizer_states"]
    topk = ck.save_checkpoint(weights_only, tmp_path / "run--step=6.ckpt")
    _age(prev, 30), _age(topk, 20), _age(newest, 10)
    found = ck.find_resume_checkpoint(tmp_path)
    assert found.path == newest and found.ckpt["global_step"] == 6 and found.skipped == []

    flip_byte(newest)
    found = ck.find_resume_checkpoint(tmp_path)
    assert found.path.name == "run--step=4-last.ckpt.prev" and found.ckpt["global_step"] == 4
    assert [p.name for p, _ in found.skipped] == ["run--step=6-last.ckpt", "run--step=6.ckpt"]
    assert "digest" in found.skipped[0][1] and "weights only" in found.skipped[1][1]

    prev.unlink()
    found = ck.find_resume_checkpoint(tmp_path)
    assert found.path is None and len(found.skipped) == 2  # corrupt last + weights-only: nothing to resume
    assert ck.find_resume_checkpoint(tmp_path / "missing") is None


def test_resume_search_takes_the_newest_intact_of_any_kind(tmp_path):
    """A truncated newest checkpoint (here one written at a time limit, not a last one) falls back to the newest
    intact one, whatever its kind: a top-k checkpoint newer than the last one is taken before the last."""
    last = ck.save_checkpoint(make_ckpt(2), tmp_path / "run--step=2-last.ckpt")
    topk = ck.save_checkpoint(make_ckpt(3), tmp_path / "run--val_loss=1.0000-step=3.ckpt")
    stop = ck.save_checkpoint(make_ckpt(5), tmp_path / "run--val_loss=0.9000-step=5.ckpt")
    _age(last, 30), _age(topk, 20), _age(stop, 10)
    data = stop.read_bytes()
    stop.write_bytes(data[: len(data) // 3])  # truncated, as by a full disk or a killed copy
    found = ck.find_resume_checkpoint(tmp_path)
    assert found.path == topk and found.ckpt["global_step"] == 3
    assert [p for p, _ in found.skipped] == [stop] and "truncated" in found.skipped[0][1]
    # NeMo's `-unfinished` marker keeps a checkpoint being written out of the search
    (tmp_path / f"{topk.name}-unfinished").write_bytes(b"")
    assert ck.find_resume_checkpoint(tmp_path).path == last


def test_cleanup_temporaries(tmp_path):
    (tmp_path / f"{ck.TMP_PREFIX}x.ckpt.123").write_bytes(b"junk")
    ck.cleanup_temporaries(tmp_path)
    assert not os.listdir(tmp_path)
