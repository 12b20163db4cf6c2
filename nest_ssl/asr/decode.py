"""CTC decoding: greedy (best path) and beam search with a word n-gram LM through torchaudio's `ctc_decoder`
(flashlight-text, whose KenLM reads ARPA files, plain or gzip-compressed `.arpa.gz`). Emissions are
log-probabilities (T, V+1) with the blank last.

The beam-search decoder is lexicon-based: every word of the LM (its unigrams but <s>, </s>, <unk>) is spelled with
the tokenizer. For characters the word separator is the space token (`|` to flashlight); SentencePiece pieces carry
their own word boundary (`▁`), so the separator is the blank (flashlight needs one) and words are whole pieces.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nest_ssl.asr.errors import ASRError, import_asr_dependency
from nest_ssl.asr.lm import BOS, EOS, UNK, arpa_unigrams

BLANK_TOKEN = "<blank>"


def greedy(log_probs: torch.Tensor, length: int, blank: int) -> list[int]:
    best = log_probs[:length].argmax(-1).tolist()
    out, prev = [], None
    for t in best:
        if t != prev and t != blank:
            out.append(t)
        prev = t
    return out


@dataclass
class LMOptions:
    arpa: Path
    weight: float = 1.0  # flashlight's lm_weight
    word_score: float = 0.0
    beam_size: int = 50


class LMDecoder:
    """Beam search over one utterance's emissions, returning words joined by spaces."""

    def __init__(self, tokenizer, options: LMOptions):
        ctc_decoder = import_asr_dependency("torchaudio.models.decoder").ctc_decoder

        arpa = Path(options.arpa)
        if not arpa.is_file():
            raise ASRError(f"--lm {arpa}: does not exist; give an ARPA file (or build one with --lm-text)")
        words = sorted(w for w in arpa_unigrams(arpa) if w not in (BOS, EOS, UNK))
        if not words:
            raise ASRError(f"--lm {arpa}: no unigram; is it an ARPA file?")
        tokens = tokenizer.tokens() + [BLANK_TOKEN]
        self.char = tokenizer.kind == "char"
        sil = "|" if self.char and "|" in tokens else BLANK_TOKEN
        self._dir = tempfile.TemporaryDirectory(prefix="nest_ssl_lexicon_")
        lexicon = Path(self._dir.name) / "lexicon.txt"
        known = set(tokens)
        with open(lexicon, "w", encoding="utf-8") as f:
            for w in words:
                spelling = tokenizer.spell(w)
                if all(t in known for t in spelling):
                    f.write(f"{w}\t{' '.join(spelling)}\n")
        self.decoder = ctc_decoder(lexicon=str(lexicon), tokens=tokens, lm=str(arpa), nbest=1,
                                   beam_size=options.beam_size, lm_weight=options.weight,
                                   word_score=options.word_score, blank_token=BLANK_TOKEN, sil_token=sil,
                                   unk_word=UNK)

    def __call__(self, log_probs: torch.Tensor, length: int) -> str:
        emissions = log_probs[:length].float().contiguous().unsqueeze(0).cpu()
        hyp = self.decoder(emissions, torch.tensor([length], dtype=torch.int32))[0]
        return " ".join(w for w in hyp[0].words if w) if hyp else ""


def decode_batch(log_probs: torch.Tensor, lengths: torch.Tensor, tokenizer, blank: int,
                 lm: LMDecoder | None = None) -> list[str]:
    out = []
    for lp, n in zip(log_probs, lengths.tolist()):
        out.append(lm(lp, n) if lm is not None else " ".join(tokenizer.decode(greedy(lp, n, blank)).split()))
    return out
