"""Fast-Conformer encoder of NEST, numerically and state-dict compatible with NeMo 2.7.3's `ConformerEncoder`.

    features (B, feat_in, T) --pre_encode (conv subsampling x8)--> (B, T', d_model)
      --pos_enc: x * sqrt(d_model) (xscaling), dropout_pre_encoder; relative sinusoids for T'--> 
      --n_layers x ConformerLayer--> (B, d_model, T') and lengths ceil(L/8)

ConformerLayer (macaron, post-LN per layer):
    x = x + 0.5 * drop(FF1(LN(x)))
    x = x + drop(RelPosMHA(LN(x)))
    x = x + drop(Conv(LN(x)))        Conv: pointwise(d->2d), GLU, zero padding, depthwise k, norm, SiLU, pointwise
    x = x + 0.5 * drop(FF2(LN(x)))
    x = LN(x)

Submodule and parameter names, registration order and default initialisation equal NeMo's, so NeMo state dicts
load with strict=True. NeMo constructor keys we accept but do not implement raise NotImplementedError naming the
key; keys that have no effect in the configuration given (as in NeMo) are accepted.
"""

import contextlib
import random
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nest_ssl.modules.attention import RelPositionalEncoding, RelPositionMultiHeadAttention
from nest_ssl.modules.dropout import Dropout
from nest_ssl.modules.linear import Linear
from nest_ssl.modules.pointwise import pointwise_conv
from nest_ssl.modules.subsampling import ConvSubsampling

__all__ = [
    "ConformerEncoder",
    "ConformerLayer",
    "ConformerFeedForward",
    "ConformerConvolution",
    "RelPositionalEncoding",
    "RelPositionMultiHeadAttention",
    "compute_stochastic_depth_drop_probs",
]

