"""The trainer's per-optimizer-step statistics: named sums of one rank that every rank adds up once per step.

The sums live in one float64 tensor, followed by the learning-health sums (nest_ssl.train.health.HealthLayout),
so that a step costs one all-reduce however many statistics there are. Each field is a 0-dim view of that tensor:
`stats.loss_sum += loss` adds on the device without a host sync. The host reads a step's sums once, after the
all-reduce: `stats.host()` copies the tensor to the host (`to_host`, the step's one host synchronisation) and every
decision and figure of the step (skip or step, logging, health) is read from that copy.
"""

from __future__ import annotations

from typing import Any

import torch

from nest_ssl.train.distributed import DistInfo, all_reduce_sum

# (name, what it sums over the micro-batches of one optimizer step)
STEP_FIELDS: tuple[tuple[str, str], ...] = (
    ("loss_sum", "the loss of the micro-batches whose loss was finite"),
    ("micro_batches", "micro-batches"),
    ("nonfinite", "micro-batches whose loss was not finite"),
    ("empty_mask", "micro-batches in which no token was masked"),
    ("masked_tokens", "tokens the loss was computed on"),
    ("tokens", "valid (unpadded) encoder tokens"),
    ("audio_seconds", "seconds of audio trained on"),
    ("computed_seconds", "seconds of audio computed: batch size x the longest utterance, padding included"),
    ("stop_request", "ranks asking to stop after this step (a signal or max_time_per_run)"),
    ("preempt_request", "ranks asking to stop after this step because of a signal (SIGTERM, SIGUSR1)"),
    ("nonfinite_grad", "ranks whose gradient norm was not finite (bf16 overflow): every rank skips the step"),
    ("grad_norm", "the gradient norm before clipping / world size (DDP gives every rank the same gradients)"),
)
FIELD_NAMES = tuple(name for name, _ in STEP_FIELDS)


class StepStats:
    """One optimizer step's sums (STEP_FIELDS by name) and the health sums after them, in one tensor."""

    loss_sum: torch.Tensor
    micro_batches: torch.Tensor
    nonfinite: torch.Tensor
    empty_mask: torch.Tensor
    masked_tokens: torch.Tensor
    tokens: torch.Tensor
    audio_seconds: torch.Tensor
    computed_seconds: torch.Tensor
    stop_request: torch.Tensor
    preempt_request: torch.Tensor
    nonfinite_grad: torch.Tensor
    grad_norm: torch.Tensor

    def __init__(self, health_width: int = 0, device: torch.device | str = "cpu"):
        self.tensor = torch.zeros(len(FIELD_NAMES) + health_width, dtype=torch.float64, device=device)

    @property
    def health(self) -> torch.Tensor:
        """The health sums (a view: HealthLayout.add writes into it)."""
        return self.tensor[len(FIELD_NAMES):]

    def add_micro_batch(self, out: Any, audio_seconds: torch.Tensor | float) -> None:
        """Adds one micro-batch's training output (loss, empty_mask, token counts: tensors or numbers) and its audio
        seconds, on the device: a non-finite loss is counted, not added, and nothing is read on the host."""
        loss = out.loss.detach()
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss.double(), 0.0)
        self.nonfinite += (~finite).double()
        self.micro_batches += 1
        self.empty_mask += out.empty_mask
        self.masked_tokens += out.num_masked_tokens
        self.tokens += out.num_tokens
        self.audio_seconds += audio_seconds

    def all_reduce(self, info: DistInfo) -> None:
        """Sums every rank's statistics and health sums in place: the step's one collective."""
        all_reduce_sum(info, self.tensor)

    def host(self) -> "StepStats":
        """A copy of the sums on the host (`to_host`): read the step from it, so that the host waits for the device
        once per step; the device tensor can be zeroed for the next step meanwhile."""
        return StepStats.from_tensor(to_host(self.tensor))

    def zero(self) -> None:
        self.tensor.zero_()

    def mean_loss(self) -> float:
        """The loss averaged over the micro-batches whose loss was finite (nan when there were none)."""
        n = float(self.micro_batches - self.nonfinite)
        return float(self.loss_sum) / n if n > 0 else float("nan")

    def masked_fraction(self) -> float:
        tokens = float(self.tokens)
        return float(self.masked_tokens) / tokens if tokens > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        """The named sums as floats (one host copy of the tensor)."""
        values = self.tensor[: len(FIELD_NAMES)].tolist()
        return dict(zip(FIELD_NAMES, values))

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> "StepStats":
        """A StepStats over an existing tensor (the named sums first, then the health sums); no copy."""
        if tensor.dim() != 1 or tensor.numel() < len(FIELD_NAMES):
            raise ValueError(f"a step statistics tensor is 1-D with at least {len(FIELD_NAMES)} values; "
                             f"got shape {tuple(tensor.shape)}")
        stats = cls.__new__(cls)
        stats.tensor = tensor
        return stats


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A host (CPU) copy of a device tensor, never aliasing it (on the CPU as well): where the host waits for the
    device. The trainer's one per step (tests/host_syncs.py counts the calls)."""
    return tensor.detach().to("cpu", copy=True)


def _field(index: int, name: str, doc: str) -> property:
    def get(self: StepStats) -> torch.Tensor:
        return self.tensor[index]

    def set(self: StepStats, value: Any) -> None:  # `stats.x += v` reads the view, adds in place, assigns back
        self.tensor[index] = value

    return property(get, set, doc=f"{name}: sum of {doc}")


for _i, (_name, _doc) in enumerate(STEP_FIELDS):
    setattr(StepStats, _name, _field(_i, _name, _doc))
del _i, _name, _doc
