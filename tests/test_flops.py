"""FLOPs counted from the model (nest_ssl/models/flops.py) against counts made by hand, 2*M*N*K per matmul
(tests/test_model_flops.py: our Linear and a depthwise convolution's backward)."""

import pytest
import torch
from torch import nn

from nest_ssl.config import load_config
from nest_ssl.models import NESTModel
from nest_ssl.models.flops import count_flops as _count_flops
from nest_ssl.models.flops import dense_peak_tflops, flops_per_audio_second, step_flops, synthetic_batch


def count_flops(fn):
    return _count_flops(fn)[0]


def test_linear_stack_forward_and_backward_by_hand():
    B, T, a, b, c = 3, 7, 16, 32, 8
    net = nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c))
    x = torch.randn(B, T, a)  # no gradient wanted for the input: the first layer's backward has no dX product
    M = B * T
    fwd = 2 * M * a * b + 2 * M * b * c
    assert count_flops(lambda: net(x)) == fwd
    # backward: layer 2 has dW and dX (2 products), layer 1 dW only
    bwd = 2 * (2 * M * b * c) + 2 * M * a * b
    assert count_flops(lambda: net(x).sum().backward()) == fwd + bwd
    x.requires_grad_(True)  # now layer 1 needs dX too
    assert count_flops(lambda: net(x).sum().backward()) == fwd + bwd + 2 * M * a * b


def test_conformer_layer_forward_by_hand():
    """One layer of the tiny NEST Conformer: feed-forwards, convolution module and relative-position attention."""
    model = NESTModel.from_config(load_config(config_name="nest_tiny").model).eval()
    enc = model.encoder
    layer = enc.layers[0]
    d, K = enc.d_model, layer.conv.depthwise_conv.kernel_size[0]
    B, T = 2, 11
    x = torch.randn(B, T, d)
    with torch.no_grad():
        x, pos_emb = enc.pos_enc(x)
        counted = count_flops(lambda: layer(x, att_mask=None, pos_emb=pos_emb))
    BT = B * T
    feed_forwards = 2 * (2 * BT * d * 4 * d + 2 * BT * 4 * d * d)
    conv_module = 2 * BT * d * 2 * d + 2 * BT * d * K + 2 * BT * d * d  # pointwise (GLU doubles), depthwise, pointwise
    projections = 4 * 2 * BT * d * d + 2 * (2 * T - 1) * d * d  # q, k, v, out; the position embeddings
    scores = 2 * BT * T * d + 2 * BT * (2 * T - 1) * d + 2 * BT * T * d  # q.k, q.pos, attention x v
    assert counted == feed_forwards + conv_module + projections + scores


def test_training_step_count_scales_and_is_repeatable():
    model = NESTModel.from_config(load_config(config_name="nest_tiny").model)
    batch = synthetic_batch(2, 16000)
    first = step_flops(model, batch)
    assert first == step_flops(model, batch) > 0  # a fixed seed: the same masks, the same decoder tokens
    assert all(p.grad is None for p in model.parameters()) and model.training
    # The encoder alone is deterministic in shape: twice the batch, twice the FLOPs, but for the projection of the
    # relative positions (2T'-1 of them, shared by the batch) that every layer makes once
    with torch.no_grad():
        one = count_flops(lambda: model.encoder(audio_signal=torch.randn(1, 80, 200), length=torch.tensor([200])))
        two = count_flops(lambda: model.encoder(audio_signal=torch.randn(2, 80, 200), length=torch.tensor([200, 200])))
    enc = model.encoder
    t = 200 // enc.subsampling_factor
    assert two == 2 * one - len(enc.layers) * 2 * (2 * t - 1) * enc.d_model ** 2
    per_second = flops_per_audio_second(model, seconds=1.0, batch_size=2)
    assert per_second == pytest.approx(first / 2.0)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA A10G", 125.0),
    ("Tesla V100-SXM2-32GB", 125.0), ("cpu", None), (None, None), ("NVIDIA GeForce GTX 1080", None),
])
def test_dense_peaks(name, peak):
    assert dense_peak_tflops(name) == peak