# Activations NeMo's conv module accepts by name for its pointwise stage instead of GLU.
_POINTWISE_ACTIVATIONS = {
    "identity": nn.Identity,
    "hardtanh": nn.Hardtanh,
    "relu": nn.ReLU,
    "selu": nn.SELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


def compute_stochastic_depth_drop_probs(
    num_layers, stochastic_depth_drop_prob=0.0, stochastic_depth_mode="linear", stochastic_depth_start_layer=1
):
    """Per-layer drop probabilities (NeMo's schedule).

    The first `start_layer` layers are never dropped; of the remaining L = num_layers - start_layer, layer l
    (1-based) gets p * l / L in 'linear' mode (the last layer gets p) or p in 'uniform' mode.
    """
    if not 0.0 <= stochastic_depth_drop_prob < 1.0:
        raise ValueError("stochastic_depth_drop_prob has to be in [0, 1).")
    if not 1 <= stochastic_depth_start_layer <= num_layers:
        raise ValueError("stochastic_depth_start_layer has to be in [1, num layers].")
    probs = [0.0] * stochastic_depth_start_layer
    n = num_layers - stochastic_depth_start_layer
    if n > 0:
        if stochastic_depth_mode == "linear":
            probs += [layer / n * stochastic_depth_drop_prob for layer in range(1, n + 1)]
        elif stochastic_depth_mode == "uniform":
            probs += [stochastic_depth_drop_prob] * n
        else:
            raise ValueError(
                f'stochastic_depth_mode has to be one of ["linear", "uniform"]. Current value: {stochastic_depth_mode}'
            )
    return probs


class ConformerFeedForward(nn.Module):
    """Linear(d -> d_ff) -> SiLU -> dropout -> Linear(d_ff -> d)."""

    def __init__(self, d_model, d_ff, dropout, activation=None, use_bias=True):
        super().__init__()
        self.d_model = d_model
        self.d_ff = d_ff
        self.use_bias = use_bias
        self.linear1 = Linear(d_model, d_ff, bias=use_bias)
        self.activation = activation if activation is not None else nn.SiLU()  # NeMo's Swish is SiLU
        self.dropout = Dropout(p=dropout)
        self.linear2 = Linear(d_ff, d_model, bias=use_bias)

    def forward(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class _FusedBatchNorm1d(nn.Module):
    """NeMo's 'fused_batch_norm': a per-channel affine map (a BatchNorm folded with its running statistics)."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        if x.dim() == 3:
            return x * self.weight.unsqueeze(-1) + self.bias.unsqueeze(-1)
        return x * self.weight + self.bias


class ConformerConvolution(nn.Module):
    """Conformer convolution module on (B, T, d): pointwise conv to 2d, GLU, zero the padded frames, depthwise
    conv (kernel_size, explicit left/right padding = conv_context_size), norm, SiLU, pointwise conv to d.

    Padded frames are zeroed before the depthwise conv so that they do not leak into valid frames; the norm
    (BatchNorm by default) still sees them, as in NeMo, so batch statistics include padding.
    """

    def __init__(
        self, d_model, kernel_size, norm_type="batch_norm", conv_context_size=None, pointwise_activation="glu_",
        use_bias=True,
    ):
        super().__init__()
        if (kernel_size - 1) % 2:
            raise ValueError(f"conv_kernel_size must be odd, got {kernel_size}")
        self.d_model = d_model
        self.kernel_size = kernel_size
        self.norm_type = norm_type
        self.use_bias = use_bias
        if conv_context_size is None:
            conv_context_size = (kernel_size - 1) // 2
        if isinstance(conv_context_size, int):
            conv_context_size = [conv_context_size, conv_context_size]
        conv_context_size = list(conv_context_size)
        if len(conv_context_size) != 2 or sum(conv_context_size) != kernel_size - 1:
            raise ValueError(f"Invalid conv_context_size {conv_context_size} for kernel size {kernel_size}")
        self._left_padding, self._right_padding = conv_context_size

        if pointwise_activation in _POINTWISE_ACTIVATIONS:
            # NeMo keeps pointwise_conv1 at 2d outputs here, so the depthwise stage runs on 2d channels.
            self.pointwise_activation = _POINTWISE_ACTIVATIONS[pointwise_activation]()
            if hasattr(self.pointwise_activation, "inplace"):
                self.pointwise_activation.inplace = True
            dw_channels = 2 * d_model
        elif pointwise_activation == "glu_":
            self.pointwise_activation = pointwise_activation
            dw_channels = d_model
        else:
            raise ValueError(f"Unknown pointwise_activation {pointwise_activation!r}")

        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, kernel_size=1, bias=use_bias)
        # padding=0 with an explicit pad in forward, exactly like NeMo's CausalConv1D (allows asymmetric context).
        self.depthwise_conv = nn.Conv1d(
            dw_channels, dw_channels, kernel_size=kernel_size, groups=dw_channels, padding=0, bias=use_bias
        )
        if norm_type == "batch_norm":
            self.batch_norm = nn.BatchNorm1d(dw_channels)
        elif norm_type == "instance_norm":
            self.batch_norm = nn.InstanceNorm1d(dw_channels)
        elif norm_type == "layer_norm":
            self.batch_norm = nn.LayerNorm(dw_channels)
        elif norm_type == "fused_batch_norm":
            self.batch_norm = _FusedBatchNorm1d(dw_channels)
        elif norm_type.startswith("group_norm"):
            # NeMo sizes the group norm by d_model (not the depthwise width); kept for checkpoint compatibility.
            self.batch_norm = nn.GroupNorm(num_groups=int(norm_type[len("group_norm"):]), num_channels=d_model)
        else:
            raise ValueError(f"conv_norm_type={norm_type} is not valid!")
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(dw_channels, d_model, kernel_size=1, bias=use_bias)

    def forward(self, x, pad_mask=None, cache=None):
        """x (B, T, d), pad_mask (B, T) True at padding -> (B, T, d)."""
        if cache is not None:
            raise NotImplementedError("cache-aware streaming convolution (cache_last_time) is not implemented")
        # The two pointwise convolutions run channels-last as matrix products (see nest_ssl/modules/pointwise.py).
        x = pointwise_conv(self.pointwise_conv1, x)
        if self.pointwise_activation == "glu_":
            x = nn.functional.glu(x, dim=-1)
        else:
            x = self.pointwise_activation(x)
        if pad_mask is not None:
            x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        x = self._depthwise_channels_last(x)
        if self.norm_type in ("batch_norm", "fused_batch_norm"):
            # Per-channel statistics over (B, T) are those of the (B * T, C) rows: BatchNorm1d's 2-D form.
            b, t, c = x.shape
            x = self.batch_norm(x.reshape(b * t, c)).view(b, t, c)
        elif self.norm_type == "layer_norm":
            x = self.batch_norm(x)
        else:  # instance / group norm normalise over time per channel: they need (B, C, T)
            x = self.batch_norm(x.transpose(1, 2)).transpose(1, 2)
        return pointwise_conv(self.pointwise_conv2, self.activation(x))

    def _depthwise_channels_last(self, x):
        """The depthwise conv on (B, T, C) -> (B, T', C), without the (B, C, T) copies.

        The same Conv1d (weights, padding, sums) run as a 1-row 2-D convolution on channels-last memory: oneDNN's
        depthwise kernel for that layout is several times faster on the CPU than its (B, C, T) one (measured in
        bench/model_step.py's step), and the result is already (B, T', C) for the norm and pointwise_conv2.
        """
        x = nn.functional.pad(x, (0, 0, self._left_padding, self._right_padding))  # zero frames around T
        x = x.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (B, C, 1, T): a view
        conv = self.depthwise_conv
        y = nn.functional.conv2d(x, conv.weight.unsqueeze(2), conv.bias, groups=conv.groups)  # (B, C, 1, T')
        return y.squeeze(2).transpose(1, 2)


class ConformerLayer(nn.Module):
    """One Fast-Conformer block (see the module docstring). forward(x (B,T,d), att_mask (B,T,T) True = blocked,
    pos_emb (1,2T-1,d), pad_mask (B,T) True = padding) -> (B,T,d)."""

    def __init__(
        self,
        d_model,
        d_ff,
        self_attention_model="rel_pos",
        global_tokens=0,
        global_tokens_spacing=1,
        global_attn_separate=False,
        n_heads=4,
        conv_kernel_size=31,
        conv_norm_type="batch_norm",
        conv_context_size=None,
        dropout=0.1,
        dropout_att=0.1,
        pos_bias_u=None,
        pos_bias_v=None,
        att_context_size=(-1, -1),
        use_bias=True,
        use_pytorch_sdpa=False,
        use_pytorch_sdpa_backends=None,
    ):
        super().__init__()
        if self_attention_model != "rel_pos":
            raise NotImplementedError(
                f"self_attention_model={self_attention_model!r} is not implemented in nest-ssl (only 'rel_pos')"
            )
        self.self_attention_model = self_attention_model
        self.n_heads = n_heads
        self.use_pytorch_sdpa = use_pytorch_sdpa
        self.use_pytorch_sdpa_backends = list(use_pytorch_sdpa_backends or [])
        self.fc_factor = 0.5  # macaron: each of the two FF modules contributes half a residual

        # Registration order = NeMo's: it fixes the state-dict order and how default init consumes the RNG.
        self.norm_feed_forward1 = nn.LayerNorm(d_model)
        self.feed_forward1 = ConformerFeedForward(d_model=d_model, d_ff=d_ff, dropout=dropout, use_bias=use_bias)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConformerConvolution(
            d_model=d_model, kernel_size=conv_kernel_size, norm_type=conv_norm_type,
            conv_context_size=conv_context_size, use_bias=use_bias,
        )
        self.norm_self_att = nn.LayerNorm(d_model)
        self.self_attn = RelPositionMultiHeadAttention(
            n_head=n_heads, n_feat=d_model, dropout_rate=dropout_att, pos_bias_u=pos_bias_u, pos_bias_v=pos_bias_v,
            max_cache_len=att_context_size[0], use_bias=use_bias, use_pytorch_sdpa=use_pytorch_sdpa,
            use_pytorch_sdpa_backends=self.use_pytorch_sdpa_backends,
        )
        self.norm_feed_forward2 = nn.LayerNorm(d_model)
        self.feed_forward2 = ConformerFeedForward(d_model=d_model, d_ff=d_ff, dropout=dropout, use_bias=use_bias)
        self.dropout = Dropout(dropout)  # one residual dropout shared by the four branches
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x, att_mask=None, pos_emb=None, pad_mask=None, cache_last_channel=None, cache_last_time=None):
        if cache_last_channel is not None or cache_last_time is not None:
            raise NotImplementedError("cache-aware streaming (cache_last_channel/cache_last_time) is not implemented")
        residual = x + self.dropout(self.feed_forward1(self.norm_feed_forward1(x))) * self.fc_factor
        x = self.norm_self_att(residual)
        x = self.self_attn(query=x, key=x, value=x, mask=att_mask, pos_emb=pos_emb)
        residual = residual + self.dropout(x)
        x = self.conv(self.norm_conv(residual), pad_mask=pad_mask)
        residual = residual + self.dropout(x)
        x = self.feed_forward2(self.norm_feed_forward2(residual))
        residual = residual + self.dropout(x) * self.fc_factor
        return self.norm_out(residual)


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module):
    """BatchNorm in training mode whose running statistics (and num_batches_tracked) do not move.

    The recomputation of a checkpointed layer is a second forward of the same batch: it must normalise with the
    same batch statistics, and save the same tensors for the backward, but must not update the running averages a
    second time. A momentum of 0 makes the update `running * 1 + batch * 0`, which leaves every finite value as it
    is; the step counter is put back afterwards (autograd does not save it), copied on the device, never read.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                with torch.no_grad():
                    m.num_batches_tracked.copy_(tracked)


def _recompute_contexts(layer: nn.Module):
    """torch.utils.checkpoint's context_fn: nothing special on the forward, frozen BatchNorm buffers on recompute."""
    return contextlib.nullcontext(), _frozen_running_stats(layer)


def _to_list(value):
    """ListConfig / tuple -> plain (nested) list, so omegaconf nodes from a yaml work like NeMo's."""
    if isinstance(value, (str, int, float)) or value is None:
        return value
    return [_to_list(v) for v in value]


class ConformerEncoder(nn.Module):
    """NeMo 2.7.3's ConformerEncoder (same constructor keys and defaults, same forward).

    forward(audio_signal (B, feat_in, T), length (B,)) -> (encoded (B, d_model or feat_out, T'), lengths int64)
    with T' = ceil(T / subsampling_factor) and lengths ceil(length / subsampling_factor).

    Implemented: subsampling 'dw_striding' / 'striding' (or none: a Linear), rel_pos attention with tied or
    untied biases, att_context_size (regular and chunked_limited, several sizes with att_context_probs),
    xscaling, every dropout, stochastic depth, conv_context_size (symmetric, asymmetric, 'causal'), conv norm
    types, feat_out projection, use_pytorch_sdpa, bypass_pre_encode.
    Not implemented (NotImplementedError): causal_downsampling, reduction, self_attention_model other than
    rel_pos, subsampling 'vggnet'/'stacking*'/'*conv1d', cache-aware streaming inputs.
    global_tokens* only act in NeMo's rel_pos_local_attn, so with rel_pos they are accepted and ignored as NeMo
    does. sync_max_audio_length is accepted; no collective is needed (see RelPositionalEncoding).
    Ours: `activation_checkpointing` (default False; `+model.encoder.activation_checkpointing=true`) recomputes
    each Conformer layer in the backward instead of storing its activations (training with gradients only).
    """

    def __init__(
        self,
        feat_in,
        n_layers,
        d_model,
        feat_out=-1,
        causal_downsampling=False,
        subsampling="striding",
        subsampling_factor=4,
        subsampling_conv_chunking_factor=1,
        subsampling_conv_channels=-1,
        reduction=None,
        reduction_position=None,
        reduction_factor=1,
        ff_expansion_factor=4,
        self_attention_model="rel_pos",
        n_heads=4,
        att_context_size=None,
        att_context_probs=None,
        att_context_style="regular",
        xscaling=True,
        untie_biases=True,
        pos_emb_max_len=5000,
        conv_kernel_size=31,
        conv_norm_type="batch_norm",
        conv_context_size=None,
        use_bias=True,
        dropout=0.1,
        dropout_pre_encoder=0.1,
        dropout_emb=0.1,
        dropout_att=0.0,
        stochastic_depth_drop_prob: float = 0.0,
        stochastic_depth_mode: str = "linear",
        stochastic_depth_start_layer: int = 1,
        global_tokens: int = 0,
        global_tokens_spacing: int = 1,
        global_attn_separate: bool = False,
        use_pytorch_sdpa: bool = False,
        use_pytorch_sdpa_backends=None,
        sync_max_audio_length: bool = True,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        if self_attention_model != "rel_pos":
            if self_attention_model in ("rel_pos_local_attn", "abs_pos"):
                raise NotImplementedError(
                    f"self_attention_model={self_attention_model!r} is not implemented in nest-ssl (only 'rel_pos')"
                )
            raise ValueError(f"Not valid self_attention_model: {self_attention_model!r}!")
        if reduction and reduction_factor > 1:
            raise NotImplementedError(f"reduction={reduction!r} (reduction_factor={reduction_factor}) is not implemented")
        if att_context_style not in ("regular", "chunked_limited"):
            raise ValueError(f"att_context_style must be 'regular' or 'chunked_limited', got {att_context_style!r}")

        self.d_model = d_model
        self.n_layers = n_layers
        self._feat_in = feat_in
        self.att_context_style = att_context_style
        self.subsampling_factor = subsampling_factor
        self.subsampling_conv_chunking_factor = subsampling_conv_chunking_factor
        self.self_attention_model = self_attention_model
        self.global_tokens = global_tokens
        self.global_attn_separate = global_attn_separate
        self.global_tokens_spacing = global_tokens_spacing
        self.use_pytorch_sdpa = use_pytorch_sdpa
        self.use_pytorch_sdpa_backends = list(use_pytorch_sdpa_backends or [])
        self.sync_max_audio_length = sync_max_audio_length
        # Ours (NeMo's ConformerEncoder has no such key; the .nemo export leaves it out): a plain attribute, so
        # state-dict names and parameter counts do not depend on it.
        self.activation_checkpointing = bool(activation_checkpointing)

        (self.att_context_size_all, self.att_context_size, self.att_context_probs, self.conv_context_size) = (
            self._calc_context_sizes(att_context_size, att_context_probs, att_context_style, conv_context_size,
                                     conv_kernel_size)
        )
        self.xscale = d_model**0.5 if xscaling else None

        if subsampling_conv_channels == -1:
            subsampling_conv_channels = d_model
        if subsampling and subsampling_factor > 1:
            self.pre_encode = ConvSubsampling(
                subsampling=subsampling,
                subsampling_factor=subsampling_factor,
                feat_in=feat_in,
                feat_out=d_model,
                conv_channels=subsampling_conv_channels,
                subsampling_conv_chunking_factor=subsampling_conv_chunking_factor,
                activation=nn.ReLU(True),
                is_causal=causal_downsampling,
            )
        else:
            self.pre_encode = Linear(feat_in, d_model)
        self.reduction_subsampling = None
        self.reduction_position = None

        # Tied relative-position biases: one pair shared by all layers (registered in each layer's attention,
        # not on the encoder, exactly as NeMo does, so state-dict keys are layers.{i}.self_attn.pos_bias_*).
        if not untie_biases:
            d_head = d_model // n_heads
            pos_bias_u = nn.Parameter(torch.zeros(n_heads, d_head))
            pos_bias_v = nn.Parameter(torch.zeros(n_heads, d_head))
        else:
            pos_bias_u = pos_bias_v = None

        self.pos_emb_max_len = pos_emb_max_len
        self.pos_enc = RelPositionalEncoding(
            d_model=d_model, dropout_rate=dropout_pre_encoder, max_len=pos_emb_max_len, xscale=self.xscale,
            dropout_rate_emb=dropout_emb,
        )
        self.layers = nn.ModuleList(
            ConformerLayer(
                d_model=d_model,
                d_ff=d_model * ff_expansion_factor,
                self_attention_model=self_attention_model,
                global_tokens=global_tokens,
                global_tokens_spacing=global_tokens_spacing,
                global_attn_separate=global_attn_separate,
                n_heads=n_heads,
                conv_kernel_size=conv_kernel_size,
                conv_norm_type=conv_norm_type,
                conv_context_size=self.conv_context_size,
                dropout=dropout,
                dropout_att=dropout_att,
                pos_bias_u=pos_bias_u,
                pos_bias_v=pos_bias_v,
                att_context_size=self.att_context_size,
                use_bias=use_bias,
                use_pytorch_sdpa=use_pytorch_sdpa,
                use_pytorch_sdpa_backends=self.use_pytorch_sdpa_backends,
            )
            for _ in range(n_layers)
        )
        if feat_out > 0 and feat_out != d_model:
            self.out_proj = Linear(d_model, feat_out)
            self._feat_out = feat_out
        else:
            self.out_proj = None
            self._feat_out = d_model
        self.max_audio_length = pos_emb_max_len
        self.use_pad_mask = True
        self.layer_drop_probs = compute_stochastic_depth_drop_probs(
            n_layers, stochastic_depth_drop_prob, stochastic_depth_mode, stochastic_depth_start_layer
        )

    @property
    def feat_out(self):
        return self._feat_out

    @staticmethod
    def _calc_context_sizes(att_context_size, att_context_probs, att_context_style, conv_context_size,
                            conv_kernel_size):
        """Normalise the context arguments like NeMo: a list of [left, right] attention contexts (the first is
        the default at eval), their sampling probabilities, and the conv [left, right] context."""
        att_context_size = _to_list(att_context_size)
        if att_context_size:
            sizes = list(att_context_size)
            if isinstance(sizes[0], int):
                sizes = [sizes]
            for i, (left, right) in enumerate(sizes):
                if att_context_style == "chunked_limited":
                    if left > 0 and left % (right + 1) > 0:
                        raise ValueError(f"att_context_size[{i}][0] % (att_context_size[{i}][1] + 1) should be zero!")
                    if right < 0 and len(sizes) <= 1:
                        raise ValueError(
                            f"Right context (att_context_size[{i}][1]) can not be unlimited for chunked_limited style!"
                        )
        else:
            sizes = [[-1, -1]]
        att_context_probs = _to_list(att_context_probs)
        if att_context_probs:
            if len(att_context_probs) != len(sizes):
                raise ValueError("The size of the att_context_probs should be the same as att_context_size.")
            probs = list(att_context_probs)
            if sum(probs) != 1:
                raise ValueError("The sum of numbers in att_context_probs should be equal to one to be a distribution.")
        else:
            probs = [1.0 / len(sizes)] * len(sizes)

        conv_context_size = _to_list(conv_context_size)
        if conv_context_size is None:
            conv_context_size = [(conv_kernel_size - 1) // 2, (conv_kernel_size - 1) // 2]
        elif conv_context_size == "causal":
            conv_context_size = [conv_kernel_size - 1, 0]
        elif not isinstance(conv_context_size, list) or len(conv_context_size) != 2:
            raise ValueError("Invalid conv_context_size! It should be the string 'causal' or a list of two integers.")
        elif conv_context_size[0] + conv_context_size[1] + 1 != conv_kernel_size:
            raise ValueError(f"Invalid conv_context_size: {conv_context_size}!")
        return sizes, sizes[0], probs, conv_context_size

    def update_max_seq_length(self, seq_length: int, device):
        """Grow the positional table to `seq_length` frames (local, deterministic; see RelPositionalEncoding)."""
        if seq_length > self.max_audio_length:
            self.set_max_audio_length(seq_length)

    def set_max_audio_length(self, max_audio_length):
        self.max_audio_length = max_audio_length
        device = next(self.parameters()).device
        if device.type != "meta":
            self.pos_enc.extend_pe(max_audio_length, device)

    def enable_pad_mask(self, on=True):
        previous, self.use_pad_mask = self.use_pad_mask, on
        return previous

    def change_subsampling_conv_chunking_factor(self, subsampling_conv_chunking_factor: int):
        if not isinstance(self.pre_encode, ConvSubsampling):
            raise ValueError("Model pre_encoder doesn't have a change_subsampling_conv_chunking_factor method")
        self.pre_encode.change_subsampling_conv_chunking_factor(subsampling_conv_chunking_factor)
        self.subsampling_conv_chunking_factor = subsampling_conv_chunking_factor

    def _create_masks(self, att_context_size, padding_length, max_audio_length, device):
        """pad_mask (B, T') True at padding; att_mask (B, T', T') True where attention is blocked: the query or
        the key is padding, or the key is outside the query's allowed context."""
        valid = torch.arange(max_audio_length, device=device).unsqueeze(0) < padding_length.unsqueeze(-1)
        allowed = valid.unsqueeze(1) & valid.unsqueeze(2)  # (B, T', T')
        left, right = att_context_size
        if self.att_context_style == "regular" or right == -1:
            # chunked_limited with unlimited right context only limits the left side, like regular.
            if left >= 0 or (self.att_context_style == "regular" and right >= 0):
                ones = torch.ones(max_audio_length, max_audio_length, dtype=torch.bool, device=device)
                context = ones.triu(-left) if left >= 0 else ones
                if self.att_context_style == "regular" and right >= 0:
                    context = context.tril(right)
                allowed = allowed & context.unsqueeze(0)
        else:
            # chunked_limited: frames are grouped in chunks of right+1; a chunk sees itself and left//(right+1)
            # previous chunks (all previous ones when left < 0).
            chunk_size = right + 1
            left_chunks = left // chunk_size if left >= 0 else 10000
            chunk = torch.div(torch.arange(max_audio_length, device=device), chunk_size, rounding_mode="trunc")
            diff = chunk.unsqueeze(1) - chunk.unsqueeze(0)
            allowed = allowed & ((diff <= left_chunks) & (diff >= 0)).unsqueeze(0)
        return ~valid, ~allowed

    def forward(
        self,
        audio_signal,
        length=None,
        cache_last_channel=None,
        cache_last_time=None,
        cache_last_channel_len=None,
        bypass_pre_encode=False,
    ):
        """audio_signal (B, feat_in, T) (or (B, T, d_model) pre-encoded with bypass_pre_encode=True), length (B,)
        -> (encoded (B, feat_out, T'), encoded_len (B,) int64)."""
        if cache_last_channel is not None or cache_last_time is not None or cache_last_channel_len is not None:
            raise NotImplementedError("cache-aware streaming inputs (cache_last_*) are not implemented in nest-ssl")
        if not bypass_pre_encode and audio_signal.shape[-2] != self._feat_in:
            raise ValueError(
                f"If bypass_pre_encode is False, audio_signal should have shape (batch, {self._feat_in}, n_frame) "
                f"but got last dimension {audio_signal.shape[-2]}."
            )
        if bypass_pre_encode and audio_signal.shape[-1] != self.d_model:
            raise ValueError(
                f"If bypass_pre_encode is True, audio_signal should have shape (batch, n_frame, {self.d_model}) "
                f"but got last dimension {audio_signal.shape[-1]}."
            )
        if length is None:
            length = torch.full(
                (audio_signal.size(0),), audio_signal.size(1 if bypass_pre_encode else -1),
                dtype=torch.int64, device=audio_signal.device,
            )

        # During training one of several attention contexts may be sampled (python's RNG, as NeMo).
        if self.training and len(self.att_context_size_all) > 1:
            att_context_size = random.choices(self.att_context_size_all, weights=self.att_context_probs)[0]
        else:
            att_context_size = self.att_context_size

        x = audio_signal
        if not bypass_pre_encode:
            x = x.transpose(1, 2)  # (B, T, feat_in)
            if isinstance(self.pre_encode, nn.Linear):
                x = self.pre_encode(x)
            else:
                x, length = self.pre_encode(x=x, lengths=length)
        length = length.to(torch.int64)

        max_len = x.size(1)
        x, pos_emb = self.pos_enc(x=x)
        pad_mask, att_mask = self._create_masks(att_context_size, length, max_len, x.device)

        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for drop_prob, layer in zip(self.layer_drop_probs, self.layers):
            residual = x
            if recompute:
                # Keep only the layer's input; the backward runs the layer again. Dropout draws are replayed
                # (checkpoint restores the RNG states it saved), and the stochastic-depth draw below stays outside,
                # so the step is the one without checkpointing.
                x = checkpoint(layer, x, att_mask, pos_emb, pad_mask, use_reentrant=False,
                               context_fn=partial(_recompute_contexts, layer))
            else:
                x = layer(x=x, att_mask=att_mask, pos_emb=pos_emb, pad_mask=pad_mask)
            if self.training and drop_prob > 0.0:
                # Stochastic depth (arXiv 2102.03216) with NeMo's formulation and RNG use (torch.rand(1) on the
                # CPU generator per droppable layer). A dropped layer is multiplied by 0 rather than skipped so
                # every parameter still gets a (zero) gradient and DDP sees the same graph on all ranks.
                if torch.rand(1) < drop_prob:
                    x = x * 0.0 + residual
                else:
                    x = (x - residual) / (1.0 - drop_prob) + residual

        if self.out_proj is not None:
            x = self.out_proj(x)
        return x.transpose(1, 2), length
