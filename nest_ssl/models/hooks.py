"""Reading a hidden layer of the encoder: a forward hook that keeps one layer's output.

Layer numbering (used by `nest-ssl extract --layer` and the evaluation's per-layer probes): 0 is the input of the
first Conformer layer (subsampled features + xscaling), 1..N the output of Conformer layer N, -1 the encoder's
output (taken from the encoder's return value, so no hook is needed).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle


def layer_output_hook(encoder: nn.Module, layer: int) -> tuple[dict[str, Any], RemovableHandle | None]:
    """Registers a hook that keeps the output of `layer` in holder["x"]; returns (holder, handle), or
    (holder, None) for -1. The caller removes the handle."""
    holder: dict[str, Any] = {}
    n = len(encoder.layers)
    if layer == -1:
        return holder, None
    if not 0 <= layer <= n:
        raise ValueError(f"--layer {layer}: the encoder has layers 1..{n} (0: its input, -1: its output)")

    def hook(module, inputs, output):
        holder["x"] = output[0] if isinstance(output, tuple) else output

    target = encoder.pos_enc if layer == 0 else encoder.layers[layer - 1]
    return holder, target.register_forward_hook(hook)
