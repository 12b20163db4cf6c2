"""nest_ssl.modules.linear: the oneDNN fp32 path gives F.linear's values and gradients; the fallbacks are F.linear."""

import pytest
import torch
from torch import nn

from nest_ssl.modules import linear as linear_mod
from nest_ssl.modules.linear import Linear, linear, use_onednn

needs_onednn = pytest.mark.skipif(linear_mod._ONEDNN_LINEAR is None, reason="torch built without oneDNN")


def _grads(fn, x, w, b, g):
    y = fn(x, w, b)
    return (y, *torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g))


@needs_onednn
@pytest.mark.parametrize("shape", [(2, 37, 64), (5, 64), (3, 2, 4, 64)])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_match_f_linear(shape, contiguous, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    if not contiguous:  # the same values in a transposed layout
        x = x.movedim(-1, 0).contiguous().movedim(0, -1)
    x.requires_grad_()
    w = torch.randn(48, 64, generator=g, requires_grad=True)
    b = torch.randn(48, generator=g, requires_grad=True) if bias else None
    assert use_onednn(x, w)
    y = linear(x, w, b)
    grad = torch.randn(y.shape, generator=g)
    ours = _grads(linear, x, w, b, grad)
    ref = _grads(nn.functional.linear, x, w, b, grad)
    for a, r in zip(ours, ref):
        assert a.shape == r.shape
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_expanded_gradient_and_frozen_input():
    # sum() hands the backward a zero-stride gradient; an input without grad gets none.
    x = torch.randn(10, 32)
    w = torch.randn(16, 32, requires_grad=True)
    linear(x, w).sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0).expand(16, 32).contiguous(), rtol=1e-5, atol=1e-5)


def test_fallbacks_are_f_linear():
    x = torch.randn(4, 8)
    w = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_onednn(x, w)
        assert linear(x, w).dtype == torch.bfloat16
    assert not use_onednn(x.double(), w.double())
    torch.testing.assert_close(linear(x.double(), w.double()), nn.functional.linear(x.double(), w.double()))
    assert not use_onednn(x[:0], w)
    assert linear(x[:0], w).shape == (0, 3)


def test_module_is_nn_linear_with_its_init_and_names():
    torch.manual_seed(3)
    ours = Linear(8, 5)
    torch.manual_seed(3)
    ref = nn.Linear(8, 5)
    assert isinstance(ours, nn.Linear)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(2, 8)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
