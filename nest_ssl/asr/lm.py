"""Word n-gram language models of our own: interpolated Kneser-Ney estimated from a text file, written as ARPA.

Estimation (orders 1-3), as in Chen & Goodman's interpolated Kneser-Ney with one discount per order:
  P(w | h) = max(c(hw) - D, 0) / c(h·) + D N1+(h·) / c(h·) x P(w | h')
where c is the raw count at the highest order and for n-grams starting with <s>, and the continuation count
(distinct left neighbours) below it; D = n1 / (n1 + 2 n2) of that order's counts, clamped to [0.1, 0.9]. The unigram
level interpolates with the uniform distribution over the vocabulary (every word seen, </s> and <unk>), so <unk>
has a probability. In ARPA terms an interpolated model's back-off weight of h is exactly D N1+(h·) / c(h·) (the mass
left to the lower order), and a listed n-gram's probability is the full interpolated P(w | h). Log10 throughout;
<s> gets -99 (it is never predicted). Lines of the text are sentences; words are split on whitespace.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from nest_ssl.asr.errors import ASRError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def _discount(counts: Counter) -> float:
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    d = n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.5
    return min(0.9, max(0.1, d))


def estimate(sentences: Iterable[str], order: int = 3) -> dict[int, dict[tuple, tuple[float, float | None]]]:
    """order -> {ngram: (log10 prob, log10 backoff or None)}."""
    if not 1 <= order <= 3:
        raise ASRError(f"--lm-order {order}: choose 1, 2 or 3")
    sents = [[BOS, *s.split(), EOS] for s in sentences if s.split()]
    if not sents:
        raise ASRError("the language-model text has no words; give a text file with one sentence per line")
    raw: dict[int, Counter] = {n: Counter() for n in range(1, order + 1)}
    for s in sents:
        for n in range(1, order + 1):
            for i in range(len(s) - n + 1):
                raw[n][tuple(s[i:i + n])] += 1
    counts: dict[int, Counter] = {order: raw[order]}
    for n in range(1, order):  # continuation counts, raw for n-grams that start the sentence
        left = defaultdict(set)
        for g in raw[n + 1]:
            left[g[1:]].add(g[0])
        counts[n] = Counter({g: (raw[n][g] if g[0] == BOS else len(left[g])) for g in raw[n] if g != (BOS,)})
        counts[n] = Counter({g: c for g, c in counts[n].items() if c > 0})
    vocab = sorted({w for s in sents for w in s if w != BOS} | {UNK})
    prob: dict[int, dict[tuple, float]] = {}
    bow: dict[int, dict[tuple, float]] = {n: {} for n in range(1, order + 1)}
    # unigrams
    d1 = _discount(counts[1])
    total1 = sum(counts[1].values())
    types1 = len(counts[1])
    prob[1] = {(w,): max(counts[1].get((w,), 0) - d1, 0) / total1 + d1 * types1 / total1 / len(vocab) for w in vocab}
    for n in range(2, order + 1):
        d = _discount(counts[n])
        ctx_total: Counter = Counter()
        ctx_types: Counter = Counter()
        for g, c in counts[n].items():
            ctx_total[g[:-1]] += c
            ctx_types[g[:-1]] += 1
        for h in ctx_total:
            bow[n - 1][h] = d * ctx_types[h] / ctx_total[h]
        prob[n] = {}
        for g, c in counts[n].items():
            lower = _lower_prob(prob, bow, g[1:])
            prob[n][g] = (c - d) / ctx_total[g[:-1]] + bow[n - 1][g[:-1]] * lower
    out = {}
    for n in range(1, order + 1):
        table = {g: (math.log10(p), None) for g, p in prob[n].items()}
        if n == 1:
            table[(BOS,)] = (-99.0, None)
        if n < order:
            table = {g: (lp, math.log10(bow[n][g]) if g in bow[n] else 0.0) for g, (lp, _) in table.items()}
        out[n] = table
    return out


def _lower_prob(prob, bow, g: tuple) -> float:
    """P(g[-1] | g[:-1]) by back-off through the lower orders."""
    n = len(g)
    if g in prob.get(n, {}):
        return prob[n][g]
    return bow[n - 1].get(g[:-1], 1.0) * _lower_prob(prob, bow, g[1:])


def write_arpa(model: dict, path: str | Path) -> Path:
    path = Path(path)
    lines = ["", "\\data\\"] + [f"ngram {n}={len(model[n])}" for n in sorted(model)]
    for n in sorted(model):
        lines += ["", f"\\{n}-grams:"]
        for g in sorted(model[n]):
            lp, b = model[n][g]
            lines.append(f"{lp:.6f}\t{' '.join(g)}" + (f"\t{b:.6f}" if b is not None else ""))
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def build_arpa(text_file: str | Path, out: str | Path, order: int = 3) -> Path:
    text_file = Path(text_file)
    if not text_file.is_file():
        raise ASRError(f"--lm-text {text_file}: does not exist; give a text file, one sentence per line")
    return write_arpa(estimate(text_file.read_text(encoding="utf-8").splitlines(), order), out)


def open_text(path: str | Path):
    """A text file for reading, gzip-compressed when its name ends in .gz (as KenLM reads ARPA files)."""
    path = Path(path)
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA file's 1-gram section, read line by line up to its end (plain or .gz): what the
    decoder's lexicon needs, without holding a large LM's higher orders in memory."""
    words = []
    inside = False
    with open_text(path) as f:
        for line in f:
            line = line.strip()
            if line.endswith("-grams:"):
                if inside:
                    break
                inside = line == "\\1-grams:"
            elif inside and line:
                parts = line.split()  # a 1-gram is one word: tab- or space-separated alike
                if len(parts) >= 2:
                    words.append(parts[1])
            elif line == "\\end\\":
                break
    return words


def read_arpa(path: str | Path) -> dict[int, dict[tuple, tuple[float, float | None]]]:
    """Our own reader (for tests and checks): order -> {ngram: (log10 prob, log10 backoff or None)}."""
    model: dict[int, dict] = {}
    n = 0
    with open_text(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        line = line.strip()
        if line.endswith("-grams:"):
            n = int(line[1:].split("-")[0])
            model[n] = {}
        elif n and line and not line.startswith("\\"):
            parts = line.split("\t")
            model[n][tuple(parts[1].split())] = (float(parts[0]), float(parts[2]) if len(parts) > 2 else None)
    return model


def arpa_logprob(model: dict, history: tuple, word: str) -> float:
    """log10 P(word | history) by ARPA back-off."""
    order = max(model)
    history = history[-(order - 1):] if order > 1 else ()
    while True:
        g = (*history, word)
        if g in model.get(len(g), {}):
            return model[len(g)][g][0]
        if not history:
            return model[1][(UNK,)][0]
        b = model[len(history)].get(history, (0.0, 0.0))[1] or 0.0
        return b + arpa_logprob(model, history[1:], word)
