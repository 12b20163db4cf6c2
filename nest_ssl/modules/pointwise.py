"""Kernel-size-1 convolutions as matrix products.

NeMo stores the Conformer's pointwise convolutions and the NEST decoder as Conv1d(k=1) (so do we: the state-dict
names and shapes are NeMo's), but computes them on (B, C, T) tensors. The same sums as a matrix product on
channels-last input skip two layout copies and are faster on CPU, where mkldnn's k=1 convolution and its backward
are slower than a plain matmul (measured in bench/model_step.py). The product is nest_ssl/modules/linear.py's.
"""

import torch
from torch import nn

from nest_ssl.modules.linear import linear


def pointwise_conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """Applies a kernel-size-1 Conv1d to channels-last input: (B, T, C_in) -> (B, T, C_out)."""
    return linear(x, conv.weight.squeeze(-1), conv.bias)
