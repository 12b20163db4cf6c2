"""Optimizer and learning-rate schedules from NeMo-style `optim` config nodes (NeMo 2.7.3 formulas).

`optim: {name: adamw, lr: 5.0, betas: [0.9, 0.98], weight_decay: 1e-3, sched: {name: NoamAnnealing, d_model: 512,
warmup_steps: 25000, min_lr: 1e-6}}`: `lr` is the Noam multiplier, not a learning rate; the schedule is stepped
once per optimizer step.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterable, Mapping

import torch
from torch.optim.lr_scheduler import LRScheduler

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
# Keys of the optim node that configure something else than the optimizer constructor.
_NOT_OPTIMIZER_ARGS = ("name", "sched")
# Keys NeMo's trainer wiring adds to the sched node; they never reach the scheduler constructor.
_NOT_SCHEDULER_ARGS = ("name", "t_max_epochs", "t_accumulate_grad_batches", "t_limit_train_batches",
                       "t_num_workers", "monitor", "reduce_on_plateau", "interval", "frequency")


def _plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if hasattr(cfg, "_metadata"):  # an OmegaConf node; imported lazily so this module has no hard dependency
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def build_optimizer(params: Iterable, optim_cfg: Mapping) -> torch.optim.Optimizer:
    """torch optimizer named by `optim_cfg.name` with the node's other keys (except `sched`) as arguments."""
    cfg = _plain(optim_cfg)
    name = str(cfg.get("name", "")).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer name {cfg.get('name')!r}; choose one of {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    kwargs = {k: v for k, v in cfg.items() if k not in _NOT_OPTIMIZER_ARGS}
    if "lr" not in kwargs:
        raise ValueError("optim.lr is required")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {unknown}; it accepts {sorted(accepted)}")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return cls(params, **kwargs)


def _warmup_steps(warmup_steps, warmup_ratio, max_steps) -> int:
    if warmup_steps is not None and warmup_ratio is not None:
        raise ValueError("give warmup_steps or warmup_ratio, not both")
    if warmup_ratio is not None:
        if max_steps is None:
            raise ValueError("warmup_ratio needs max_steps")
        return int(warmup_ratio * max_steps)
    return warmup_steps or 0


class NoamAnnealing(LRScheduler):
    """lr(s) = base_lr * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5), s = max(1, step); after warmup the result is
    floored at min_lr (never during warmup). Without warmup: base_lr * d_model^-0.5 * s^-0.5."""

    def __init__(self, optimizer, d_model, warmup_steps=None, warmup_ratio=None, max_steps=None, min_lr=0.0,
                 last_epoch=-1):
        self._normalize = d_model ** (-0.5)
        self.max_steps = max_steps  # only used to resolve warmup_ratio
        self.warmup_steps = _warmup_steps(warmup_steps, warmup_ratio, max_steps)
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        step = max(1, self.last_epoch)
        for base in self.base_lrs:
            if base < self.min_lr:
                raise ValueError(f"initial lr {base} is below min_lr {self.min_lr}")
        return [self._noam(base, step) for base in self.base_lrs]

    def _noam(self, base: float, step: int) -> float:
        if self.warmup_steps > 0:
            mult = self._normalize * min(step ** (-0.5), step * (self.warmup_steps ** (-1.5)))
        else:
            mult = self._normalize * step ** (-0.5)
        lr = base * mult
        return max(lr, self.min_lr) if step > self.warmup_steps else lr


class CosineAnnealing(LRScheduler):
    """NeMo's CosineAnnealing without hold: linear warmup base*(s+1)/(warmup+1) for s <= warmup, then a half cosine
    from base to min_lr over [warmup, max_steps], min_lr after max_steps."""

    def __init__(self, optimizer, max_steps, min_lr=0.0, warmup_steps=None, warmup_ratio=None, constant_steps=None,
                 constant_ratio=None, last_epoch=-1):
        if constant_steps or constant_ratio:
            raise NotImplementedError("CosineAnnealing with constant (hold) steps is not implemented")
        self.max_steps = max_steps
        self.warmup_steps = _warmup_steps(warmup_steps, warmup_ratio, max_steps)
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        step = self.last_epoch
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return [base * ((step + 1) / (self.warmup_steps + 1)) for base in self.base_lrs]
        if step > self.max_steps:
            return [self.min_lr for _ in self.base_lrs]
        span = self.max_steps - self.warmup_steps
        mult = 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / span))
        return [(base - self.min_lr) * mult + self.min_lr for base in self.base_lrs]


SCHEDULERS = {"NoamAnnealing": NoamAnnealing, "CosineAnnealing": CosineAnnealing}


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Mapping | None, max_steps: int | None = None):
    """Scheduler named by `sched_cfg.name` (None, a missing node or name 'none' -> None).

    `max_steps` is the trainer's: when > 0 it replaces the node's own value, as NeMo's setup_optimization does;
    as in NeMo, a node max_steps of -1 (with no trainer value) means "no scheduler".
    """
    cfg = _plain(sched_cfg)
    name = cfg.get("name")
    if not cfg or name is None or str(name).lower() == "none":
        return None
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler name {name!r}; choose one of {sorted(SCHEDULERS)} or none")
    kwargs = {k: v for k, v in cfg.items() if k not in _NOT_SCHEDULER_ARGS}
    if max_steps is not None and max_steps > 0:
        kwargs["max_steps"] = max_steps
    elif kwargs.get("max_steps") == -1:
        return None
    cls = SCHEDULERS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "optimizer"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"scheduler {name!r} does not take {unknown}; it accepts {sorted(accepted)}")
    return cls(optimizer, **kwargs)
