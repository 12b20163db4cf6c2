"""Counts the host synchronisations of training steps: where a GPU run would make the host wait for the device.

    python tests/host_syncs.py OUT_DIR [train.py overrides ...]             # one process
    python -m torch.distributed.run --nproc-per-node=2 tests/host_syncs.py OUT_DIR trainer.devices=2 ...

runs recipes/nest/train.py in this process with counting hooks and writes OUT_DIR/rank<r>.json: for every optimizer
step, the synchronisations counted since the previous step, each with the line of code that caused it. A
measurement aid for tests/test_train_host_syncs.py and for comparing branches (it runs on any checkout).

On the CPU nothing is asynchronous, so the harness counts the places where a GPU run would wait:
- reading the value of a device tensor: item(), bool(), int(), float(), formatting (they all reach
  aten._local_scalar_dense), tolist(), numpy();
- ops whose output size depends on values (nonzero, boolean indexing, masked_select, bincount, unique, equal,
  repeat_interleave without output_size);
- the trainer's own collectives (torch.distributed called from nest_ssl code; SyncBatchNorm's autograd all-reduce
  and DDP's gradient buckets are queued on the device and are not counted);
- nest_ssl.train.step_stats.to_host: the copy of a step's statistics to the host.
Which tensors are on the host is tracked per storage: what to_host returns, what deterministic factories
(zeros, arange, tensor(...)) create, and whatever is computed from host tensors alone; an in-place op with a
device operand, a collective, or the data loader's hand-over (batches go to the device) makes a storage a device
one. Random factories are device tensors (a GPU draws them). Work inside torch.utils.data (loading and collation,
on host tensors in the loader's workers) is not counted. Events are attributed to the optimizer step that follows
them (torch.optim's global step post-hook).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

REPO = Path(__file__).resolve().parent.parent
aten = torch.ops.aten

READS = {aten._local_scalar_dense.default}
DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.bincount.default, aten._unique2.default,
                  aten.unique_dim.default, aten.unique_consecutive.default, aten.equal.default}
RANDOM = {aten.rand.default, aten.randn.default, aten.randint.default, aten.randint.low, aten.randperm.default,
          aten.rand.generator, aten.randn.generator, aten.randint.generator, aten.randint.low_generator,
          aten.randperm.generator, aten.normal.float_float, aten.bernoulli.p, aten.binomial.default}
FROM_PYTHON = {aten.lift_fresh.default, aten.lift_fresh_copy.default}  # torch.tensor(data): values the host has
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter",
               "reduce_scatter_tensor", "all_gather_object", "broadcast_object_list", "gather_object", "barrier",
               "all_to_all")


def _site() -> str | None:
    """The innermost nest_ssl (or recipes) line of the current stack; None inside torch.utils.data."""
    stack = traceback.extract_stack()
    if any(f"torch{os.sep}utils{os.sep}data" in f.filename for f in stack):
        return None
    for f in reversed(stack):
        path = f.filename
        if f"{os.sep}nest_ssl{os.sep}" in path:
            return f"{path.rsplit(f'{os.sep}nest_ssl{os.sep}', 1)[1]}:{f.lineno} {f.name}"
    return "(outside nest_ssl) " + " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stack[-5:-2])


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.host_storages = WeakIdKeyDictionary()
        self.current: Counter = Counter()
        self.steps: list[dict] = []

    def is_host(self, t: torch.Tensor) -> bool:
        return t.untyped_storage() in self.host_storages

    def mark(self, t: torch.Tensor, host: bool) -> None:
        if t.is_sparse or t.device.type == "meta":
            return
        if host:
            self.host_storages[t.untyped_storage()] = True
        else:
            self.host_storages.pop(t.untyped_storage(), None)

    def count(self, what: str) -> None:
        site = _site()
        if site is not None:
            self.current[f"{what} @ {site}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = _tensors((args, kwargs))
        if func in FROM_PYTHON:
            host = True
        else:
            host = all(self.is_host(t) for t in inputs) if inputs else func not in RANDOM
        if not host:
            if func in READS:
                self.count("read")
            elif func in DATA_DEPENDENT:
                self.count(str(func.overloadpacket.__name__))
            elif func is aten.index.Tensor and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
                self.count("boolean index")
            elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
                self.count("repeat_interleave")
        mutated = [a for a, spec in zip(args, func._schema.arguments)
                   if isinstance(a, torch.Tensor) and spec.alias_info is not None and spec.alias_info.is_write]
        for t in mutated + _tensors(out):
            self.mark(t, host)
        return out

    def step_done(self) -> None:
        self.steps.append(dict(self.current))
        self.current = Counter()


def install(counter: SyncCounter) -> Callable[[], None]:
    """Python-level hooks: tolist/numpy, the trainer's collectives and host copy, the loader's hand-over, steps.
    Returns the function that removes them."""
    undo: list[Callable[[], None]] = []

    def patch(owner, name: str, new) -> None:
        old = getattr(owner, name)
        setattr(owner, name, new)
        undo.append(lambda: setattr(owner, name, old))

    for name in ("tolist", "numpy"):
        def read(self, *a, _original=getattr(torch.Tensor, name), _name=name, **k):
            if not counter.is_host(self):
                counter.count(_name)
            return _original(self, *a, **k)

        patch(torch.Tensor, name, read)
    for name in COLLECTIVES:
        if getattr(dist, name, None) is None:
            continue

        def collective(*a, _original=getattr(dist, name), _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}nest_ssl{os.sep}" in caller:  # not SyncBatchNorm's torch.distributed.nn all_reduce
                counter.count(f"collective {_name}")
            for t in _tensors((a, k)):
                counter.mark(t, False)
            return _original(*a, **k)

        patch(dist, name, collective)
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    def handed_over(self, _original=_BaseDataLoaderIter.__next__):
        batch = _original(self)
        for value in (vars(batch) if hasattr(batch, "__dict__") else {"batch": batch}).values():
            for t in _tensors(value):
                counter.mark(t, False)  # moved to the device by the trainer (a no-op on the CPU)
        return batch

    patch(_BaseDataLoaderIter, "__next__", handed_over)
    from nest_ssl.train import step_stats

    if hasattr(step_stats, "to_host"):
        def to_host(tensor, *a, _original=step_stats.to_host, **k):
            counter.count("to_host")
            out = _original(tensor, *a, **k)
            counter.mark(out, True)
            return out

        patch(step_stats, "to_host", to_host)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: counter.step_done())
    undo.append(handle.remove)

    def uninstall() -> None:
        while undo:
            undo.pop()()

    return uninstall


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0])
    sys.path.insert(0, str(REPO / "recipes" / "nest"))
    import train  # recipes/nest/train.py

    counter = SyncCounter()
    install(counter)
    with counter:
        rc = train.main(argv[1:])
    out_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"rc": rc, "steps": counter.steps}, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
