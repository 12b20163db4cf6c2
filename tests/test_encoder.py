"""ConformerEncoder / ConvSubsampling: sizes, names, lengths, masking and the attention paths.

Big configurations are built on the meta device (no memory, no init cost) and only counted. Forward checks use
tiny encoders. Numerical parity with NeMo itself lives in tests/parity/test_parity_encoder.py.
"""

import math

import pytest
import torch

from nest_ssl.modules.attention import RelPositionalEncoding, RelPositionMultiHeadAttention, rel_shift
from nest_ssl.modules.conformer import (
    ConformerConvolution,
    ConformerEncoder,
    compute_stochastic_depth_drop_probs,
)
from nest_ssl.modules.subsampling import ConvSubsampling

# The encoder block of nest_ssl/conf/nest_fast-conformer.yaml (reference section 1), resolved.
NEST_LARGE = dict(
    feat_in=80, feat_out=-1, n_layers=17, d_model=512, use_bias=True, subsampling="dw_striding",
    subsampling_factor=8, subsampling_conv_channels=256, causal_downsampling=False, ff_expansion_factor=4,
    self_attention_model="rel_pos", n_heads=8, att_context_size=[-1, -1], att_context_style="regular",
    xscaling=True, untie_biases=True, pos_emb_max_len=5000, conv_kernel_size=9, conv_norm_type="batch_norm",
    conv_context_size=None, dropout=0.1, dropout_pre_encoder=0.1, dropout_emb=0.0, dropout_att=0.1,
    stochastic_depth_drop_prob=0.0, stochastic_depth_mode="linear", stochastic_depth_start_layer=1,
)

# Reference section 5 totals that are not encoder-only; used to derive the encoder-only numbers.
FROZEN = 640 * 16 + 1 * 8192 * 16 + 80  # quantizer proj + codebooks + mask embedding = 141,392


def decoder_params(d_model):
    return d_model * 8192 + 8192


def tiny(**over):
    cfg = dict(NEST_LARGE, d_model=64, n_heads=4, n_layers=2, subsampling_conv_channels=32)
    cfg.update(over)
    return ConformerEncoder(**cfg)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def meta_encoder(**over):
    with torch.device("meta"):
        return ConformerEncoder(**dict(NEST_LARGE, **over))


# ----------------------------------------------------------------------------------------- sizes and names


def test_large_parameter_counts_match_reference():
    enc17 = meta_encoder()
    assert n_params(enc17) == 108_762_112
    assert n_params(enc17.pre_encode) == 1_450_496
    assert all(n_params(layer) == 6_312_448 for layer in enc17.layers)
    assert n_params(meta_encoder(n_layers=18)) == 115_074_560


def test_xlarge_and_small_parameter_counts_match_reference_totals():
    # XLarge total 615,844,944 = encoder + decoder(1024->8192) + frozen quantizer/mask.
    xl = meta_encoder(d_model=1024, n_layers=24, use_bias=False, xscaling=False)
    assert n_params(xl) == 615_844_944 - decoder_params(1024) - FROZEN == 607_306_752
    # Small total 14,191,616 (d 176, 16 layers, 4 heads).
    small = meta_encoder(d_model=176, n_layers=16, n_heads=4)
    assert n_params(small) == 14_191_616 - decoder_params(176) - FROZEN


def test_parameter_count_of_options_reference_5_4():
    base = n_params(meta_encoder())
    # tied pos_bias_u/v: one (8, 64) pair shared instead of 17
    assert base - n_params(meta_encoder(untie_biases=False)) == 16 * 1024
    assert base - n_params(meta_encoder(use_bias=False)) == 17 * 9216
    # plain 'striding' subsampler: three full 3x3 convs of 256 channels
    assert n_params(meta_encoder(subsampling="striding").pre_encode) == 2_493_952
    assert n_params(meta_encoder(subsampling_conv_channels=-1).pre_encode) == 3_162_624
    with_proj = meta_encoder(feat_out=256)
    assert n_params(with_proj) - base == 512 * 256 + 256
    assert n_params(meta_encoder(feat_out=512)) == base  # feat_out == d_model: no projection, as in NeMo


