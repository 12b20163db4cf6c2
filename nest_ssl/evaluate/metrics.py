"""Accuracy and corpus-level error rates (CER, WER) through kaldialign's Levenshtein alignment.

Error rates are corpus-level, as Kaldi/icefall/SUPERB report them: the sum of substitutions, deletions and
insertions over all utterances divided by the total reference length (not a mean of per-utterance rates). CER
counts characters including the single spaces between words (jiwer's convention); WER counts words.
"""

from __future__ import annotations

from typing import Sequence

import kaldialign
import torch


def accuracy(predicted: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of equal entries; 0 for empty input would hide a bug, so it refuses instead."""
    if predicted.shape != reference.shape:
        raise ValueError(f"accuracy: shapes differ ({tuple(predicted.shape)} vs {tuple(reference.shape)})")
    if reference.numel() == 0:
        raise ValueError("accuracy: no items to score")
    return float((predicted == reference).float().mean())


def edit_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Substitutions + deletions + insertions between two token sequences."""
    return int(kaldialign.edit_distance(list(reference), list(hypothesis))["total"])


def error_rate(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    """Corpus-level error rate over token sequences (sum of edits / sum of reference lengths)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"error_rate: {len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("error_rate: the references are empty")
    return sum(edit_errors(r, h) for r, h in zip(references, hypotheses)) / total


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    return error_rate([list(r) for r in references], [list(h) for h in hypotheses])


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    return error_rate([r.split() for r in references], [h.split() for h in hypotheses])
