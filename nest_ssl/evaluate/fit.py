"""The one training loop every probe uses: Adam for a fixed number of epochs, the epoch with the best dev score kept.

Early *selection*, not early stopping: every model gets the same budget, and the weights reported on test are those
of the epoch that scored best on dev (ties keep the earlier epoch), so the test set never influences a choice.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn


def shuffled(n: int, generator: torch.Generator, batch_size: int) -> list[torch.Tensor]:
    """Index batches of one epoch in a seeded random order."""
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def better(score: float, best: float | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return score > best if higher_is_better else score < best


def fit_selected(
    module: nn.Module,
    epoch_losses: Callable[[int], Iterable[torch.Tensor]],
    dev_score: Callable[[], float],
    *,
    epochs: int,
    lr: float,
    higher_is_better: bool,
    grad_clip: float | None = None,
) -> tuple[float, int]:
    """Trains `module`; leaves it holding the best-on-dev weights in eval mode. Returns (best dev score, epoch).

    epoch_losses(epoch) yields one loss per optimiser step (computed lazily, so each is backpropagated before the
    next batch is built).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    best, best_epoch, best_state = None, -1, None
    for epoch in range(epochs):
        module.train()
        for loss in epoch_losses(epoch):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        module.eval()
        with torch.no_grad():
            score = dev_score()
        if better(score, best, higher_is_better):
            best, best_epoch = score, epoch
            best_state = copy.deepcopy(module.state_dict())
    module.load_state_dict(best_state)
    module.eval()
    return float(best), best_epoch
