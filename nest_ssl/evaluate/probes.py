"""SUPERB-style frozen probes (s3prl's protocol): a learnable softmax-weighted sum of all hidden states, then a
small task head. The representations are frozen and cached; only the layer weights and the head train.

- phone: a linear classifier on every frame (accuracy over frames). Frames are independent, so the training set
  is simply every frame of every train utterance.
- speaker: the utterance's frames mean-pooled, then a linear classifier (closed-set accuracy). Pooling and the
  weighted sum are both linear, so the per-layer means are pooled once and weighted afterwards (the same result).
- per-layer phone probes: one linear classifier per hidden state alone, all trained side by side (independent
  parameters; Adam is per-parameter, so this equals training them one by one), each selected on dev by itself;
  `phone_probes` trains them in the same pass as the weighted probe (the same minibatches, the same results).
  A layer whose probe scores only the majority-class rate carries no phone information (a collapsed layer).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nest_ssl.evaluate.fit import better, fit_selected, shuffled
from nest_ssl.evaluate.metrics import accuracy


class LayerWeighting(nn.Module):
    """softmax(w) . hidden states over the layer axis; the weights start equal (w = 0)."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., L, D) -> (..., D)
        return torch.einsum("...ld,l->...d", x, torch.softmax(self.logits, dim=0))

    def weights(self) -> list[float]:
        return [float(w) for w in torch.softmax(self.logits.detach(), dim=0)]


class WeightedLinear(nn.Module):
    def __init__(self, num_layers: int, dim: int, num_classes: int):
        super().__init__()
        self.weighting = LayerWeighting(num_layers)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.weighting(x))


class PerLayerLinear(nn.Module):
    """An independent linear classifier for each layer: (N, L, D) -> (N, L, C)."""

    def __init__(self, num_layers: int, dim: int, num_classes: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's initialisation, per layer
        self.weight = nn.Parameter(torch.empty(num_layers, dim, num_classes).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_layers, num_classes).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nld,ldc->nlc", x, self.weight) + self.bias


@dataclass
class ProbeOutcome:
    test: dict[str, float]  # metric -> value on test
    dev: float  # the selection score
    epoch: int  # the selected epoch
    layer_weights: list[float]


def _train_classifier(model: WeightedLinear, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], *,
                      epochs: int, lr: float, batch_size: int, seed: int) -> ProbeOutcome:
    generator = torch.Generator().manual_seed(seed)

    def epoch_losses(epoch):
        for idx in shuffled(len(y["train"]), generator, batch_size):
            yield F.cross_entropy(model(x["train"][idx]), y["train"][idx])

    def score(split):
        return accuracy(model(x[split]).argmax(-1), y[split])

    dev, epoch = fit_selected(model, epoch_losses, lambda: score("dev"), epochs=epochs, lr=lr,
                              higher_is_better=True)
    with torch.no_grad():
        test = score("test")
    return ProbeOutcome(test={"accuracy": test}, dev=dev, epoch=epoch, layer_weights=model.weighting.weights())


def frames_and_labels(reps: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]):
    """Every frame of every utterance: (N, L, D) and (N,)."""
    return torch.cat(list(reps)), torch.cat(list(labels))


def phone_probe(splits: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int, *, epochs: int, lr: float,
                batch_size: int, seed: int) -> ProbeOutcome:
    """splits: split -> (frames (N, L, D), labels (N,)). Frame accuracy of the weighted-sum linear probe."""
    torch.manual_seed(seed)
    x = {k: v[0] for k, v in splits.items()}
    y = {k: v[1] for k, v in splits.items()}
    model = WeightedLinear(x["train"].shape[1], x["train"].shape[2], num_classes)
    return _train_classifier(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)


def speaker_probe(splits: dict[str, tuple[Sequence[torch.Tensor], torch.Tensor]], num_classes: int, *, epochs: int,
                  lr: float, batch_size: int, seed: int) -> ProbeOutcome:
    """splits: split -> (per-utterance (T', L, D) tensors, speaker ids (U,)). Utterance accuracy."""
    torch.manual_seed(seed)
    x = {k: torch.stack([r.mean(dim=0) for r in v[0]]) for k, v in splits.items()}  # (U, L, D)
    y = {k: v[1] for k, v in splits.items()}
    model = WeightedLinear(x["train"].shape[1], x["train"].shape[2], num_classes)
    return _train_classifier(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)


def per_layer_phone_probes(splits: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int, *, epochs: int,
                           lr: float, batch_size: int, seed: int) -> list[float]:
    """Test frame accuracy of a linear probe on each hidden state alone, each at its own best-on-dev epoch."""
    return phone_probes(splits, num_classes, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                        weighted=False)[1]


def phone_probes(splits: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int, *, epochs: int, lr: float,
                 batch_size: int, seed: int, weighted: bool = True, per_layer: bool = True
                 ) -> tuple[ProbeOutcome | None, list[float] | None]:
    """`phone_probe` and `per_layer_phone_probes` in one pass over the frames: the same minibatches feed both (each
    is initialised from `seed` and shuffled by a generator of `seed`, as when trained alone), the parameters are
    disjoint and Adam is per parameter, so the results are those of training them one after the other, for one
    gather and one backward per step instead of two."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    x = {k: v[0] for k, v in splits.items()}
    y = {k: v[1] for k, v in splits.items()}
    num_layers, dim = x["train"].shape[1], x["train"].shape[2]
    model = layers = None
    params: list[nn.Parameter] = []
    if weighted:
        torch.manual_seed(seed)
        model = WeightedLinear(num_layers, dim, num_classes)
        params += list(model.parameters())
    if per_layer:
        torch.manual_seed(seed)
        layers = PerLayerLinear(num_layers, dim, num_classes)
        params += list(layers.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    best, best_epoch, best_state = None, -1, None
    best_dev = torch.full((num_layers,), -1.0)
    best_test = torch.zeros(num_layers)
    for epoch in range(epochs):
        for idx in shuffled(len(y["train"]), generator, batch_size):
            xb, yb = x["train"][idx], y["train"][idx]
            loss = 0.0
            if model is not None:
                loss = F.cross_entropy(model(xb), yb)
            if layers is not None:
                logits = layers(xb)  # (B, L, C)
                # sum over layers of each layer's mean loss: the layers' gradients stay independent
                loss = loss + F.cross_entropy(logits.reshape(-1, num_classes),
                                              yb.repeat_interleave(num_layers)) * num_layers
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            if model is not None:
                score = accuracy(model(x["dev"]).argmax(-1), y["dev"])
                if better(score, best, higher_is_better=True):
                    best, best_epoch = score, epoch
                    best_state = copy.deepcopy(model.state_dict())
            if layers is not None:
                dev = (layers(x["dev"]).argmax(-1) == y["dev"][:, None]).float().mean(dim=0)
                test = (layers(x["test"]).argmax(-1) == y["test"][:, None]).float().mean(dim=0)
                improved = dev > best_dev
                best_dev = torch.where(improved, dev, best_dev)
                best_test = torch.where(improved, test, best_test)
    outcome = None
    if model is not None:
        model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            test_acc = accuracy(model(x["test"]).argmax(-1), y["test"])
        outcome = ProbeOutcome(test={"accuracy": test_acc}, dev=float(best), epoch=best_epoch,
                               layer_weights=model.weighting.weights())
    return outcome, ([float(v) for v in best_test] if layers is not None else None)


def majority_rate(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Test accuracy of always answering the most frequent training class (what a collapsed probe scores)."""
    majority = torch.bincount(train_labels).argmax()
    return float((test_labels == majority).float().mean())
