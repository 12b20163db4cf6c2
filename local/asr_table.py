#!/usr/bin/env python3
"""The fine-tuning table of egs/mini: budget x init x decoding, WER and CER, mean and spread over seeds.

  asr_table.py FINETUNE_DIR [--test-set test] [--json FINETUNE_DIR/results.json]

FINETUNE_DIR holds one run folder per budget, init and seed, `<budget>_<init>_seed<N>` (init: pretrained or
random_init), each with the icefall-style files of `nest-ssl decode` in `decode/`:
`wer-summary-<test-set>-<greedy|lm>.txt` (a header line, then `method<TAB>WER%<TAB>CER%<TAB>RTF`). The rows go to
the JSON file as a list of {"budget", "init", "seed", "decoding", "wer", "cer"} (fractions, not percent), the table
(mean, sample standard deviation over seeds, seed count) to stdout, with, per budget and decoding, how many
standard deviations of the random-init seeds separate the two inits' means.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

RUN = re.compile(r"^(?P<budget>.+)_(?P<init>pretrained|random_init)_seed(?P<seed>\d+)$")
DECODINGS = ("greedy", "lm")


class TableError(Exception):
    pass


def read_summary(path: Path) -> tuple[float, float]:
    """(WER, CER) as fractions from a wer-summary file."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0].split("\t")[:3] != ["settings", "WER", "CER"]:
        raise TableError(f"{path}: not a wer-summary file of nest-ssl decode (settings, WER, CER, RTF)")
    fields = lines[1].split("\t")
    try:
        return float(fields[1]) / 100, float(fields[2]) / 100
    except (IndexError, ValueError):
        raise TableError(f"{path}: line 2 is not 'method<TAB>WER<TAB>CER<TAB>RTF'") from None


def collect(finetune_dir: Path, test_set: str = "test", runs: list[str] | None = None) -> list[dict]:
    """One row per run folder (those named in `runs`, else all) and decoding found; a run without its decoding
    files yet is left out."""
    rows = []
    for run in sorted(p for p in finetune_dir.iterdir() if p.is_dir()):
        m = RUN.match(run.name)
        if not m or (runs is not None and run.name not in runs):
            continue
        for decoding in DECODINGS:
            summary = run / "decode" / f"wer-summary-{test_set}-{decoding}.txt"
            if summary.is_file():
                w, c = read_summary(summary)
                rows.append({"budget": m["budget"], "init": m["init"], "seed": int(m["seed"]), "decoding": decoding,
                             "wer": round(w, 6), "cer": round(c, 6)})
    rows.sort(key=lambda r: (_budget_key(r["budget"]), r["init"] != "pretrained", r["decoding"], r["seed"]))
    return rows


def _budget_key(name: str) -> tuple[float, str]:
    """10min before 1h before 10h; names without a duration after, alphabetically."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(min|h)", name)
    return (float(m[1]) * (60 if m[2] == "h" else 1), name) if m else (math.inf, name)


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def groups(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    out: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["budget"], r["init"], r["decoding"]), []).append(r)
    return out


def table(rows: list[dict], test_set: str = "test") -> str:
    if not rows:
        return "no decoded run yet\n"
    g = groups(rows)
    lines = [f"{'budget':<8} {'init':<12} {'decoding':<8} {'WER (' + test_set + ')':>16} {'CER':>16} seeds",
             "-" * 72]
    for (budget, init, decoding), rs in g.items():
        w, ws = mean_std([r["wer"] for r in rs])
        c, cs = mean_std([r["cer"] for r in rs])
        lines.append(f"{budget:<8} {init:<12} {decoding:<8} {w:>8.3f} ± {ws:<5.3f} {c:>8.3f} ± {cs:<5.3f} {len(rs)}")
    comparisons = []
    for (budget, init, decoding), rs in g.items():
        rnd = g.get((budget, "random_init", decoding))
        if init != "pretrained" or not rnd:
            continue
        p, _ = mean_std([r["wer"] for r in rs])
        m, s = mean_std([r["wer"] for r in rnd])
        gap = f"{(m - p) / s:.1f} std of the random seeds" if s > 0 else "std of the random seeds 0"
        comparisons.append(f"{budget} {decoding}: pretrained WER {p:.3f} vs random init {m:.3f}: {m - p:+.3f} "
                           f"({gap}, {len(rnd)} seeds)")
    return "\n".join(lines + ([""] + comparisons if comparisons else [])) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("finetune_dir")
    p.add_argument("--test-set", default="test", help="the decoded set whose WER/CER make the table")
    p.add_argument("--runs", default=None, help="only these run folders (space-separated names)")
    p.add_argument("--json", default=None, help="where the rows go (default FINETUNE_DIR/results.json)")
    a = p.parse_args(argv)
    d = Path(a.finetune_dir)
    if not d.is_dir():
        print(f"asr_table.py: {d} does not exist; run the fine-tuning and decoding stages first", file=sys.stderr)
        return 2
    try:
        rows = collect(d, a.test_set, a.runs.split() if a.runs is not None else None)
    except TableError as err:
        print(f"asr_table.py: {err}", file=sys.stderr)
        return 2
    out = Path(a.json) if a.json else d / "results.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out)
    sys.stdout.write(table(rows, a.test_set))
    print(f"{len(rows)} rows written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
