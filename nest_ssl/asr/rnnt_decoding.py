"""RNN-T decoding: NeMo's greedy search (batched) and NeMo's default beam search (`strategy: beam`,
`search_type: default`), over our RNNTDecoder and RNNTJoint. Token ids out, the blank (index V) never among them.

greedy: at each encoder frame, up to `max_symbols` times: the joint's best class; the blank moves to the next frame,
a token is emitted and fed to the prediction network. The prediction network starts from "nothing emitted" (a zero
input, zero state). This is NeMo's `GreedyRNNTInfer` / `GreedyBatchedRNNTInfer` (`decoding.greedy.max_symbols`,
10 in NeMo's fast-conformer_transducer_bpe.yaml).

beam (beam_size > 1): NeMo's `BeamRNNTInfer.default_beam_search`, Graves' search as ESPnet writes it. Per frame:
take the best open hypothesis, score one more step with log-softmax of the joint; its blank extension is kept for
the next frame, its `beam` best token extensions stay open on this frame; the frame ends once at least `beam` kept
hypotheses score above every open one. There is no cap on tokens per frame. At the end the kept hypotheses are
ranked by score / (tokens + 1) (`score_norm`, NeMo's default; without it by score) and the first wins. beam_size 1
is the greedy search (NeMo's beam-1 path is also a greedy search, with its own cap of 5 symbols per frame; here it
is `max_symbols`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nest_ssl.asr.rnnt_decoder import RNNTDecoder, State
from nest_ssl.asr.rnnt_joint import RNNTJoint


@dataclass(frozen=True)
class RNNTSearch:
    beam_size: int = 1  # 1: greedy
    max_symbols: int = 10  # greedy: tokens per frame at most
    score_norm: bool = True  # beam: rank the final hypotheses by score per token

    @property
    def name(self) -> str:
        return "greedy" if self.beam_size <= 1 else "beam"


def _select(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * new.dim()
    shape[dim] = -1
    return torch.where(mask.view(shape), new, old)


@torch.no_grad()
def greedy_batch(decoder: RNNTDecoder, joint: RNNTJoint, encoded: torch.Tensor, lengths: torch.Tensor,
                 max_symbols: int = 10) -> list[list[int]]:
    """encoded (B, T, D_enc), lengths (B,) -> the token ids of each utterance."""
    batch, frames = encoded.shape[:2]
    blank = decoder.blank_idx
    f = joint.project_encoder(encoded)
    state = decoder.initialize_state(batch, f)
    g, state = decoder.predict(None, state, add_sos=False, batch_size=batch)
    g = joint.project_prednet(g)  # (B, 1, H)
    hyps: list[list[int]] = [[] for _ in range(batch)]
    lengths = lengths.to(f.device)
    for t in range(frames):
        todo = lengths > t
        for _ in range(max_symbols):
            if not bool(todo.any()):
                break
            k = joint.joint_after_projection(f[:, t:t + 1], g)[:, 0, 0].argmax(-1)  # (B,)
            emit = todo & (k != blank)
            if not bool(emit.any()):
                break
            for b in emit.nonzero().flatten().tolist():
                hyps[b].append(int(k[b]))
            g_new, s_new = decoder.predict(torch.where(emit, k, blank).unsqueeze(1), state, add_sos=False)
            g = _select(emit, joint.project_prednet(g_new), g, 0)
            state = (_select(emit, s_new[0], state[0], 1), _select(emit, s_new[1], state[1], 1))
            todo = emit
    return hyps


@dataclass(eq=False)  # removed from lists by identity
class _Hyp:
    score: float
    tokens: list[int]  # starts with the blank ("nothing emitted"), as NeMo's y_sequence
    state: State | None


@torch.no_grad()
def beam_search(decoder: RNNTDecoder, joint: RNNTJoint, encoded: torch.Tensor, length: int, beam_size: int,
                score_norm: bool = True) -> list[int]:
    """encoded (T, D_enc) of one utterance -> the best hypothesis' token ids (NeMo's default beam search)."""
    blank = decoder.blank_idx
    vocab = decoder.vocab_size
    beam = min(beam_size, vocab)
    beam_k = max(1, min(beam, vocab - 1))
    f = joint.project_encoder(encoded[:length].unsqueeze(0))  # (1, T, H)
    cache: dict[tuple[int, ...], tuple[torch.Tensor, State]] = {}

    def score(h: _Hyp) -> tuple[torch.Tensor, State]:
        key = tuple(h.tokens)
        if key not in cache:
            if h.tokens[-1] == blank:  # nothing emitted yet: the zero input from a zero state
                g, s = decoder.predict(None, None, add_sos=False, batch_size=1)
            else:
                g, s = decoder.predict(torch.tensor([[h.tokens[-1]]]), h.state, add_sos=False)
            cache[key] = (joint.project_prednet(g[:, -1:]), s)
        return cache[key]

    kept = [_Hyp(0.0, [blank], decoder.initialize_state(1, f))]
    for t in range(length):
        open_ = kept
        kept = []
        while True:
            best = open_.pop(max(range(len(open_)), key=lambda i: open_[i].score))  # the first best
            g, state = score(best)
            logp = joint.joint_after_projection(f[:, t:t + 1], g)[0, 0, 0].float().log_softmax(-1)
            top = logp[:blank].topk(beam_k)
            for lp, k in zip([*top.values.tolist(), float(logp[blank])], [*top.indices.tolist(), blank]):
                if k == blank:
                    kept.append(_Hyp(best.score + lp, best.tokens[:], best.state))
                else:
                    open_.append(_Hyp(best.score + lp, [*best.tokens, k], state))
            ceiling = max(h.score for h in open_)
            above = sorted((h for h in kept if h.score > ceiling), key=lambda h: h.score)
            if len(above) >= beam:
                kept = above
                break
    rank = (lambda h: h.score / len(h.tokens)) if score_norm else (lambda h: h.score)
    return sorted(kept, key=rank, reverse=True)[0].tokens[1:]


def decode_tokens(decoder: RNNTDecoder, joint: RNNTJoint, encoded: torch.Tensor, lengths: torch.Tensor,
                  search: RNNTSearch) -> list[list[int]]:
    """encoded (B, T, D_enc) -> token ids per utterance, by greedy or beam search."""
    if search.beam_size <= 1:
        return greedy_batch(decoder, joint, encoded, lengths, search.max_symbols)
    return [beam_search(decoder, joint, e, int(n), search.beam_size, search.score_norm)
            for e, n in zip(encoded, lengths.tolist())]
