"""nest_ssl.modules.linear: the oneDNN fp32 path gives F.linear's values and gradients; the fallbacks are F.linear."""

import pytest
import torch
from torch import nn

from nest_ssl.modules import linear as linear_mod
from nest_ssl.errors import UserError
from nest_ssl.modules.linear import Linear, linear, use_onednn

needs_onednn = pytest.mark.skipif(linear_mod._ONEDNN_LINEAR is None, reason="torch built without oneDNN")


@pytest.fixture(autouse=True)
def onednn_backend():
    """Every test runs with the oneDNN backend chosen (whatever this CPU's `auto` gives), then restores it."""
    before = linear_mod._backend
    if linear_mod._ONEDNN_LINEAR is not None:
        assert linear_mod.set_backend("onednn") == "onednn"
    yield
    linear_mod._backend = before


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


def _layouts(rows, cols, g):
    """The same (rows, cols) values as row-major, column-major, padded rows, padded columns, a slice with a zero
    stride source (broadcast rows) and a transposed-twice view."""
    base = torch.randn(rows, cols, generator=g)
    yield "row-major", base.clone()
    yield "column-major", base.t().contiguous().t()
    wide = torch.randn(rows, cols + 3, generator=g)
    wide[:, :cols] = base
    yield "padded rows", wide[:, :cols]
    tall = torch.randn(cols, rows + 5, generator=g)
    tall[:, :rows] = base.t()
    yield "padded columns", tall[:, :rows].t()
    yield "broadcast rows", base[:1].expand(rows, cols)


@needs_onednn
@pytest.mark.parametrize("n, k, m", [(7, 5, 3), (1, 5, 3), (7, 1, 3), (7, 5, 1), (1, 1, 1), (33, 300, 17)])
def test_products_over_stride_patterns(n, k, m):
    # _matmul_nt is handed transposed views (weight.t(), x2d.t()) by the backward: every layout gives a @ b^T.
    g = torch.Generator().manual_seed(n * 100 + k * 10 + m)
    for a_name, a in _layouts(n, k, g):
        for b_name, b in _layouts(m, k, g):
            for bias in (None, torch.randn(m, generator=g)):
                ref = a @ b.t() + (0 if bias is None else bias)
                out = linear_mod._matmul_nt(a, b, bias)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=f"a {a_name}, b {b_name}")


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(linear_mod, "_backend", None)
    monkeypatch.setenv(linear_mod.BACKEND_ENV, "blas")
    assert linear_mod.backend() == "blas"
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    assert not use_onednn(x, w)
    torch.testing.assert_close(linear(x, w), nn.functional.linear(x, w), rtol=0, atol=0)
    monkeypatch.setattr(linear_mod, "_backend", None)
    monkeypatch.setenv(linear_mod.BACKEND_ENV, "auto")
    faster = linear_mod.cpu_vendor() in linear_mod._ONEDNN_FASTER_ON and linear_mod._ONEDNN_LINEAR is not None
    assert linear_mod.backend() == ("onednn" if faster else "blas")
    monkeypatch.setattr(linear_mod, "_backend", None)
    monkeypatch.setenv(linear_mod.BACKEND_ENV, "mkl")
    with pytest.raises(UserError, match="NEST_SSL_LINEAR='mkl': expected one of auto, onednn, blas"):
        linear_mod.backend()


@needs_onednn
def test_onednn_sets_the_main_thread_signal_stack():
    import ctypes

    from nest_ssl.modules.signal_stack import _StackT

    assert linear_mod.set_backend("onednn") == "onednn"
    current = _StackT()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(current)) == 0
    assert not current.ss_flags & 2 and current.ss_size > 0  # SS_DISABLE clear: an alternate stack is set (ours,
    # or faulthandler's, which pytest enables)
