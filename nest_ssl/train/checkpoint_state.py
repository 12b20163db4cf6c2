"""What a training checkpoint holds and how a Trainer continues from one.

The dict is Lightning's (`epoch`, `global_step`, `state_dict` with NeMo's key names, `loops`, `callbacks`,
`optimizer_states`, `lr_schedulers`, `hyper_parameters`, `MixedPrecision` for fp16), plus `nest_ssl`: the loop
counters (LoopState), the data position (map-style: the Lhotse sampler state rewound to the batches trained on;
iterable: every rank's StreamPositions), every rank's RNG states, the world size, the resolved config, the last
metrics and the learning-health state. `build_checkpoint` is a collective (it gathers every rank's RNG and stream
state): all ranks call it, and only the rank that writes the file builds the dict. The weights and optimizer state
are the same on every rank (DDP), and on a GPU each host copy of them costs 12 bytes per parameter (weights and
Adam's two moments), so the other ranks take part in the gathers and copy nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from nest_ssl.checkpoint import LIGHTNING_VERSION
from nest_ssl.data.lhotse_adapter import rewind_sampler_state
from nest_ssl.seeding import capture_rng_state, restore_rng_state
from nest_ssl.train.distributed import all_gather_objects
from nest_ssl.train.loop_state import LoopState
from nest_ssl.train.stream_positions import resume_streams

if TYPE_CHECKING:
    from nest_ssl.train.trainer import Trainer

log = logging.getLogger("nest_ssl.train")


def num_parts(loader) -> int:
    """Files or Shar shards of the manifest source a nest_ssl.data loader reads (0: not known)."""
    source = getattr(loader, "source", None)
    return int(getattr(source, "num_parts", 0) or 0)


def build_checkpoint(tr: "Trainer", writer: bool = True) -> dict | None:
    """The checkpoint dict on the rank that writes it (`writer`); None on the others, which only take part in the
    gathers (every rank must reach them, whether it writes or not)."""
    st = tr.state
    rng_all = all_gather_objects(tr.info, capture_rng_state())
    streams = None
    if tr.streams is not None:
        streams = all_gather_objects(
            tr.info, tr.stream_positions.to_checkpoint(max(1, int(tr.train_loader.num_workers))))
    if not writer:
        return None
    consumed_state = None
    if tr.sampler is not None and not st.epoch_finished:
        consumed_state = rewind_sampler_state(tr.sampler.state_dict(), st.batch_idx)
    cfg_plain = OmegaConf.to_container(tr.cfg, resolve=True)
    ckpt = {
        "epoch": st.epoch,
        "global_step": st.global_step,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in tr.model.state_dict().items()},
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": st.epoch}},
                               "epoch_loop.batch_progress": {"current": {"completed": st.batch_idx}},
                               "epoch_loop.state_dict": {"_batches_that_stepped": st.global_step}}},
        "callbacks": {tr.ckpt.key: tr.ckpt.state_dict()},
        "optimizer_states": [to_cpu(tr.optimizer.state_dict())],
        "lr_schedulers": [tr.scheduler.state_dict()] if tr.scheduler is not None else [],
        "hparams_name": "cfg",
        "hyper_parameters": {"cfg": cfg_plain["model"]},
        "nest_ssl": {
            "loop": st.to_dict(),
            "sampler": consumed_state,
            "streams": streams,  # iterable input: per rank, every worker stream's position in this epoch
            "rng": rng_all[0],
            "rng_per_rank": rng_all,
            "world_size": tr.info.world_size,
            "config": cfg_plain,
            "last_metrics": dict(tr.last_metrics),
            "health": {"cumulative": tr.cum_counts.state_dict(), "alarm": tr.alarm.state_dict()},
        },
    }
    if tr.scaler is not None:
        ckpt["MixedPrecision"] = tr.scaler.state_dict()
    return ckpt


def restore_checkpoint(tr: "Trainer", ckpt: dict, path: Path) -> None:
    """Continues from a checkpoint: weights, optimizer, scheduler, scaler, counters, data position, RNGs."""
    tr.model.load_state_dict(ckpt["state_dict"], strict=True)
    tr.optimizer.load_state_dict(ckpt["optimizer_states"][0])
    if tr.scheduler is not None and ckpt.get("lr_schedulers"):
        tr.scheduler.load_state_dict(ckpt["lr_schedulers"][0])
    if tr.scaler is not None and "MixedPrecision" in ckpt:
        tr.scaler.load_state_dict(ckpt["MixedPrecision"])
    nest = ckpt["nest_ssl"]
    tr.state = LoopState.from_dict(nest["loop"])
    tr.state.last_saved_step = tr.state.global_step
    cb = ckpt.get("callbacks", {}).get(tr.ckpt.key)
    if cb is None and ckpt.get("callbacks"):
        cb = next(iter(ckpt["callbacks"].values()))
    if cb:
        tr.ckpt.load_state_dict(cb)
    tr.last_metrics = dict(nest.get("last_metrics") or {})
    health = nest.get("health") or {}
    if "cumulative" in health:
        tr.cum_counts.load_state_dict(health["cumulative"])
    tr.alarm.load_state_dict(health.get("alarm") or {})
    saved_ws = nest.get("world_size", 1)
    rng = nest.get("rng_per_rank") or [nest.get("rng")]
    if saved_ws == tr.info.world_size and len(rng) > tr.info.rank and rng[tr.info.rank]:
        restore_rng_state(rng[tr.info.rank])
    st = tr.state
    if st.epoch_finished:
        st.epoch += 1
        st.batch_idx = 0
        st.epoch_finished = False
    elif nest.get("sampler") is not None and tr.sampler is not None:
        if saved_ws != tr.info.world_size:
            log.warning(
                "the checkpoint was written by %d processes and this run has %d: the data position within "
                "epoch %d cannot be restored; the epoch starts over", saved_ws, tr.info.world_size, st.epoch)
            st.batch_idx = 0
        else:
            tr.restored_sampler_state = nest["sampler"]  # loaded at the start of the epoch loop
    elif tr.streams is not None:
        tr.stream_positions = resume_streams(
            tr.streams, nest.get("streams"), saved_ws, rank=tr.info.rank, world_size=tr.info.world_size,
            num_workers=max(1, int(tr.train_loader.num_workers)), epoch=st.epoch, global_step=st.global_step,
            num_parts=num_parts(tr.train_loader))
    log.info("resumed from %s: epoch %d, global step %d, %d batches into the epoch",
             path, st.epoch, st.global_step, st.batch_idx)


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj
