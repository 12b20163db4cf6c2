"""nest_ssl.models.flops: the counted FLOPs of a small network against a hand count (forward + backward)."""

import torch
from torch import nn

from nest_ssl.models.flops import count_flops
from nest_ssl.modules.linear import Linear


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = Linear(8, 16)  # our Linear: oneDNN on the CPU, invisible to torch's counter without the fix
        self.dw = nn.Conv1d(16, 16, kernel_size=5, padding=2, groups=16)  # depthwise: torch over-counts its backward
        self.pw = nn.Conv1d(16, 4, kernel_size=3, padding=1)

    def forward(self, x):
        return self.pw(self.dw(self.lin(x).transpose(1, 2)))


def test_counts_match_a_hand_count():
    torch.manual_seed(0)
    b, t = 3, 50
    model = Small()
    x = torch.randn(b, t, 8)  # no gradient for the input: the linear's backward has its weight gradient only

    def step():
        model(x).square().sum().backward()

    total, per_op = count_flops(step)
    lin = 2 * b * t * 8 * 16
    dw = 2 * b * t * 16 * 1 * 5
    pw = 2 * b * t * 4 * 16 * 3
    hand = lin + lin + dw + 2 * dw + pw + 2 * pw  # forward, then backward (grad_w; grad_in + grad_w for the convs)
    assert total == hand, (total, hand, per_op)
    # the same with the oneDNN path that training on the CPU takes (counted as F.linear, same products)
    assert count_flops(step)[0] == hand
