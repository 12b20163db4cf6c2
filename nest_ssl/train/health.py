"""Learning-health metrics: is the model learning anything beyond the marginal distribution of its targets?

NEST's targets come from a frozen random-projection quantizer, so their distribution is fixed by the data; the loss
of a model that ignores its input can go down to the entropy of that distribution (the "context-free floor") and no
further. These figures make the difference visible:

- masked-token top-1 accuracy, beside two chances: 1/num_classes and the majority-class rate (the accuracy of a
  model that always predicts the most frequent code);
- codebook use of the targets of each optimizer step (coverage = used codes / num_classes, perplexity =
  exp(entropy)), counted over all ranks, and the same counted cumulatively since step 0 (trainer state that is kept
  in the checkpoint);
- the floor: the plug-in entropy of the validation targets, against which val_loss is reported;
- a collapse alarm (`CollapseAlarm`).

Per-rank sums travel in one flat float64 vector (`HealthLayout`) so that they ride the step's single all-reduce with
the trainer's other statistics; every function here is pure and works on CPU or GPU tensors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from nest_ssl.config import ConfigError

log = logging.getLogger("nest_ssl.train")


@dataclass
class HealthSettings:
    """The `nest_trainer.health` section: the collapse alarm's thresholds (docs/training.md, "Learning health")."""

    min_coverage: float = 0.1  # alarm when a step's targets use less than this fraction of the codes they could use
    floor_margin: float = 0.05  # nats: val_loss must get this far below the floor ...
    floor_patience_steps: int = 2000  # ... once this many optimizer steps are done (-1: never check)

    def validate(self, where: str = "nest_trainer.health") -> None:
        for key in ("min_coverage", "floor_margin"):
            v = getattr(self, key)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{where}.{key}={v!r}: must be a number >= 0")
        if self.min_coverage > 1:
            raise ConfigError(f"{where}.min_coverage={self.min_coverage!r}: a fraction, at most 1 (0: off)")
        if self.floor_patience_steps < -1:
            raise ConfigError(f"{where}.floor_patience_steps={self.floor_patience_steps!r}: an integer >= 0 (-1: off)")


# ----------------------------------------------------------------------------------------------------------------
# Counting


def _with_book_axis(t: torch.Tensor, dims: int) -> torch.Tensor:
    """Adds the trailing books axis that squeeze_single removes (a tensor of `dims` dims lacks it)."""
    return t.unsqueeze(-1) if t.dim() == dims else t


