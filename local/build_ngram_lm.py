#!/usr/bin/env python3
"""A word n-gram LM (ARPA) from the head of a text file, with our own interpolated Kneser-Ney (nest_ssl/asr/lm.py).

    build_ngram_lm.py --text librispeech-lm-norm.txt[.gz] --max-sentences 200000 --order 3 --out lm.arpa [--case upper]

Our estimation keeps every n-gram count in memory (Python dictionaries), so it takes a capped head of the text: the
first `--max-sentences` non-empty lines (0: all). LibriSpeech's LM text (librispeech-lm-norm.txt, about 40 M
sentences, 800 M words) is far beyond it; for the whole of it use an ARPA made by a real toolkit (openslr 11's
3-gram.pruned.1e-7.arpa.gz; KenLM's lmplz). Lines are normalised like the transcripts (`--case`, whitespace
collapsed). The ARPA is written to OUT.tmp and renamed.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nest_ssl.errors import UserError  # noqa: E402


def head(path: Path, n: int, case: str):
    from nest_ssl.asr.lm import open_text

    change = {"upper": str.upper, "lower": str.lower, "none": str}[case]
    with open_text(path) as f:
        lines = (" ".join(change(line).split()) for line in f)
        lines = (line for line in lines if line)
        yield from (itertools.islice(lines, n) if n > 0 else lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True, help="one sentence a line; .gz is read compressed")
    p.add_argument("--max-sentences", type=int, default=200000, help="the first N non-empty lines (0: all)")
    p.add_argument("--order", type=int, default=3, choices=(1, 2, 3))
    p.add_argument("--case", default="upper", choices=("upper", "lower", "none"))
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from nest_ssl.asr.lm import estimate, write_arpa

    text = Path(args.text)
    if not text.is_file():
        raise UserError(f"--text {text}: does not exist; give a text file, one sentence a line (egs/librilight: "
                        "librispeech-lm-norm.txt, local/download_librispeech_lm.sh)")
    if args.max_sentences < 0:
        raise UserError(f"--max-sentences {args.max_sentences}: give N >= 0 (0: the whole file)")
    sentences = list(head(text, args.max_sentences, args.case))
    model = estimate(sentences, args.order)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    write_arpa(model, tmp)
    tmp.replace(out)
    sizes = ", ".join(f"{len(model[n])} {n}-grams" for n in sorted(model))
    print(f"{out}: {len(sentences)} sentences, {sizes}")
    return 0


if __name__ == "__main__":
    from nest_ssl.cli.guard import run_guarded

    sys.exit(run_guarded(main))