def test_state_dict_names_and_shapes_match_nemo():
    sd = meta_encoder().state_dict()
    assert len(sd) == 17 * 40 + 12 == 692
    assert not any("pos_enc" in k for k in sd)  # the sinusoid table is not state
    pre = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("pre_encode.")}
    expected_pre = {"pre_encode.out.weight": (512, 2560), "pre_encode.out.bias": (512,)}
    for i in (0, 2, 5):
        expected_pre[f"pre_encode.conv.{i}.weight"] = (256, 1, 3, 3)
        expected_pre[f"pre_encode.conv.{i}.bias"] = (256,)
    for i in (3, 6):
        expected_pre[f"pre_encode.conv.{i}.weight"] = (256, 256, 1, 1)
        expected_pre[f"pre_encode.conv.{i}.bias"] = (256,)
    assert pre == expected_pre
    # NeMo registers `out` before `conv` in its subsampler: same order here.
    assert list(sd)[:2] == ["pre_encode.out.weight", "pre_encode.out.bias"]

    layer0 = [(k[len("layers.0."):], tuple(v.shape)) for k, v in sd.items() if k.startswith("layers.0.")]
    ff = lambda n: [  # noqa: E731
        (f"norm_feed_forward{n}.weight", (512,)), (f"norm_feed_forward{n}.bias", (512,)),
        (f"feed_forward{n}.linear1.weight", (2048, 512)), (f"feed_forward{n}.linear1.bias", (2048,)),
        (f"feed_forward{n}.linear2.weight", (512, 2048)), (f"feed_forward{n}.linear2.bias", (512,)),
    ]
    attn = [("self_attn.pos_bias_u", (8, 64)), ("self_attn.pos_bias_v", (8, 64))]
    for name in ("q", "k", "v", "out"):
        attn += [(f"self_attn.linear_{name}.weight", (512, 512)), (f"self_attn.linear_{name}.bias", (512,))]
    attn += [("self_attn.linear_pos.weight", (512, 512))]
    expected = (
        ff(1)
        + [("norm_conv.weight", (512,)), ("norm_conv.bias", (512,)),
           ("conv.pointwise_conv1.weight", (1024, 512, 1)), ("conv.pointwise_conv1.bias", (1024,)),
           ("conv.depthwise_conv.weight", (512, 1, 9)), ("conv.depthwise_conv.bias", (512,)),
           ("conv.batch_norm.weight", (512,)), ("conv.batch_norm.bias", (512,)),
           ("conv.batch_norm.running_mean", (512,)), ("conv.batch_norm.running_var", (512,)),
           ("conv.batch_norm.num_batches_tracked", ()),
           ("conv.pointwise_conv2.weight", (512, 512, 1)), ("conv.pointwise_conv2.bias", (512,)),
           ("norm_self_att.weight", (512,)), ("norm_self_att.bias", (512,))]
        + attn
        + ff(2)
        + [("norm_out.weight", (512,)), ("norm_out.bias", (512,))]
    )
    assert layer0 == expected
    assert len(layer0) == 40


def test_tied_biases_are_one_parameter_registered_in_every_layer():
    enc = tiny(untie_biases=False, n_layers=3)
    u = {id(layer.self_attn.pos_bias_u) for layer in enc.layers}
    assert len(u) == 1
    assert all(f"layers.{i}.self_attn.pos_bias_u" in enc.state_dict() for i in range(3))


# ------------------------------------------------------------------------------------------------ forward


def test_output_shapes_and_lengths_are_ceil_of_length_over_8():
    enc = tiny().eval()
    lengths = torch.tensor([203, 1, 7, 9, 15, 17, 100, 161])
    x = torch.randn(len(lengths), 80, 203)
    with torch.no_grad():
        y, y_len = enc(audio_signal=x, length=lengths)
    assert y.shape == (8, 64, math.ceil(203 / 8))
    assert y_len.dtype == torch.int64
    assert y_len.tolist() == [math.ceil(n / 8) for n in lengths.tolist()]
    assert torch.isfinite(y).all()