def code_counts(ids: torch.Tensor, num_classes: int, num_books: int,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Codes (M, H) (or (M,) for one book) -> float64 counts (H, num_classes), one row per codebook; `weights` (M,)
    (bool or float) counts each row that many times (0: not at all).

    A scatter into a fixed-size tensor (not bincount, whose output size depends on the largest code, which makes the
    host wait for the device); a code outside [0, num_classes) is an index error.
    """
    ids = _with_book_axis(ids, 1).reshape(-1, num_books).long()
    offsets = torch.arange(num_books, device=ids.device) * num_classes
    flat = (ids + offsets[None, :]).reshape(-1)
    if weights is None:
        w = torch.ones(flat.shape, dtype=torch.float64, device=ids.device)
    else:
        w = weights.reshape(-1, 1).to(torch.float64).expand(-1, num_books).reshape(-1)
    counts = torch.zeros(num_books * num_classes, dtype=torch.float64, device=ids.device)
    return counts.index_add_(0, flat, w).reshape(num_books, num_classes)


def masked_correct(log_probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """float64 (H,): tokens whose top-1 prediction is the target, per codebook; `weights` (N,) bool selects tokens.

    log_probs (N, C, H) or (N, C); targets (N, H) or (N,).
    """
    log_probs = _with_book_axis(log_probs, 2)
    targets = _with_book_axis(targets, 1)
    if log_probs.shape[0] != targets.shape[0] or log_probs.shape[2] != targets.shape[1]:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and targets {tuple(targets.shape)} do not describe "
                         "the same tokens")
    hits = log_probs.argmax(dim=1) == targets
    if weights is not None:
        hits = hits & weights.reshape(-1, 1).bool()
    return hits.sum(0).double()


# ----------------------------------------------------------------------------------------------------------------
# Figures from counts (H, C)


def entropy(counts: torch.Tensor) -> torch.Tensor:
    """Plug-in entropy in nats per codebook, (H,); 0 for a codebook without counts."""
    counts = counts.double()
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1.0)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


def unigram_cross_entropy(counts: torch.Tensor, reference: torch.Tensor, prior: float = 0.5) -> torch.Tensor:
    """Mean NLL (nats, per codebook (H,)) of the tokens counted in `counts` under the distribution of `reference`
    (add-`prior` smoothed): the loss of a model that ignores its input and predicts the reference's code frequencies.

    With `reference` the training targets seen so far, this is a context-free model one can actually train, so
    val_loss below it means the input is used; the plug-in entropy of the validation counts themselves is lower
    (biased low: it knows the validation distribution and underestimates with few tokens).
    """
    counts, reference = counts.double(), reference.double().to(counts.device)
    q = (reference + prior) / (reference.sum(-1, keepdim=True) + prior * reference.shape[-1])
    n = counts.sum(-1)
    return -(counts * q.log()).sum(-1) / n.clamp_min(1.0)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy): the number of equally used codes that would give the same entropy, (H,)."""
    return entropy(counts).exp()


def coverage(counts: torch.Tensor) -> torch.Tensor:
    """Fraction of the codebook's codes that occur at least once, (H,)."""
    return (counts > 0).double().mean(-1)


def attainable_coverage(counts: torch.Tensor) -> torch.Tensor:
    """Used codes / min(num_classes, tokens), (H,): coverage against what this many tokens could cover at best.

    A step of 300 tokens can use at most 300 of 8192 codes; this is what the coverage alarm compares with its
    threshold, so that the alarm means the same for a CPU test batch and a 64-GPU step.
    """
    used = (counts > 0).double().sum(-1)
    possible = torch.minimum(counts.sum(-1), torch.full_like(used, counts.shape[-1]))
    return torch.where(possible > 0, used / possible.clamp_min(1.0), torch.zeros_like(used))


def majority_rate(counts: torch.Tensor) -> torch.Tensor:
    """Share of the most frequent code, (H,): the accuracy of a model that ignores its input."""
    total = counts.sum(-1)
    return torch.where(total > 0, counts.max(-1).values / total.clamp_min(1.0), torch.zeros_like(total))


def _per_book(name: str, values: torch.Tensor, out: dict[str, float]) -> None:
    """`name` = the mean over codebooks; with more than one codebook also `name_book<i>`."""
    out[name] = float(values.mean())
    if values.numel() > 1:
        for i, v in enumerate(values.tolist()):
            out[f"{name}_book{i}"] = float(v)


# ----------------------------------------------------------------------------------------------------------------
# The packed per-rank sums


@dataclass(frozen=True)
class HealthLayout:
    """Where the sums sit in the flat float64 vector: [correct (H), masked tokens (1), counts (H * C)].

    Training counts the codes of every valid token (codebook use); validation counts those of the masked tokens
    (the floor is the entropy of exactly the tokens val_loss is computed on).
    """

    num_classes: int
    num_books: int

    @property
    def width(self) -> int:
        return self.num_books + 1 + self.num_books * self.num_classes

    def zeros(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(self.width, dtype=torch.float64, device=device)

    def correct(self, buf: torch.Tensor) -> torch.Tensor:
        return buf[: self.num_books]

    def masked(self, buf: torch.Tensor) -> torch.Tensor:
        return buf[self.num_books]

    def counts(self, buf: torch.Tensor) -> torch.Tensor:
        return buf[self.num_books + 1:].view(self.num_books, self.num_classes)

    def add(self, buf: torch.Tensor, out: Any, count: str) -> None:
        """Adds one batch's StepOutput to `buf`; count="valid" (training) or "masked" (validation) says whose codes
        are counted. On the device, without reading a value (the trainer reads the sums once per step)."""
        if count not in ("valid", "masked"):
            raise ValueError(f"count must be 'valid' or 'masked', not {count!r}")
        with torch.no_grad():
            log_probs = _with_book_axis(out.log_probs.detach(), 3)  # (B, T', C, H)
            tokens = _with_book_axis(out.tokens, 2)  # (B, T', H)
            C, H = log_probs.shape[2], log_probs.shape[3]
            selected = out.selected.reshape(-1)
            buf[: self.num_books] += masked_correct(log_probs.reshape(-1, C, H), tokens.reshape(-1, H), selected)
            buf[self.num_books] += selected.sum()
            weights = out.valid if count == "valid" else out.selected
            self.counts(buf).add_(code_counts(tokens.reshape(-1, H), self.num_classes, self.num_books,
                                              weights=weights.reshape(-1)))

    def accuracy(self, buf: torch.Tensor) -> float | None:
        n = float(self.masked(buf))
        return float(self.correct(buf).mean()) / n if n > 0 else None


def step_metrics(layout: HealthLayout, buf: torch.Tensor) -> dict[str, float]:
    """The figures of one optimizer step from its all-reduced sums (see docs/training.md for the names)."""
    counts = layout.counts(buf)
    out: dict[str, float] = {"chance_uniform": 1.0 / layout.num_classes}
    acc = layout.accuracy(buf)
    if acc is not None:
        out["masked_acc"] = acc
    if float(counts.sum()) > 0:
        out["chance_majority"] = float(majority_rate(counts).mean())
        _per_book("target_perplexity", perplexity(counts), out)
        _per_book("target_coverage", coverage(counts), out)
        out["target_attainable_coverage"] = float(attainable_coverage(counts).min())
    return out


def validation_metrics(layout: HealthLayout, buf: torch.Tensor, val_loss: float | None,
                       train_counts: torch.Tensor | None = None) -> dict[str, float]:
    """val_acc, the floor and val_loss against it, from the all-reduced sums of a whole validation.

    The floor (`val_floor`) is the cross-entropy of the masked validation targets under the training targets'
    code frequencies (`train_counts`, the cumulative counts since step 0): what a context-free model scores on
    these tokens. `val_floor_plugin` is the entropy of the validation targets themselves, a lower bound that is
    biased low with few tokens (414 masked tokens over 1024 codes gave 4.5 nats where the unigram floor is 5.2).
    Without training counts (a validation before the first step), `val_floor` is the plug-in figure."""
    counts = layout.counts(buf)
    out: dict[str, float] = {}
    acc = layout.accuracy(buf)
    if acc is not None:
        out["val_acc"] = acc
    tokens = float(counts[0].sum())
    if tokens > 0:
        plugin = float(entropy(counts).mean())  # the loss is the mean over decoders, so is its floor
        out["val_floor_plugin"] = plugin
        floor = plugin
        if train_counts is not None and float(train_counts.sum()) > 0:
            floor = float(unigram_cross_entropy(counts, train_counts).mean())
        out["val_floor"] = floor
        out["val_chance_majority"] = float(majority_rate(counts).mean())
        out["val_floor_tokens"] = tokens
        if val_loss is not None:
            out["val_loss_minus_floor"] = val_loss - floor
    return out


# ----------------------------------------------------------------------------------------------------------------
# State since step 0


@dataclass
class CumulativeCounts:
    """Target-code counts of every training step since step 0, summed over ranks (identical on every rank)."""

    num_classes: int
    num_books: int
    counts: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.counts = torch.zeros(self.num_books, self.num_classes, dtype=torch.float64)

    def add(self, step_counts: torch.Tensor) -> None:
        self.counts += step_counts.detach().to("cpu", torch.float64)

    def metrics(self) -> dict[str, float]:
        if float(self.counts.sum()) == 0:
            return {}
        out: dict[str, float] = {}
        _per_book("cum_target_coverage", coverage(self.counts), out)
        _per_book("cum_target_entropy", entropy(self.counts), out)
        out["cum_target_perplexity"] = float(perplexity(self.counts).mean())
        out["cum_target_tokens"] = float(self.counts[0].sum())
        return out

    def state_dict(self) -> dict:
        return {"num_classes": self.num_classes, "num_books": self.num_books, "counts": self.counts.clone()}

    def load_state_dict(self, d: dict) -> None:
        shape = (self.num_books, self.num_classes)
        counts = d["counts"]
        if tuple(counts.shape) != shape:
            log.warning("the checkpoint's cumulative target counts have shape %s, this model's codebooks %s: "
                        "cumulative coverage and entropy start again from zero", tuple(counts.shape), shape)
            return
        self.counts = counts.detach().to("cpu", torch.float64).clone()


# ----------------------------------------------------------------------------------------------------------------
# The alarm


@dataclass
class CollapseAlarm:
    """Two alarms, each 0/1 in metrics.jsonl, with `collapse_alarm` = either of them.

    low_coverage: a logged step's targets use fewer than min_coverage of the codes they could (attainable coverage);
    at_floor: at a validation after floor_patience_steps, val_loss is not at least floor_margin below the floor.
    Each is re-evaluated whenever its inputs are new (every logged step, every validation) and warns when it turns
    on. Its state is kept in the checkpoint, so a resumed run logs the same flags.
    """

    settings: HealthSettings
    announce: bool = True  # log the warnings (global rank 0); every rank keeps the same state
    low_coverage: bool = False
    at_floor: bool = False

    def check_coverage(self, step: int, attainable: float | None, coverage_value: float | None = None) -> None:
        if attainable is None or self.settings.min_coverage <= 0:
            return
        fired = attainable < self.settings.min_coverage
        if fired and not self.low_coverage and self.announce:
            log.warning(
                "COLLAPSE ALARM (codebook use) at step %d: the training targets of this step use only %.1f%% of the "
                "codes they could (target_attainable_coverage=%.3f < nest_trainer.health.min_coverage=%.3f%s). The "
                "frozen quantizer maps almost every frame to a few codes, so there is little to predict and a low "
                "loss means nothing. Check the audio (silence, constant padding, clipping, a wrong sample rate), "
                "the features (preprocessor normalize, dither) and model.num_classes; the targets do not depend on "
                "the weights, so lowering the learning rate will not help.", step, 100 * attainable, attainable,
                self.settings.min_coverage,
                "" if coverage_value is None else f"; target_coverage={coverage_value:.4f}")
        elif not fired and self.low_coverage and self.announce:
            log.info("codebook-use alarm cleared at step %d (target_attainable_coverage=%.3f)", step, attainable)
        self.low_coverage = fired

    def check_floor(self, step: int, val_loss: float | None, floor: float | None, tokens: float | None = None) -> None:
        patience = self.settings.floor_patience_steps
        if val_loss is None or floor is None or patience < 0 or step < patience:
            return
        fired = val_loss > floor - self.settings.floor_margin
        if fired and not self.at_floor and self.announce:
            log.warning(
                "COLLAPSE ALARM (loss floor) at step %d: val_loss=%.4f is not %.3f nats below the context-free floor "
                "%.4f (the entropy of the validation targets: the best loss of a model that ignores its input) "
                "after nest_trainer.health.floor_patience_steps=%d steps. The model does no better than one that "
                "predicts the code frequencies without listening: it is not using its input. Look at grad_norm and "
                "learning_rate (a learning rate too low or too high, a warmup too long for the run), masked_acc "
                "against chance_majority, masked_fraction and the augmentation strength; small runs may just need "
                "more steps or data. The floor is estimated from %s validation tokens (an underestimate when they "
                "are few).", step, val_loss, self.settings.floor_margin, floor, patience,
                "the" if tokens is None else f"{int(tokens)}")
        elif not fired and self.at_floor and self.announce:
            log.info("loss-floor alarm cleared at step %d (val_loss %.4f, floor %.4f)", step, val_loss, floor)
        self.at_floor = fired

    def flags(self) -> dict[str, float]:
        return {"alarm_low_coverage": float(self.low_coverage), "alarm_at_floor": float(self.at_floor),
                "collapse_alarm": float(self.low_coverage or self.at_floor)}

    def state_dict(self) -> dict:
        return {"low_coverage": self.low_coverage, "at_floor": self.at_floor}

    def load_state_dict(self, d: dict) -> None:
        self.low_coverage = bool(d.get("low_coverage", False))
        self.at_floor = bool(d.get("at_floor", False))
