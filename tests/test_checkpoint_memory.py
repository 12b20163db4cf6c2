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


# ----------------------------------------------------------------------------------------------------------------
# Saving with two gloo ranks: only the writer builds the dict, every rank takes part in the gathers


def _save_rank(rank: int, port: int, workdir: str, out: str) -> None:
    import json
    import os

    import torch.distributed as dist

    from nest_ssl.config import apply_overrides, load_config
    from nest_ssl.train.distributed import DistInfo
    from nest_ssl.train.run import build_trainer
    from nest_ssl.train.trainer_config import parse_run_config

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = apply_overrides(load_config(None, "nest_tiny"), [
            f"model.train_ds.manifest_filepath={workdir}/data/dummy_ssl/train_manifest.json",
            f"model.validation_ds.manifest_filepath={workdir}/data/dummy_ssl/val_manifest.json",
            "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp"])
        settings = parse_run_config(cfg)
        info = DistInfo(rank=rank, local_rank=rank, world_size=2, backend="gloo")
        ckpt_dir = Path(workdir) / "checkpoints"
        tr = build_trainer(cfg, settings, info, log_dir=Path(workdir) / f"log{rank}", ckpt_dir=ckpt_dir)
        # Adam's moments exist after a step (the same gradient on both ranks, as DDP would make it)
        sum(p.float().pow(2).sum() for p in tr.model.parameters() if p.requires_grad).backward()
        tr.optimizer.step()
        torch.manual_seed(100 + rank)  # each rank's RNG state differs: the gather must carry both
        built = tr.build_checkpoint(writer=rank == 0)
        result = {"built": built is not None}
        if built is not None:
            own = tr.model.state_dict()
            moments = [s["exp_avg"] for s in built["optimizer_states"][0]["state"].values()]
            result.update(
                same_weights=all(torch.equal(built["state_dict"][k], v.cpu()) for k, v in own.items()),
                n_moments=len(moments), moments_nonzero=bool(sum(float(m.abs().sum()) for m in moments) > 0),
                ranks_rng=len(built["nest_ssl"]["rng_per_rank"]),
                rng_differs=not torch.equal(built["nest_ssl"]["rng_per_rank"][0]["torch"],
                                            built["nest_ssl"]["rng_per_rank"][1]["torch"]))
        tr.state.global_step = 1
        tr.save_checkpoint()  # the trainer's own path: rank 0 writes, rank 1 only gathers
        dist.barrier()
        result["files"] = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.exists() else []
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_only_the_writing_rank_builds_the_checkpoint(tmp_path):
    import json
    import socket
    import sys

    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).parent))
    from dummy_data import make_dummy_data

    make_dummy_data(tmp_path, num_train=4, num_val=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_save_rank, args=(port, str(tmp_path), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r1 == {"built": False, "files": r0["files"]}, r1
    assert r0["built"] and r0["same_weights"] and r0["n_moments"] > 0 and r0["moments_nonzero"], r0
    assert r0["ranks_rng"] == 2 and r0["rng_differs"], r0
    (name,) = r0["files"]
    saved = ck.load_checkpoint(tmp_path / "checkpoints" / name)
    assert ck.is_resumable(saved) and saved["global_step"] == 1 and len(saved["nest_ssl"]["rng_per_rank"]) == 2


def test_a_nemo_archive_is_written_through_a_temporary_file_that_is_removed(tmp_path):
    """write_nemo streams the weights through a file beside the archive instead of an in-memory copy of them all."""
    from nest_ssl.checkpoint.nemo import read_nemo, write_nemo
    from nest_ssl.config import load_config

    cfg = load_config(None, "nest_tiny").model
    weights = make_ckpt(6)["state_dict"]
    out = write_nemo(tmp_path / "m.nemo", cfg, weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nemo"]
    _, got = read_nemo(out)
    assert set(got) == set(weights) and all(torch.equal(got[k], v) for k, v in weights.items())