def test_subsampler_lengths_for_each_factor():
    for factor in (2, 4, 8, 16):
        sub = ConvSubsampling("dw_striding", factor, feat_in=80, feat_out=16, conv_channels=8).eval()
        lengths = torch.arange(1, 40)
        with torch.no_grad():
            y, y_len = sub(torch.randn(len(lengths), 39, 80), lengths)
        assert y_len.tolist() == [math.ceil(n / factor) for n in lengths.tolist()]
        assert y.shape == (39, math.ceil(39 / factor), 16)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_padding_does_not_change_valid_outputs(use_sdpa):
    """Eval mode: an utterance's encoding is the same alone and next to a longer one, whatever the padding holds.

    NeMo 2.7.3 has this property too (masked subsampling, masked attention keys, zeroed depthwise-conv inputs;
    the parity tests measure it). In train mode BatchNorm's batch statistics include the padded frames, in
    NeMo as here, so training outputs do depend on the batch.
    """
    enc = tiny(use_pytorch_sdpa=use_sdpa).eval()
    short = torch.randn(1, 80, 85)
    long = torch.randn(1, 80, 203)
    padded = torch.cat([long, torch.cat([short, 100 * torch.randn(1, 80, 118)], dim=2)])
    with torch.no_grad():
        alone, alone_len = enc(audio_signal=short, length=torch.tensor([85]))
        batch, batch_len = enc(audio_signal=padded, length=torch.tensor([203, 85]))
        long_alone, _ = enc(audio_signal=long, length=torch.tensor([203]))
    n = alone_len.item()
    assert batch_len.tolist() == [26, n] and n == 11
    torch.testing.assert_close(batch[1:, :, :n], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[:1], long_alone, rtol=1e-5, atol=1e-5)


def test_padded_non_finite_values_do_not_leak():
    enc = tiny().eval()
    x = torch.randn(2, 80, 64)
    x[1, :, 40:] = float("inf")
    with torch.no_grad():
        y, y_len = enc(audio_signal=x, length=torch.tensor([64, 40]))
    assert torch.isfinite(y[1, :, : y_len[1]]).all()


def test_sdpa_and_manual_attention_agree():
    torch.manual_seed(1)
    manual = tiny().eval()
    sdpa = tiny(use_pytorch_sdpa=True).eval()
    sdpa.load_state_dict(manual.state_dict())
    x = torch.randn(3, 80, 150)
    lengths = torch.tensor([150, 97, 30])
    with torch.no_grad():
        a, _ = manual(audio_signal=x, length=lengths)
        b, _ = sdpa(audio_signal=x, length=lengths)
    # padded output frames included: both paths give linear_out's bias for fully masked queries
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sdpa_backend_names_are_accepted():
    enc = tiny(use_pytorch_sdpa=True, use_pytorch_sdpa_backends=["MATH"]).eval()
    with torch.no_grad():
        y, _ = enc(audio_signal=torch.randn(1, 80, 40), length=torch.tensor([40]))
    assert y.shape == (1, 64, 5)


def test_batch_of_one_without_length():
    enc = tiny().eval()
    x = torch.randn(1, 80, 77)
    with torch.no_grad():
        y, y_len = enc(audio_signal=x)
        y2, _ = enc(audio_signal=x, length=torch.tensor([77]))
    assert y_len.tolist() == [10]
    torch.testing.assert_close(y, y2, rtol=0, atol=0)


def test_sixty_second_utterance():
    """6000 frames (60 s): longer than a small pos_emb_max_len, so the sinusoid table must grow."""
    enc = tiny(pos_emb_max_len=100).eval()
    with torch.no_grad():
        y, y_len = enc(audio_signal=torch.randn(1, 80, 6000), length=torch.tensor([6000]))
    assert y.shape == (1, 64, 750) and y_len.tolist() == [750]
    assert torch.isfinite(y).all()
    assert enc.pos_enc.pe.shape == (1, 2 * 750 - 1, 64)


def test_training_step_gives_gradients_everywhere():
    enc = tiny(n_layers=2)
    x = torch.randn(2, 80, 96)
    y, _ = enc(audio_signal=x, length=torch.tensor([96, 50]))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # pos_bias_u/v start at zero but still receive gradient
        assert p.grad.abs().sum() > 0, name


def test_feat_out_projection_and_bypass_pre_encode():
    enc = tiny(feat_out=32).eval()
    with torch.no_grad():
        y, _ = enc(audio_signal=torch.randn(2, 80, 40), length=torch.tensor([40, 33]))
        z, z_len = enc(audio_signal=torch.randn(2, 7, 64), length=torch.tensor([7, 5]), bypass_pre_encode=True)
    assert y.shape == (2, 32, 5)
    assert z.shape == (2, 32, 7) and z_len.tolist() == [7, 5]
    with pytest.raises(ValueError, match="feat_in|80"):
        enc(audio_signal=torch.randn(1, 40, 40), length=torch.tensor([40]))


def test_no_subsampling_uses_a_linear_pre_encode():
    enc = tiny(subsampling_factor=1).eval()
    assert isinstance(enc.pre_encode, torch.nn.Linear)
    with torch.no_grad():
        y, y_len = enc(audio_signal=torch.randn(2, 80, 12), length=torch.tensor([12, 9]))
    assert y.shape == (2, 64, 12) and y_len.tolist() == [12, 9]


# -------------------------------------------------------------------------------------- pieces, in detail


def test_rel_shift_aligns_scores_by_distance():
    t = 5
    x = torch.randn(2, 3, t, 2 * t - 1)
    shifted = rel_shift(x)[..., :t]
    for i in range(t):
        for j in range(t):
            # column (t-1) - (i-j) of row i holds distance i - j
            torch.testing.assert_close(shifted[..., i, j], x[..., i, (t - 1) - (i - j)], rtol=0, atol=0)


def test_relative_positional_table_and_xscale():
    pe = RelPositionalEncoding(d_model=8, dropout_rate=0.0, max_len=3, xscale=2.0).eval()
    x = torch.randn(2, 6, 8)
    y, pos = pe(x)
    torch.testing.assert_close(y, 2 * x)
    positions = torch.arange(5, -6, -1, dtype=torch.float32)  # 5 ... -5 for T = 6
    freqs = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float32) / 8)
    expected = torch.zeros(11, 8)
    expected[:, 0::2] = torch.sin(positions[:, None] * freqs)
    expected[:, 1::2] = torch.cos(positions[:, None] * freqs)
    torch.testing.assert_close(pos[0], expected, rtol=1e-5, atol=1e-5)
    # a grown table gives the same rows for a short input as a fresh one
    _, short_pos = pe(x[:, :2])
    fresh = RelPositionalEncoding(d_model=8, dropout_rate=0.0, max_len=3, xscale=2.0)
    _, fresh_pos = fresh(x[:, :2])
    torch.testing.assert_close(short_pos, fresh_pos, rtol=0, atol=0)
    torch.testing.assert_close(short_pos[0], expected[4:7], rtol=1e-5, atol=1e-5)


def test_fully_masked_query_rows_give_the_output_bias():
    attn = RelPositionMultiHeadAttention(n_head=2, n_feat=8, dropout_rate=0.0).eval()
    x = torch.randn(1, 4, 8)
    pos = RelPositionalEncoding(8, 0.0)(x)[1]
    valid = torch.tensor([[True, True, False, False]])
    mask = ~(valid[:, :, None] & valid[:, None, :])
    out = attn(x, x, x, mask, pos)
    torch.testing.assert_close(out[0, 2:], attn.linear_out.bias.expand(2, 8))


