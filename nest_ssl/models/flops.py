"""FLOPs of a model's work counted by torch's FlopCounterMode, with the two corrections our model needs.

``count_flops(fn)`` runs ``fn()`` under ``torch.utils.flop_counter.FlopCounterMode`` and returns the FLOPs of its
matrix products, convolutions and attention (a multiply-add counts 2; elementwise work is not counted), forward
and backward alike when ``fn`` runs both. Two corrections to torch 2.9's counter:

- our CPU linear layers run oneDNN's ``mkldnn::_linear_pointwise`` (nest_ssl.modules.linear), an op the counter has
  no formula for (it would count 0): while counting, linears take ``F.linear`` (aten.mm/addmm), which it counts;
- its ``convolution_backward`` formula ignores ``groups``: for the depthwise convolutions of the Conformer and of the
  subsampling it counts the weight gradient as a dense convolution (x channels). Here each gradient of a
  convolution costs what its forward costs (the exact count for both gradients of a non-transposed convolution,
  grouped or not).

``step_flops(model, batch)``: FLOPs of one training step (forward with masking, loss, backward) on ``batch``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from nest_ssl.modules import linear as _linear

aten = torch.ops.aten


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    # grad_input is a transposed convolution and grad_weight a correlation, each with the forward's multiply-adds
    # (w_shape holds in_channels / groups, so grouped convolutions are counted right).
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any]) -> Tuple[int, Dict[str, int]]:
    """(total FLOPs, FLOPs per aten op) of running ``fn()`` once (see the module doc for what is counted)."""
    enabled = _linear.ENABLED
    _linear.ENABLED = False  # the oneDNN op is invisible to the counter; F.linear computes the same products
    try:
        with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: _conv_backward_flop}) as c:
            fn()
    finally:
        _linear.ENABLED = enabled
    per_op = {str(op): int(n) for op, n in c.get_flop_counts().get("Global", {}).items()}
    return int(c.get_total_flops()), per_op


def step_flops(model: torch.nn.Module, batch: Any) -> int:
    """FLOPs of one training step of a NEST model on ``batch`` (audio, audio_len, noisy_audio, noisy_audio_len):
    forward with masking, loss, backward. Gradients are cleared afterwards."""

    def step():
        loss = model.training_output(batch, apply_mask=True).loss
        loss.backward()

    try:
        total, _ = count_flops(step)
    finally:
        model.zero_grad(set_to_none=True)
    return total
