"""The training loop's counters (epoch, batches, optimizer steps, skipped steps), as the checkpoint keeps them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoopState:
    epoch: int = 0
    batch_idx: int = 0  # training batches consumed in this epoch
    total_batch_idx: int = 0  # training batches consumed in the run
    global_step: int = 0  # optimizer steps
    epoch_finished: bool = False  # the epoch's last batch has been trained on
    nonfinite_in_a_row: int = 0
    skipped_nonfinite: int = 0  # steps skipped because the loss or the gradient norm was not finite
    skipped_nonfinite_grad: int = 0  # of those, steps whose loss was finite and gradient norm was not
    skipped_empty: int = 0  # steps skipped because no token was masked on any rank
    rejected_cuts: int = 0  # training cuts this rank's loader dropped (unreadable, NaN/Inf, empty audio)
    last_saved_step: int = -1
    last_val_step: int = -1

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopState":
        """Unknown keys (from another version) are ignored; missing ones keep their defaults."""
        s = cls()
        for k, v in d.items():
            if hasattr(s, k):
                setattr(s, k, v)
        return s