def test_causal_conv_context_does_not_look_ahead():
    conv = ConformerConvolution(d_model=8, kernel_size=5, conv_context_size=[4, 0]).eval()
    x = torch.randn(1, 20, 8)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv(x)[:, :12], conv(x2)[:, :12])
        assert not torch.allclose(conv(x)[:, 12:], conv(x2)[:, 12:])
    enc = tiny(conv_context_size="causal", conv_kernel_size=9)
    assert enc.conv_context_size == [8, 0]


def test_layer_norm_conv_module_variant():
    enc = tiny(conv_norm_type="layer_norm").eval()
    assert isinstance(enc.layers[0].conv.batch_norm, torch.nn.LayerNorm)
    with torch.no_grad():
        y, _ = enc(audio_signal=torch.randn(2, 80, 40), length=torch.tensor([40, 20]))
    assert torch.isfinite(y).all()


def test_attention_context_masks():
    enc = tiny(att_context_size=[2, 1])
    pad_mask, att_mask = enc._create_masks([2, 1], torch.tensor([6, 4]), 6, "cpu")
    assert pad_mask.tolist() == [[False] * 6, [False] * 4 + [True] * 2]
    allowed = ~att_mask[0]
    for i in range(6):
        assert [j for j in range(6) if allowed[i, j]] == [j for j in range(6) if -2 <= j - i <= 1]
    assert (att_mask[1, 4:] == True).all() and (att_mask[1, :, 4:] == True).all()  # noqa: E712

    chunked = tiny(att_context_size=[4, 1], att_context_style="chunked_limited")
    _, att_mask = chunked._create_masks([4, 1], torch.tensor([6]), 6, "cpu")
    allowed = ~att_mask[0]
    # chunks of 2 frames; each sees its own chunk and the 2 previous chunks
    assert [j for j in range(6) if allowed[5, j]] == [0, 1, 2, 3, 4, 5]
    assert [j for j in range(6) if allowed[1, j]] == [0, 1]
    assert [j for j in range(6) if allowed[2, j]] == [0, 1, 2, 3]


def test_limited_context_changes_the_output_and_several_contexts_sample():
    torch.manual_seed(0)
    full = tiny().eval()
    limited = tiny(att_context_size=[[1, 0], [-1, -1]], att_context_probs=[0.5, 0.5]).eval()
    limited.load_state_dict(full.state_dict())
    x = torch.randn(1, 80, 120)
    with torch.no_grad():
        a, _ = full(audio_signal=x, length=torch.tensor([120]))
        b, _ = limited(audio_signal=x, length=torch.tensor([120]))  # eval uses the first context
    assert not torch.allclose(a, b)
    assert limited.att_context_size == [1, 0] and limited.att_context_probs == [0.5, 0.5]


