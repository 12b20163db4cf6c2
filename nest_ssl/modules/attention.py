"""Relative-position self-attention of the Conformer (Transformer-XL style), as NeMo 2.7.3 computes it.

`RelPositionalEncoding` scales the subsampled features by xscale, applies the pre-encoder dropout and returns
sinusoidal embeddings for the relative distances T'-1 ... -(T'-1). `RelPositionMultiHeadAttention` turns them
into a position term per (query, key) pair with a bias-free projection and the Transformer-XL "rel_shift".

Scores, per head (d_k = d_model / heads):
    ((q + u) . k  +  rel_shift((q + v) . p)) / sqrt(d_k)
masked to -10000 where query or key is padding, softmax, padded entries reset to 0, attention dropout, times V.
"""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from nest_ssl.modules.dropout import Dropout
from nest_ssl.modules.linear import Linear

__all__ = ["RelPositionalEncoding", "RelPositionMultiHeadAttention", "rel_shift", "INF_VAL"]

# Masked scores are set to -INF_VAL rather than -inf: a fully masked row (a padded query) then gives a finite
# softmax that is reset to zero afterwards, instead of NaN. NeMo uses the same constant, and 10000 is also the
# base of the sinusoid frequencies.
INF_VAL = 10000.0


def rel_shift(x):
    """Realign relative-position scores from "distance" to "key" indexing (Transformer-XL, appendix B).

    x: (B, H, T, 2T-1) where column j of row i is the score for relative position (T-1) - j. Returns the same
    shape where, for row i, column j now holds the score of distance i - j (only columns < T are meaningful;
    callers crop). Done by padding one zero column on the left and reinterpreting the memory with one row more,
    which shifts row i left by (T-1-i) without any gather.
    """
    b, h, t, n_pos = x.shape
    x = F.pad(x, (1, 0))  # (B, H, T, 2T)
    x = x.view(b, h, -1, t)  # (B, H, 2T, T): same memory, rows of length T
    return x[:, :, 1:].reshape(b, h, t, n_pos)


def _sinusoids(positions, d_model):
    """(len(positions), d_model) table: even columns sin(p * w_i), odd columns cos(p * w_i), w_i = 10000^(-2i/d).

    Computed in float32 with the same operations as NeMo, so the rows are bit-identical to its `pe` buffer.
    """
    table = torch.zeros(positions.size(0), d_model, device=positions.device)
    freqs = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device) * -(math.log(INF_VAL) / d_model)
    )
    table[:, 0::2] = torch.sin(positions * freqs)
    table[:, 1::2] = torch.cos(positions * freqs)
    return table


class RelPositionalEncoding(nn.Module):
    """xscale + dropout on the input, and the relative sinusoidal embeddings for its length.

    Args (NeMo's): d_model, dropout_rate (dropout_pre_encoder), max_len (initial table size in frames),
    xscale (sqrt(d_model) or None), dropout_rate_emb (dropout on the embeddings; 0 = none).

    The table is a plain cached tensor, not a module buffer: it is a pure function of the length, so each
    process grows its own copy on demand and gets the same values. NeMo instead all-reduces the maximum
    length over DDP ranks (sync_max_audio_length) so that its registered buffer has the same shape everywhere;
    we need neither the collective nor the buffer (which DDP would otherwise broadcast every step).
    """

    def __init__(self, d_model, dropout_rate, max_len=5000, xscale=None, dropout_rate_emb=0.0):
        super().__init__()
        self.d_model = d_model
        self.xscale = xscale
        self.max_len = max_len
        self.dropout = Dropout(p=dropout_rate)
        self.dropout_emb = Dropout(dropout_rate_emb) if dropout_rate_emb > 0 else None
        self._pe = None  # (1, 2L-1, d_model) float32, rows for positions L-1 down to -(L-1)

    @property
    def pe(self):
        return self._pe

    def extend_pe(self, length, device, dtype=None):
        """Make sure the table covers sequences of `length` frames on `device` (dtype is accepted for NeMo's
        signature; the table is kept in float32 and cast when used)."""
        device = torch.device(device)
        if self._pe is not None and self._pe.device == device and self._pe.size(1) >= 2 * length - 1:
            return
        # Never smaller than max_len, so that typical growing lengths do not rebuild the table every step.
        length = max(int(length), int(self.max_len))
        positions = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device).unsqueeze(1)
        self._pe = _sinusoids(positions, self.d_model).unsqueeze(0)

    def forward(self, x, cache_len=0):
        """x (B, T, d) -> (dropout(x * xscale) (B, T, d), pos_emb (1, 2(T+cache_len)-1, d))."""
        if self.xscale:
            x = x * self.xscale
        n = x.size(1) + cache_len
        self.extend_pe(n, x.device)
        center = self._pe.size(1) // 2  # row of relative position 0
        pos_emb = self._pe[:, center - (n - 1) : center + n]
        # The table's dtype follows the activations outside autocast (NeMo: the parameter dtype); under autocast
        # it stays float32 as NeMo's does, and autocast casts it where it is used.
        if not torch.is_autocast_enabled(x.device.type):
            pos_emb = pos_emb.to(x.dtype)
        if self.dropout_emb is not None:
            pos_emb = self.dropout_emb(pos_emb)
        return self.dropout(x), pos_emb


def _attention_precision_context(device_type):
    """NeMo never runs attention in float16 autocast: it switches to bfloat16 where supported, else float32."""
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        if device_type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


class RelPositionMultiHeadAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (NeMo's RelPositionMultiHeadAttention).

    Args (NeMo's): n_head, n_feat (d_model), dropout_rate (dropout_att), pos_bias_u / pos_bias_v (shared
    (H, d_k) parameters when the encoder ties them, else None: this layer then owns zero-initialised ones),
    max_cache_len (streaming, unused), use_bias (q/k/v/out biases; linear_pos never has one),
    use_pytorch_sdpa (use torch's fused scaled_dot_product_attention with the position term as an additive
    float mask, as NeMo does), use_pytorch_sdpa_backends (names of torch.nn.attention.SDPBackend members).
    """

    def __init__(
        self,
        n_head,
        n_feat,
        dropout_rate,
        pos_bias_u=None,
        pos_bias_v=None,
        max_cache_len=0,
        use_bias=True,
        use_pytorch_sdpa=False,
        use_pytorch_sdpa_backends=None,
    ):
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"d_model ({n_feat}) must be divisible by n_heads ({n_head})")
        self.use_pytorch_sdpa = use_pytorch_sdpa
        backends = list(use_pytorch_sdpa_backends or [])
        self.use_pytorch_sdpa_backends = [
            getattr(torch.nn.attention.SDPBackend, b) if isinstance(b, str) else b for b in backends
        ]
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        self.d_k = n_feat // n_head
        self.s_d_k = math.sqrt(self.d_k)
        self.h = n_head
        self._max_cache_len = max_cache_len
        self.cache_drop_size = None
        # Registration order = NeMo's (state-dict order and the order the default initialisers draw numbers).
        self.linear_q = Linear(n_feat, n_feat, bias=use_bias)
        self.linear_k = Linear(n_feat, n_feat, bias=use_bias)
        self.linear_v = Linear(n_feat, n_feat, bias=use_bias)
        self.linear_out = Linear(n_feat, n_feat, bias=use_bias)
        self.dropout = Dropout(p=dropout_rate)
        self.linear_pos = Linear(n_feat, n_feat, bias=False)
        if pos_bias_u is None or pos_bias_v is None:
            self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
            self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))
        else:
            # Shared (tied) biases: the same Parameter is registered in every layer, as in NeMo, so each
            # layer's state dict carries it and parameters() counts it once.
            self.pos_bias_u = pos_bias_u
            self.pos_bias_v = pos_bias_v

    def _heads(self, x, linear):
        """(B, T, d) -> (B, T, H, d_k) projection."""
        return linear(x).view(x.size(0), -1, self.h, self.d_k)

    def forward(self, query, key, value, mask, pos_emb, cache=None):
        """query/key/value (B, T, d), mask (B, T, T) bool True = blocked, pos_emb (1 or B, 2T-1, d) -> (B, T, d)."""
        if cache is not None:
            raise NotImplementedError("cache-aware streaming attention (cache_last_channel) is not implemented")
        device_type = query.device.type
        if torch.is_autocast_enabled(device_type):
            query, key, value = query.float(), key.float(), value.float()
        with _attention_precision_context(device_type):
            n_batch = value.size(0)
            q = self._heads(query, self.linear_q)  # (B, T, H, d_k)
            k = self._heads(key, self.linear_k).transpose(1, 2)  # (B, H, T, d_k)
            v = self._heads(value, self.linear_v).transpose(1, 2)
            p = self._heads(pos_emb, self.linear_pos).transpose(1, 2)  # (1, H, 2T-1, d_k)

            q_u = (q + self.pos_bias_u).transpose(1, 2)  # content term query (B, H, T, d_k)
            q_v = (q + self.pos_bias_v).transpose(1, 2)  # position term query
            matrix_bd = rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))  # (B, H, T, 2T-1)
            t_k = k.size(-2)

            if self.use_pytorch_sdpa:
                # The position term becomes an additive float mask, pre-scaled because sdpa scales only q.k.
                bias = matrix_bd[..., :t_k] * (1.0 / math.sqrt(self.d_k))
                if mask is not None:
                    mask = mask.unsqueeze(1)
                    bias = bias.masked_fill(mask, -INF_VAL)
                ctx = (
                    torch.nn.attention.sdpa_kernel(self.use_pytorch_sdpa_backends)
                    if self.use_pytorch_sdpa_backends
                    else nullcontext()
                )
                with ctx:
                    out = F.scaled_dot_product_attention(
                        q_u, k, v, attn_mask=bias, dropout_p=self.dropout_rate if self.training else 0.0
                    )
                if mask is not None:
                    # A fully masked row (padded query) must give 0 like the manual path, not a uniform average.
                    out = out.masked_fill(mask.all(dim=-1, keepdim=True), 0.0)
                out = out.transpose(1, 2).reshape(n_batch, -1, self.h * self.d_k)
                return self.linear_out(out)

            matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))  # (B, H, T, T)
            scores = (matrix_ac + matrix_bd[..., :t_k]) / self.s_d_k
            if mask is not None:
                mask = mask.unsqueeze(1)
                scores = scores.masked_fill(mask, -INF_VAL)
                attn = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
            else:
                attn = torch.softmax(scores, dim=-1)
            out = torch.matmul(self.dropout(attn), v)  # (B, H, T, d_k)
            out = out.transpose(1, 2).reshape(n_batch, -1, self.h * self.d_k)
            return self.linear_out(out)
