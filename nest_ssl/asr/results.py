"""icefall-style decoding results per test set, and WER/CER through kaldialign:
`recogs-{set}-{method}.txt` (ref and hyp per utterance), `errs-{set}-{method}.txt` (the summary, per-utterance
alignments, then the most frequent substitutions, deletions and insertions) and `wer-summary-{set}.txt`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import kaldialign

EPS = "*"


@dataclass
class Score:
    errors: int
    ref_len: int
    ins: int
    dels: int
    subs: int

    @property
    def rate(self) -> float:
        return self.errors / self.ref_len if self.ref_len else float(self.errors > 0)


def score(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> Score:
    ins = dels = subs = n = 0
    for r, h in zip(refs, hyps):
        n += len(r)
        for a, b in kaldialign.align(list(r), list(h), EPS):
            ins += a == EPS
            dels += b == EPS
            subs += a != EPS and b != EPS and a != b
    return Score(ins + dels + subs, n, ins, dels, subs)


def wer(refs: Sequence[str], hyps: Sequence[str]) -> Score:
    return score([r.split() for r in refs], [h.split() for h in hyps])


def cer(refs: Sequence[str], hyps: Sequence[str]) -> Score:
    return score([list(" ".join(r.split())) for r in refs], [list(" ".join(h.split())) for h in hyps])


def write_results(out_dir: Path, test_set: str, method: str, ids: Sequence[str], refs: Sequence[str],
                  hyps: Sequence[str], rtf: float) -> tuple[Score, Score]:
    out_dir.mkdir(parents=True, exist_ok=True)
    w, c = wer(refs, hyps), cer(refs, hyps)
    with open(out_dir / f"recogs-{test_set}-{method}.txt", "w", encoding="utf-8") as f:
        for i, r, h in zip(ids, refs, hyps):
            f.write(f"{i}:\tref={r.split()}\n{i}:\thyp={h.split()}\n")
    subs, dels, ins = Counter(), Counter(), Counter()
    with open(out_dir / f"errs-{test_set}-{method}.txt", "w", encoding="utf-8") as f:
        f.write(f"%WER = {100 * w.rate:.2f}\n")
        f.write(f"Errors: {w.ins} insertions, {w.dels} deletions, {w.subs} substitutions, over {w.ref_len} "
                "reference words\n\nPER-UTT DETAILS: corr or (ref->hyp)\n")
        for i, r, h in zip(ids, refs, hyps):
            parts = []
            for a, b in kaldialign.align(r.split(), h.split(), EPS):
                if a == b:
                    parts.append(a)
                else:
                    parts.append(f"({a}->{b})")
                    (ins if a == EPS else dels if b == EPS else subs)[(a, b) if a != EPS and b != EPS else
                                                                       (b if a == EPS else a)] += 1
            f.write(f"{i}:\t{' '.join(parts)}\n")
        f.write("\nSUBSTITUTIONS: count ref -> hyp\n")
        f.writelines(f"{n}   {a} -> {b}\n" for (a, b), n in subs.most_common())
        f.write("\nDELETIONS: count ref\n")
        f.writelines(f"{n}   {a}\n" for a, n in dels.most_common())
        f.write("\nINSERTIONS: count hyp\n")
        f.writelines(f"{n}   {a}\n" for a, n in ins.most_common())
    with open(out_dir / f"wer-summary-{test_set}-{method}.txt", "w", encoding="utf-8") as f:
        f.write("settings\tWER\tCER\tRTF\n")
        f.write(f"{method}\t{100 * w.rate:.2f}\t{100 * c.rate:.2f}\t{rtf:.4f}\n")
    return w, c