def test_subsampling_chunking_gives_the_same_result():
    torch.manual_seed(0)
    sub = ConvSubsampling("dw_striding", 8, feat_in=80, feat_out=16, conv_channels=8).eval()
    x = torch.randn(4, 70, 80)
    lengths = torch.tensor([70, 33, 70, 5])
    with torch.no_grad():
        ref, ref_len = sub(x, lengths)
        sub.change_subsampling_conv_chunking_factor(2)  # batch split
        y, y_len = sub(x, lengths)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
        assert y_len.tolist() == ref_len.tolist()
        # batch of one: split by channels / time instead, still masked
        y1, y1_len = sub(x[1:2], lengths[1:2])
        sub.change_subsampling_conv_chunking_factor(-1)
        r1, _ = sub(x[1:2], lengths[1:2])
        torch.testing.assert_close(y1, r1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(y1[:, : y1_len[0]], ref[1:2, : y1_len[0]], rtol=1e-5, atol=1e-6)


def test_stochastic_depth_schedule():
    assert compute_stochastic_depth_drop_probs(5, 0.4, "linear", 1) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    assert compute_stochastic_depth_drop_probs(5, 0.4, "linear", 3) == pytest.approx([0, 0, 0, 0.2, 0.4])
    assert compute_stochastic_depth_drop_probs(4, 0.4, "uniform", 2) == pytest.approx([0, 0, 0.4, 0.4])
    assert compute_stochastic_depth_drop_probs(3, 0.0) == [0.0, 0.0, 0.0]
    for bad in [dict(stochastic_depth_drop_prob=1.0), dict(stochastic_depth_mode="cubic", stochastic_depth_drop_prob=0.1),
                dict(stochastic_depth_start_layer=0), dict(stochastic_depth_start_layer=3)]:
        with pytest.raises(ValueError):
            tiny(**bad)


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    enc = tiny(n_layers=3, stochastic_depth_drop_prob=0.5, stochastic_depth_mode="uniform", dropout=0.0,
               dropout_pre_encoder=0.0, dropout_att=0.0)
    x = torch.randn(1, 80, 40)
    enc.eval()
    with torch.no_grad():
        a, _ = enc(audio_signal=x)
        b, _ = enc(audio_signal=x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    enc.train()
    outs = []
    with torch.no_grad():
        for seed in (0, 0, 1, 2, 3, 4, 5, 6, 7):
            torch.manual_seed(seed)
            outs.append(enc(audio_signal=x)[0])
    # the drop decisions come from torch's global RNG: same seed, same layers dropped
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    # two droppable layers at p=0.5: four possible outputs; eight seeds must show more than one
    distinct = []
    for o in outs:
        if not any(torch.allclose(o, d) for d in distinct):
            distinct.append(o)
    assert len(distinct) > 1


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(causal_downsampling=True), "causal_downsampling"),
        (dict(reduction="pooling", reduction_position=0, reduction_factor=2), "reduction"),
        (dict(self_attention_model="abs_pos"), "self_attention_model"),
        (dict(self_attention_model="rel_pos_local_attn", att_context_size=[8, 8]), "self_attention_model"),
        (dict(subsampling="vggnet"), "vggnet"),
        (dict(subsampling="stacking"), "stacking"),
    ],
)
def test_unimplemented_options_raise_naming_the_key(kwargs, key):
    with pytest.raises(NotImplementedError, match=key):
        tiny(**kwargs)


def test_nemo_keys_without_effect_are_accepted():
    # Defaults NeMo passes around; with rel_pos, global tokens have no effect in NeMo either.
    enc = tiny(sync_max_audio_length=False, global_tokens=0, subsampling_conv_chunking_factor=-1,
               reduction="pooling", reduction_factor=1, dropout_emb=0.1)
    assert enc.pos_enc.dropout_emb is not None


def test_streaming_caches_are_rejected():
    enc = tiny().eval()
    with pytest.raises(NotImplementedError, match="cache"):
        enc(audio_signal=torch.randn(1, 80, 16), length=torch.tensor([16]), cache_last_channel=torch.zeros(1))


def test_fast_cpu_dropout_has_torchs_distribution_and_gradient():
    from nest_ssl.modules.dropout import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.1).train()
    x = torch.randn(64, 128, 256, requires_grad=True)
    torch.manual_seed(1)
    y = drop(x)
    kept = y != 0
    frac = kept.float().mean().item()
    assert abs(frac - 0.9) < 0.002  # 2M elements: the standard error is 2e-4
    assert torch.allclose(y[kept], x[kept] / 0.9)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.9)
    # reproducible from torch's seed, and different from the next draw
    torch.manual_seed(1)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)
    drop.eval()
    assert drop(x) is x


def test_fast_cpu_dropout_mask_has_p_in_every_position_and_odd_sizes():
    from nest_ssl.modules.dropout import _drop_mask

    torch.manual_seed(0)
    mask = _drop_mask((2001, 1001), 0.25, "cpu")  # odd number of elements: the last int64 draw is half used
    flat = mask.view(-1).float()
    # elements from low and high 32-bit words alternate: both must be dropped with probability p
    for part in (flat[0::2], flat[1::2]):
        assert abs(part.mean().item() - 0.25) < 0.003  # 1M draws each: standard error 4e-4
    assert _drop_mask((3, 5, 7), 0.5, "cpu").shape == (3, 5, 7)
