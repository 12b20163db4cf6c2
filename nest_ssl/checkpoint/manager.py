"""Which checkpoint files a run keeps: exp_manager's checkpoint callback (Lightning's ModelCheckpoint).

Top-k checkpoints ranked by a monitored metric (`mode` min or max; `save_top_k` -1 keeps all, 0 none), a last
checkpoint always (the one before it kept as `.prev` until the next), and NeMo's .nemo files. File names follow
Lightning's `format_checkpoint_name` (`name--val_loss=0.1234-epoch=3`). The manager writes files; what goes into a
checkpoint is the trainer's business, and only global rank 0 calls `save`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch

from nest_ssl.checkpoint.format import PREV_SUFFIX, TMP_PREFIX, fsync_dir, load_checkpoint, save_checkpoint

log = logging.getLogger("nest_ssl.train")

WriteNemo = Callable[[Path, Mapping[str, torch.Tensor]], Any]  # (out path, state dict) -> writes a .nemo


class CheckpointPolicy(Protocol):
    """exp_manager.checkpoint as the manager reads it (nest_ssl.train.trainer_config.CheckpointSettings)."""

    dirpath: str | None
    filename: str | None
    monitor: str | None
    verbose: bool
    save_top_k: int
    save_weights_only: bool
    mode: str
    auto_insert_metric_name: bool
    every_n_epochs: int | None
    every_n_train_steps: int | None
    prefix: str | None
    postfix: str
    save_best_model: bool
    always_save_nemo: bool
    save_on_train_epoch_end: bool



def format_checkpoint_name(template: str | None, metrics: dict[str, Any], auto_insert_metric_name: bool = True) -> str:
    """`{epoch}-{step}` style templates as Lightning formats them (`epoch=3-step=1000`), missing metrics as 0."""
    filename = template or "{epoch}-{step}"
    metrics = dict(metrics)
    groups = re.findall(r"(\{.*?)[:\}]", filename)
    for group in sorted(groups, key=len, reverse=True):
        name = group[1:]
        if auto_insert_metric_name:
            filename = filename.replace(group, name + "={" + name)
        filename = filename.replace(group, f"{{0[{name}]")
        if name not in metrics:
            metrics[name] = 0
    # Lightning formats tensors; floats/ints format the same way.
    return filename.format({k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()})


class CheckpointManager:
    """exp_manager's checkpoint callback: top-k by a monitored metric, a last checkpoint always, .nemo files."""

    def __init__(self, policy: CheckpointPolicy, dirpath: Path, name: str, enabled: bool = True):
        c = policy
        self.c = c
        self.enabled = enabled
        self.dirpath = Path(c.dirpath) if c.dirpath else dirpath
        self.filename = c.filename or f"{name}--{{{c.monitor}:.4f}}-{{epoch}}"
        self.prefix = c.prefix if c.prefix is not None else name
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        self._warned_monitor = False

    # -- state kept in the checkpoint (Lightning's ModelCheckpoint state_dict) --
    @property
    def key(self) -> str:
        c = self.c
        return (f"ModelCheckpoint{{'monitor': {c.monitor!r}, 'mode': {c.mode!r}, 'every_n_train_steps': "
                f"{c.every_n_train_steps or 0}, 'every_n_epochs': {c.every_n_epochs or 0}, 'train_time_interval': None}}")

    def state_dict(self) -> dict:
        return {
            "monitor": self.c.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": None,
            "dirpath": str(self.dirpath),
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self._kth()[0] if self.best_k_models else "",
            "kth_value": self._kth()[1] if self.best_k_models else None,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, d: dict) -> None:
        self.best_k_models = {k: float(v) for k, v in (d.get("best_k_models") or {}).items() if Path(k).exists()}
        self.best_model_path = d.get("best_model_path") or ""
        self.best_model_score = d.get("best_model_score")
        self.last_model_path = d.get("last_model_path") or ""

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.c.mode == "min" else a > b

    def _kth(self) -> tuple[str, float]:
        # the worst of the kept ones
        items = sorted(self.best_k_models.items(), key=lambda kv: kv[1], reverse=(self.c.mode == "min"))
        return items[0]

    # -- triggers --
    def due_after_step(self, gs: int) -> bool:
        n = self.c.every_n_train_steps
        return bool(n) and n > 0 and gs > 0 and gs % n == 0

    def due_after_validation(self, epoch: int) -> bool:
        n = self.c.every_n_epochs
        return not self.c.save_on_train_epoch_end and bool(n) and n > 0 and (epoch + 1) % n == 0

    def due_at_epoch_end(self, epoch: int) -> bool:
        n = self.c.every_n_epochs
        return self.c.save_on_train_epoch_end and bool(n) and n > 0 and (epoch + 1) % n == 0

    # -- writing (global rank 0 only) --
    def save(self, ckpt: dict, metrics: dict[str, Any], write_nemo_fn: WriteNemo) -> None:
        """Writes `ckpt` as a top-k checkpoint when its metric ranks among the best, and as the last checkpoint.

        The ranking is updated before anything is written, and `ckpt["callbacks"]` gets the updated state (as
        Lightning does): a run resumed from this very file knows that the file is among its top k.
        """
        if not self.enabled:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        c = self.c
        topk_path, displaced = self._rank(metrics)
        last_path = self._last_path(metrics)
        self.last_model_path = str(last_path)
        ckpt.setdefault("callbacks", {})[self.key] = self.state_dict()
        if topk_path is not None:
            self._write(ckpt, topk_path, weights_only=c.save_weights_only)
        for old in displaced:  # after the new file is complete
            self._remove(old)
        self._save_last(ckpt, last_path)
        if c.always_save_nemo:
            if c.save_best_model and self.best_model_path and topk_path is None:
                pass  # the best model did not change: its .nemo is already on disk
            elif c.save_best_model and self.best_model_path and Path(self.best_model_path).exists():
                write_nemo_fn(self.nemo_path, load_checkpoint(self.best_model_path)["state_dict"])
            else:
                write_nemo_fn(self.nemo_path, ckpt["state_dict"])

    def save_last(self, ckpt: dict, metrics: dict[str, Any]) -> Path | None:
        """Writes `ckpt` as the last checkpoint only: no ranking, no top-k file, no .nemo. The first thing a
        preempted run writes (the rest follows in `save` when there is time for it)."""
        if not self.enabled:
            return None
        self.dirpath.mkdir(parents=True, exist_ok=True)
        last_path = self._last_path(metrics)
        self.last_model_path = str(last_path)
        ckpt.setdefault("callbacks", {})[self.key] = self.state_dict()
        self._save_last(ckpt, last_path)
        return last_path

    def _rank(self, metrics: dict[str, Any]) -> tuple[str | None, list[str]]:
        """Updates the top-k state for a checkpoint with these metrics: (its top-k path or None, files to remove)."""
        c = self.c
        if c.save_top_k == 0:
            return None, []
        path = str(self.dirpath / (format_checkpoint_name(self.filename, metrics, c.auto_insert_metric_name) + ".ckpt"))
        if c.monitor is None:
            # No metric: keep the newest save_top_k (Lightning: -1 all, 1 the latest).
            displaced = []
            if c.save_top_k == 1:
                displaced = [old for old in self.best_k_models if old != path]
                self.best_k_models = {}
            self.best_k_models[path] = float(metrics.get("step", 0))
            self.best_model_path = path
            return path, displaced
        value = metrics.get(c.monitor)
        if value is None or not math.isfinite(value):
            if not self._warned_monitor:
                log.warning("checkpoint monitor %r has no value yet (it is logged by validation); only the last "
                            "checkpoint is written until it has one", c.monitor)
                self._warned_monitor = True
            return None, []
        score = float(value)
        k = c.save_top_k
        if not (k == -1 or len(self.best_k_models) < k or self._better(score, self._kth()[1])):
            return None, []
        displaced = []
        if k != -1 and len(self.best_k_models) >= k:
            worst = self._kth()[0]
            del self.best_k_models[worst]
            if worst != path:
                displaced.append(worst)
        self.best_k_models[path] = score
        best = sorted(self.best_k_models.items(), key=lambda kv: kv[1], reverse=(c.mode == "max"))[0]
        self.best_model_path, self.best_model_score = best
        if c.verbose:
            log.info("step %s: %s=%.4f is among the best %s; saved %s", metrics.get("step"), c.monitor,
                     score, "all" if k == -1 else k, path)
        return path, displaced

    @property
    def nemo_path(self) -> Path:
        return self.dirpath / f"{self.prefix}{self.c.postfix}"

    def _last_path(self, metrics: dict) -> Path:
        name = format_checkpoint_name(self.filename + "-last", metrics, self.c.auto_insert_metric_name)
        return self.dirpath / f"{name}.ckpt"

    def _save_last(self, ckpt: dict, path: Path) -> None:
        # Write the new last checkpoint under a temporary name first, then move the current last to `.prev`
        # (dropping the older `.prev`), then move the new one into place: at every moment a complete checkpoint
        # exists under a name the resume search looks for.
        tmp = self.dirpath / f"{TMP_PREFIX}pending-{path.stem}.part"
        save_checkpoint(ckpt, tmp)
        for old_prev in self.dirpath.glob(f"*last.ckpt{PREV_SUFFIX}"):
            old_prev.unlink(missing_ok=True)
        for old in self.dirpath.glob("*last.ckpt"):
            os.replace(old, str(old) + PREV_SUFFIX)
        os.replace(tmp, path)
        fsync_dir(self.dirpath)

    def _write(self, ckpt: dict, path: str, weights_only: bool) -> None:
        if weights_only:
            ckpt = {k: v for k, v in ckpt.items() if k not in ("optimizer_states", "lr_schedulers", "MixedPrecision")}
            ckpt["nest_ssl"] = {k: v for k, v in ckpt["nest_ssl"].items() if k not in ("loop", "sampler", "rng")}
        save_checkpoint(ckpt, path)

    def _remove(self, path: str) -> None:
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass
