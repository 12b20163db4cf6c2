"""BEST-RQ random-projection quantizer with NeMo 2.7.3's arguments, parameters and outputs.

Deliberate deviation: NeMo's `dist_fn="l2"` materialises a (B, T', books, code_dim, num_classes) float64
difference tensor (25 GB for a 64 x 30 s batch). Both the projected frames and the codewords are unit vectors, so
||x - c||^2 = |x|^2 + |c|^2 - 2 x.c and the nearest codeword is the one maximising 2 x.c - |c|^2. We score that in
float64 with a (chunked) matmul; the rows whose best two scores are closer than float64 rounding can separate are
decided with NeMo's exact formula so the tokens equal NeMo's: all-zero (padding) frames, where every codeword is at
distance |c| ~ 1, take the codeword of smallest norm, and the closest `_TIE_CAPACITY` other near-ties of each chunk
(a non-zero frame ties within 1e-9 about once in a million) are re-scored exactly. Nothing here depends on a value
read by the host (no `.any()`, no boolean indexing), so quantising never makes the host wait for the device.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nest_ssl.modules.frozen import FreezableModule

# Score gaps below this are within float64 rounding of |c|^2 - 1 and of the sums; decide them NeMo's way.
_TIE_GAP = 1e-9
_TIE_CAPACITY = 16  # near-tied (frame, book) pairs re-scored exactly per chunk: 16 x 8192 x 16 float64 = 16 MiB
_SCORE_ELEMS = 1 << 25  # float64 scores per chunk (256 MiB)


class RandomProjectionVectorQuantizer(FreezableModule):
    """forward(input_signal (B, D, T) or (B, T, D) if time_ahead) -> (xq, xid (B, T', books) int64).

    T' = T // combine_time_steps: `combine_time_steps` consecutive frames are concatenated (frame-major) into one
    vector before the fixed projection, so T must be a multiple of it (pad_to=16 guarantees that for 8).
    """

    DIST_FN_LIST = ("l2", "cosine")

    def __init__(self, feat_in: int, code_dim: int, num_classes: int, num_books: int, dist_fn: str = "cosine",
                 time_ahead: bool = False, freeze: bool = True, squeeze_single: bool = False,
                 combine_time_steps: int = 1):
        super().__init__()
        if dist_fn not in self.DIST_FN_LIST:
            raise ValueError(f"Unknown distance function {dist_fn!r}, must be one of {list(self.DIST_FN_LIST)}")
        self.feat_in = feat_in
        self.code_dim = code_dim
        self.num_classes = num_classes
        self.num_books = num_books
        self.dist_fn = dist_fn
        self.time_ahead = time_ahead
        self.squeeze_single = squeeze_single
        self.combine_time_steps = combine_time_steps

        # Same construction and RNG draws as NeMo (Linear default init, then xavier; float32 randn redrawn in
        # float64), so a seeded build gives NeMo's exact weights.
        self.proj = nn.Linear(feat_in * combine_time_steps, num_books * code_dim, bias=False)
        nn.init.xavier_normal_(self.proj.weight)
        codebooks = torch.randn(num_books, num_classes, code_dim).double()
        nn.init.normal_(codebooks, mean=0, std=1)
        self.codebooks = nn.Parameter(F.normalize(codebooks, dim=-1))
        if freeze:
            self.freeze()

    def forward(self, input_signal: torch.Tensor):
        # An fp32 island under autocast: a bf16 projection moves frames enough to change ~1-2% of the nearest
        # codewords (measured with 8192 classes), i.e. the training targets. Outside autocast nothing changes.
        with torch.autocast(input_signal.device.type, enabled=False):
            return self._quantize(input_signal.float())

    def _quantize(self, input_signal: torch.Tensor):
        x = input_signal if self.time_ahead else input_signal.transpose(1, 2)
        B, T, _ = x.shape
        k = self.combine_time_steps
        if k > 1:
            if T % k:
                raise ValueError(f"time length {T} is not a multiple of combine_time_steps={k}")
            x = x.contiguous().reshape(B, T // k, -1)
            T = T // k
        x = F.normalize(F.linear(x, self.proj.weight.float()).view(B, T, self.num_books, self.code_dim), dim=-1)

        if self.dist_fn == "cosine":
            # NeMo 2.7.3 crashes here (float32 frames vs float64 codebooks); we score in the codebooks' dtype.
            xid = torch.einsum("btdh,dch->btdc", x.to(self.codebooks.dtype), self.codebooks).max(dim=-1)[1]
        else:
            xid = self._nearest_l2(x)

        # xq exactly as NeMo lays it out (book-major lookup viewed as (B, T, code_dim, books)).
        flat_ids = (xid + self.num_classes * torch.arange(self.num_books, device=xid.device)).transpose(1, 2)
        xq = F.embedding(flat_ids.reshape(-1), self.codebooks.view(-1, self.code_dim))
        xq = xq.view(B, T, self.code_dim, self.num_books)
        if not self.time_ahead:
            xq = xq.transpose(1, 2)
        if self.num_books == 1 and self.squeeze_single:
            xq, xid = xq.squeeze(-1), xid.squeeze(-1)
        return xq, xid

    def _nearest_l2(self, x: torch.Tensor) -> torch.Tensor:
        """argmin_c ||x - c|| per (B, T', book) without the (.., code_dim, num_classes) difference tensor."""
        books = self.codebooks.detach()  # (H, C, D) float64
        sq_norms = books.pow(2).sum(-1)  # (H, C)
        xd = x.detach().to(books.dtype)
        rows = xd.reshape(-1, self.num_books, self.code_dim)  # (N, H, D)
        xid = torch.empty(rows.shape[:2], dtype=torch.long, device=x.device)
        # Chunk rows so the (rows, H, C) float64 score stays ~256 MiB whatever the batch size.
        chunk = max(1, _SCORE_ELEMS // (self.num_books * self.num_classes))
        for start in range(0, rows.shape[0], chunk):
            part = rows[start:start + chunk]
            score = 2.0 * torch.einsum("nhd,hcd->nhc", part, books) - sq_norms
            if self.num_classes == 1:
                xid[start:start + chunk] = 0
                continue
            top2 = score.topk(2, dim=-1)
            gap = top2.values[..., 0] - top2.values[..., 1]  # (n, H)
            zero = (part == 0).all(dim=-1)  # (n, H): padding
            ids = torch.where(zero, self._zero_ids()[None, :], top2.indices[..., 0])
            xid[start:start + chunk] = self._rescore_ties(part, ids, torch.where(zero, torch.inf, gap))
        return xid.view(x.shape[:3])

    def _zero_ids(self) -> torch.Tensor:
        """(H,): NeMo's nearest codeword to an all-zero frame, per book (NeMo's expression: the norms of all the
        unit codewords agree to rounding, so the rounding decides)."""
        cb_t = self.codebooks.detach().transpose(1, 2)  # (H, D, C)
        return (torch.zeros_like(cb_t[:, :, :1]) - cb_t).norm(dim=-2).argmin(dim=-1)

    def _rescore_ties(self, rows: torch.Tensor, ids: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """NeMo's formula (norm of the float64 difference over code_dim) for the `_TIE_CAPACITY` (row, book) pairs
        of smallest score gap, kept where the gap is below _TIE_GAP: a fixed amount of work, no host read."""
        H = self.num_books
        flat_gap = gap.reshape(-1)
        k = min(_TIE_CAPACITY, flat_gap.numel())
        gaps, idx = flat_gap.topk(k, largest=False)
        vecs = rows.reshape(-1, self.code_dim)[idx]  # (k, D)
        cb_t = self.codebooks.detach().transpose(1, 2)  # (H, D, C)
        exact = (vecs.unsqueeze(-1) - cb_t[idx % H]).norm(dim=-2).argmin(dim=-1)  # (k,)
        flat = ids.reshape(-1).clone()
        flat[idx] = torch.where(gaps < _TIE_GAP, exact, flat[idx])
        return flat.view_as(ids)
