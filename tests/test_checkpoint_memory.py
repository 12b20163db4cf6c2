"""Host memory at save and resume: a checkpoint is mapped from its file (not read into memory each rank owns), and
the mapping behaves as the training needs (private writes, valid after the file is replaced or removed)."""

import gc
from pathlib import Path

import torch

from nest_ssl import checkpoint as ck


def make_ckpt(step: int, numel: int = 1 << 20) -> dict:
    g = torch.Generator().manual_seed(step)
    return {
        "epoch": 0,
        "global_step": step,
        "state_dict": {"encoder.w": torch.randn(numel, generator=g), "decoder.b": torch.zeros(3)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(numel, generator=g)}},
                              "param_groups": [{"lr": 1e-3}]}],
        "lr_schedulers": [{"last_epoch": step}],
        "nest_ssl": {"loop": {"global_step": step}},
    }


def mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def test_a_checkpoint_is_mapped_from_its_file_and_unmapped_when_dropped(tmp_path):
    p = ck.save_checkpoint(make_ckpt(1), tmp_path / "a.ckpt")
    assert not mapped(p)
    got = ck.load_checkpoint(p)
    assert mapped(p)
    want = make_ckpt(1)
    assert torch.equal(got["state_dict"]["encoder.w"], want["state_dict"]["encoder.w"])
    assert torch.equal(got["optimizer_states"][0]["state"][0]["exp_avg"], want["optimizer_states"][0]["state"][0]["exp_avg"])
    del got
    gc.collect()
    assert not mapped(p)
    plain = ck.load_checkpoint(p, mmap=False)
    assert not mapped(p) and torch.equal(plain["state_dict"]["encoder.w"], want["state_dict"]["encoder.w"])


def test_writes_to_a_mapped_tensor_stay_in_the_process(tmp_path):
    """On the CPU the optimizer keeps the loaded moments as its state and updates them in place: the file must not
    change (another rank maps it too, and it is the checkpoint to fall back to)."""
    p = ck.save_checkpoint(make_ckpt(2), tmp_path / "a.ckpt")
    before = p.read_bytes()
    got = ck.load_checkpoint(p)
    got["optimizer_states"][0]["state"][0]["exp_avg"].mul_(0.5).add_(1.0)
    got["state_dict"]["encoder.w"].zero_()
    assert float(got["state_dict"]["encoder.w"].abs().sum()) == 0.0
    assert p.read_bytes() == before
    assert ck.load_checkpoint(p)["global_step"] == 2  # its digest still holds


def test_a_mapped_checkpoint_outlives_its_file_being_replaced_and_removed(tmp_path):
    """The checkpoint writer replaces files atomically and removes old ones (top-k, .prev) while a resumed run may
    still hold tensors mapped from them."""
    p = ck.save_checkpoint(make_ckpt(3), tmp_path / "run-last.ckpt")
    got = ck.load_checkpoint(p)
    ck.save_checkpoint(make_ckpt(4), p)  # os.replace over the mapped file
    assert ck.load_checkpoint(p)["global_step"] == 4
    assert torch.equal(got["state_dict"]["encoder.w"], make_ckpt(3)["state_dict"]["encoder.w"])
    p.unlink()
    assert torch.equal(got["optimizer_states"][0]["state"][0]["exp_avg"],
                       make_ckpt(3)["optimizer_states"][0]["state"][0]["exp_avg"])
    assert ck.digest(got) == got["nest_ssl"]["digest"]


def test_a_legacy_format_file_is_read_without_a_mapping(tmp_path):
    """torch's pre-zip format cannot be mapped: it is read as before, digest included."""
    ckpt = make_ckpt(5, numel=1000)
    ckpt["nest_ssl"]["format_version"] = ck.format.FORMAT_VERSION
    ckpt["nest_ssl"]["digest"] = ck.digest(ckpt)
    p = tmp_path / "legacy.ckpt"
    torch.save(ckpt, p, _use_new_zipfile_serialization=False)
    assert p.read_bytes()[:1] == b"\x80"  # a pickle, not a zip
    got = ck.load_checkpoint(p)
    assert got["global_step"] == 5 and torch.equal(got["state_dict"]["encoder.w"], ckpt["state_dict"]["encoder.w"])
    assert not mapped(p)
