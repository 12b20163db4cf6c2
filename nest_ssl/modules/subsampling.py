"""Convolutional time subsampling in front of the Conformer (NeMo's `ConvSubsampling`).

The log-mel input (B, T, F) is treated as a one-channel image (B, 1, T, F). Each stride-2 stage halves both
axes, so factor 8 turns 10 ms frames into 80 ms frames and 80 mel bins into 10; the result is flattened over
(channels, freq) and projected to d_model by `out`.

Two layouts are implemented (what NEST and most NeMo Fast-Conformers use):

- 'dw_striding' (NEST): a full 3x3/2 conv, then (depthwise 3x3/2 + pointwise 1x1) per further stage.
  Submodules: conv.0 conv, conv.1 ReLU, conv.2 depthwise, conv.3 pointwise, conv.4 ReLU, conv.5, conv.6, conv.7.
- 'striding': a full 3x3/2 conv + ReLU per stage (conv.0, conv.2, conv.4 for factor 8).

Padded-step masking follows NeMo 2.7.3 (its `MaskedConvSequential`, added by NeMo PR #13827): time steps at or
beyond the running length are zeroed before the first conv and after every conv, and the running length is
updated after every stride-2 conv (L -> ceil(L/2)). Without this, the 3-tap convs would leak padded frames
into the last valid output frame, so an utterance's encoding would depend on what it is batched with.
Checkpoints trained before that PR (NEST-L/XL release) saw unmasked subsampling; numerics differ only at the
frames next to the padding.
"""

import math

import torch
from torch import nn

from nest_ssl.modules.linear import Linear

__all__ = ["ConvSubsampling", "conv_output_lengths"]

# NeMo's ConvSubsampling accepts these names; only the first two are implemented here.
_IMPLEMENTED = ("dw_striding", "striding")
_KNOWN_NOT_IMPLEMENTED = ("vggnet", "striding_conv1d", "dw_striding_conv1d", "stacking", "stacking_norm")


def conv_output_lengths(lengths, num_stages, kernel_size=3, stride=2, padding=1):
    """Valid length after `num_stages` convs of (kernel_size, stride, symmetric padding) -> int64.

    With the subsampler's (3, 2, 1) this is ceil(L/2) per stage, so ceil(L/8) for factor 8. Integer math,
    exact for any length (NeMo computes the same thing through float32 floor division).
    """
    lengths = torch.as_tensor(lengths).to(torch.int64)
    for _ in range(num_stages):
        lengths = torch.div(lengths + 2 * padding - kernel_size, stride, rounding_mode="floor") + 1
    return lengths


def _zero_padding(x, lengths):
    """Zero the time steps of x (B, C, T, F) at or beyond each row's length.

    NeMo multiplies by a 0/1 mask; masked_fill gives the same values and gradients for finite inputs and also
    keeps a non-finite value sitting in the padding from turning into NaN.
    """
    padded = torch.arange(x.size(2), device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)  # (B, T)
    return x.masked_fill(padded[:, None, :, None], 0.0)


class ConvSubsampling(nn.Module):
    """NeMo's ConvSubsampling for the 2-D layouts 'dw_striding' and 'striding'.

    Args (NeMo's names and defaults):
        subsampling: 'dw_striding' or 'striding'.
        subsampling_factor: a power of 2 (number of stride-2 stages = log2 of it).
        feat_in: input feature size (frequency bins, 80 for NEST).
        feat_out: output size (d_model).
        conv_channels: channels of every conv (256 for NEST).
        subsampling_conv_chunking_factor: 1 = split the batch only when the input is large enough to hit
            PyTorch's 2**31-element conv indexing limit (NeMo's auto rule), a power of 2 = always split into
            that many batch chunks, -1 = never split. Splitting is along the batch, so it never changes results.
        activation: the non-linearity module after each stage (ReLU in NeMo's encoder).
        is_causal: causal (left-padded) convs; not implemented.
    """

    def __init__(
        self,
        subsampling,
        subsampling_factor,
        feat_in,
        feat_out,
        conv_channels,
        subsampling_conv_chunking_factor=1,
        activation=None,
        is_causal=False,
    ):
        super().__init__()
        if subsampling in _KNOWN_NOT_IMPLEMENTED:
            raise NotImplementedError(
                f"subsampling={subsampling!r} is not implemented in nest-ssl (implemented: {_IMPLEMENTED})"
            )
        if subsampling not in _IMPLEMENTED:
            raise ValueError(f"Not valid sub-sampling: {subsampling!r} (implemented: {_IMPLEMENTED})")
        if is_causal:
            raise NotImplementedError("causal_downsampling=True (is_causal) is not implemented in nest-ssl")
        if subsampling_factor < 2 or subsampling_factor & (subsampling_factor - 1):
            raise ValueError(f"subsampling_factor must be a power of 2 >= 2, got {subsampling_factor}")
        if subsampling_conv_chunking_factor not in (-1, 1) and subsampling_conv_chunking_factor % 2 != 0:
            raise ValueError("subsampling_conv_chunking_factor should be -1, 1, or a power of 2")

        self._subsampling = subsampling
        self._conv_channels = conv_channels
        self._feat_in = feat_in
        self._feat_out = feat_out
        self.subsampling_factor = subsampling_factor
        self._sampling_num = int(math.log2(subsampling_factor))
        self.subsampling_conv_chunking_factor = subsampling_conv_chunking_factor
        self.is_causal = False
        self._kernel_size, self._stride, self._padding = 3, 2, 1
        if activation is None:
            # In-place is safe: every ReLU follows a conv, whose backward does not need its output.
            activation = nn.ReLU(inplace=True)

        # One activation instance is reused at every position, as in NeMo; it has no state.
        layers = []
        channels = 1
        if subsampling == "dw_striding":
            layers += [nn.Conv2d(1, conv_channels, 3, stride=2, padding=1), activation]
            for _ in range(self._sampling_num - 1):
                layers += [
                    nn.Conv2d(conv_channels, conv_channels, 3, stride=2, padding=1, groups=conv_channels),
                    nn.Conv2d(conv_channels, conv_channels, 1),
                    activation,
                ]
        else:
            for _ in range(self._sampling_num):
                layers += [nn.Conv2d(channels, conv_channels, 3, stride=2, padding=1), activation]
                channels = conv_channels
        # Frequency axis shrinks with the same (3, 2, 1) rule as time: 80 -> 40 -> 20 -> 10.
        freq_out = feat_in
        for _ in range(self._sampling_num):
            freq_out = (freq_out + 2 * self._padding - self._kernel_size) // self._stride + 1
        # The convs above are built (and draw their default init) before `out`, but `out` is registered first:
        # both as in NeMo, so same-seed init and the state-dict order (pre_encode.out.* before
        # pre_encode.conv.*) match. Init is PyTorch's default; NeMo never calls its uniform reset_parameters().
        self.out = Linear(conv_channels * freq_out, feat_out)
        self.conv = nn.Sequential(*layers)
        self.conv2d_subsampling = True

    def get_sampling_frames(self):
        return [1, self.subsampling_factor]

    def get_streaming_cache_size(self):
        return [0, self.subsampling_factor + 1]

    def calc_output_lengths(self, lengths):
        return conv_output_lengths(lengths, self._sampling_num, self._kernel_size, self._stride, self._padding)

    def forward(self, x, lengths):
        """x (B, T, feat_in), lengths (B,) -> (B, ceil(T/f), feat_out), int64 lengths ceil(L/f)."""
        lengths = lengths.to(torch.int64)
        if self._needs_split(x):
            x, out_lengths = self._forward_split(x, lengths)
        else:
            x, out_lengths = self._masked_convs(x.unsqueeze(1), lengths)
        b, c, t, f = x.shape
        # (B, C, T', F') -> (B, T', C*F'): feature index is c * F' + f, the layout `out` was trained on.
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        return x, out_lengths

    def _masked_convs(self, x, lengths):
        """Run self.conv on (B, 1, T, F), zeroing padded time steps at the input and after every conv."""
        x = _zero_padding(x, lengths)
        for layer in self.conv:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                if layer.stride[0] != 1:
                    lengths = conv_output_lengths(lengths, 1, layer.kernel_size[0], layer.stride[0], layer.padding[0])
                x = _zero_padding(x, lengths)
        return x, lengths

    def _needs_split(self, x):
        if self.subsampling_conv_chunking_factor == -1:
            return False
        if self.subsampling_conv_chunking_factor > 1:
            return True
        return x.numel() > self._split_threshold()

    def _split_threshold(self):
        # NeMo's rule: the first conv's output (conv_channels x input / stride^2 elements) must stay below 2**31
        # (PyTorch issue 80020: 32-bit indexing inside conv kernels).
        return 2**31 / self._conv_channels * self._stride * self._stride

    def _forward_split(self, x, lengths):
        """Same result as one pass, computed in pieces so no conv sees more than 2**31 output elements."""
        b = x.size(0)
        if self.subsampling_conv_chunking_factor > 1:
            chunks = self.subsampling_conv_chunking_factor
        else:
            chunks = 2 ** math.ceil(math.log2(x.numel() / self._split_threshold()))
        per_chunk = b // chunks
        if b > 1 and per_chunk > 0:
            outs = [
                self._masked_convs(xc.unsqueeze(1), lc)
                for xc, lc in zip(torch.split(x, per_chunk, 0), torch.split(lengths, per_chunk, 0))
            ]
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        if self._subsampling == "dw_striding":
            return self._forward_channel_split(x.unsqueeze(1), lengths)
        return self._masked_convs(x.unsqueeze(1), lengths)  # 'striding' has no cheaper layout: try anyway

    def _forward_channel_split(self, x, lengths):
        """dw_striding for inputs too big even per utterance: depthwise convs run on channel groups and the
        pointwise convs on time slices. Unlike NeMo's fallback, padded steps are still masked, so the result is
        the same as the unsplit path (NeMo's fallback differs only when the utterance is padded)."""
        first = self.conv[0]
        x = first(_zero_padding(x, lengths))
        lengths = conv_output_lengths(lengths, 1, first.kernel_size[0], first.stride[0], first.padding[0])
        x = self.conv[1](_zero_padding(x, lengths))
        for stage in range(self._sampling_num - 1):
            dw, pw, act = self.conv[3 * stage + 2], self.conv[3 * stage + 3], self.conv[3 * stage + 4]
            _, c, t, _ = x.shape
            if self.subsampling_conv_chunking_factor > 1:
                cf = self.subsampling_conv_chunking_factor
            else:
                cf = 2 ** math.ceil(math.log2(max(x.numel() / 2**31, 1.0)))
            new_c, new_t = max(c // cf, 1), max(t // cf, 1)
            pieces = []
            for start in range(0, c, new_c):
                stop = min(start + new_c, c)
                pieces.append(
                    nn.functional.conv2d(
                        x[:, start:stop],
                        dw.weight[start:stop],
                        dw.bias[start:stop] if dw.bias is not None else None,
                        stride=dw.stride,
                        padding=dw.padding,
                        groups=stop - start,
                    )
                )
            x = torch.cat(pieces, 1)
            lengths = conv_output_lengths(lengths, 1, dw.kernel_size[0], dw.stride[0], dw.padding[0])
            x = _zero_padding(x, lengths)
            x = torch.cat([pw(piece) for piece in torch.split(x, new_t, 2)], 2)
            x = _zero_padding(x, lengths)
            x = act(x)
        return x, lengths

    def change_subsampling_conv_chunking_factor(self, subsampling_conv_chunking_factor: int):
        if subsampling_conv_chunking_factor not in (-1, 1) and subsampling_conv_chunking_factor % 2 != 0:
            raise ValueError("subsampling_conv_chunking_factor should be -1, 1, or a power of 2")
        self.subsampling_conv_chunking_factor = subsampling_conv_chunking_factor
