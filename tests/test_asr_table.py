"""local/asr_table.py: the egs/mini fine-tuning table and results.json, from wer-summary files written by
nest_ssl.asr.results.write_results (the function `nest-ssl decode` uses), read back through the script as run.sh
runs it (a subprocess)."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from nest_ssl.asr.results import write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "local", "asr_table.py")
sys.path.insert(0, os.path.join(REPO, "local"))

import asr_table  # noqa: E402

REF = "the old farmer carried a basket across the river"


def hyp_with(errors: int) -> str:
    """REF with its first `errors` words replaced: WER errors/9."""
    words = REF.split()
    return " ".join(["zz"] * errors + words[errors:])


def decoded(root: Path, run: str, greedy_errors: int, lm_errors: int, test_set="test") -> None:
    for method, e in (("greedy", greedy_errors), ("lm", lm_errors)):
        write_results(root / run / "decode", test_set, method, ["u1"], [REF], [hyp_with(e)], rtf=0.01)


def script(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def grid(tmp_path):
    ft = tmp_path / "finetune"
    decoded(ft, "10min_pretrained_seed1", 3, 1)
    decoded(ft, "10min_pretrained_seed2", 4, 2)
    for seed, (g, lm) in zip((1, 2, 3), ((7, 6), (8, 6), (9, 7))):
        decoded(ft, f"10min_random_init_seed{seed}", g, lm)
    decoded(ft, "1h_pretrained_seed1", 1, 0)
    (ft / "1h_random_init_seed1").mkdir()  # fine-tuned, not decoded yet: left out
    (ft / "tokenizer").mkdir()  # not a run folder
    decoded(ft, "10min_pretrained_seed1", 5, 5, test_set="dev")  # another set: not in the test table
    return ft


def test_rows_are_the_decoded_runs_as_fractions(grid):
    r = script(grid)
    assert r.returncode == 0, r.stderr
    rows = json.loads((grid / "results.json").read_text())
    assert all(set(x) == {"budget", "init", "seed", "decoding", "wer", "cer"} for x in rows)
    assert len(rows) == 2 * (2 + 3 + 1)
    got = {(x["budget"], x["init"], x["seed"], x["decoding"]): x["wer"] for x in rows}
    assert got[("10min", "pretrained", 2, "greedy")] == pytest.approx(4 / 9, abs=1e-4)
    assert got[("10min", "random_init", 3, "lm")] == pytest.approx(7 / 9, abs=1e-4)
    assert got[("1h", "pretrained", 1, "lm")] == 0.0
    assert not any(k[1] == "random_init" and k[0] == "1h" for k in got)
    cer = {(x["budget"], x["init"], x["seed"], x["decoding"]): x["cer"] for x in rows}
    # "zz" for "the" is 3 character edits (2 substitutions and a deletion) over the reference's characters
    assert 0 < cer[("10min", "pretrained", 1, "lm")] < got[("10min", "pretrained", 1, "lm")]
    # 10min before 1h, pretrained before random_init
    assert [x["budget"] for x in rows].index("1h") == len(rows) - 2


def test_table_gives_mean_sample_std_and_the_gap_in_random_stds(grid):
    r = script(grid, "--json", grid / "other.json")
    assert r.returncode == 0, r.stderr
    assert (grid / "other.json").is_file() and not (grid / "results.json").exists()
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("10min") and "random_init" in ln and " lm " in ln)
    wers = [6 / 9, 6 / 9, 7 / 9]
    m, s = statistics.mean(wers), statistics.stdev(wers)
    assert f"{m:.3f} ± {s:.3f}" in line and line.rstrip().endswith(" 3")
    gap = next(ln for ln in r.stdout.splitlines() if ln.startswith("10min lm:"))
    p = statistics.mean([1 / 9, 2 / 9])
    assert f"pretrained WER {p:.3f} vs random init {m:.3f}" in gap and f"({(m - p) / s:.1f} std" in gap
    # one seed: spread 0, no comparison without random-init runs
    assert any(ln.startswith("1h") and "± 0.000" in ln for ln in r.stdout.splitlines())
    assert not any(ln.startswith("1h ") and "std of" in ln for ln in r.stdout.splitlines())


def test_dev_set_table_reads_the_dev_files(grid):
    r = script(grid, "--test-set", "dev")
    assert r.returncode == 0, r.stderr
    rows = json.loads((grid / "results.json").read_text())
    assert [(x["seed"], x["decoding"], round(x["wer"], 4)) for x in rows] == [(1, "greedy", round(5 / 9, 4)),
                                                                             (1, "lm", round(5 / 9, 4))]


def test_a_broken_summary_or_missing_folder_is_one_line_and_exit_2(tmp_path, grid):
    r = script(tmp_path / "nowhere")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nowhere" in r.stderr
    bad = grid / "10min_pretrained_seed1" / "decode" / "wer-summary-test-lm.txt"
    bad.write_text("WER 12\n")
    r = script(grid)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(bad) in r.stderr


def test_mean_std_and_budget_order():
    assert asr_table.mean_std([0.5]) == (0.5, 0.0)
    m, s = asr_table.mean_std([0.1, 0.2, 0.3])
    assert m == pytest.approx(0.2) and s == pytest.approx(0.1)
    assert sorted(["1h", "other", "10h", "10min"], key=asr_table._budget_key) == ["10min", "1h", "10h", "other"]


def test_runs_restricts_the_table_to_the_grid_asked(grid):
    r = script(grid, "--runs", "10min_pretrained_seed1 1h_pretrained_seed1 10min_random_init_seed9")
    assert r.returncode == 0, r.stderr
    rows = json.loads((grid / "results.json").read_text())
    assert sorted({(x["budget"], x["init"], x["seed"]) for x in rows}) == [("10min", "pretrained", 1),
                                                                          ("1h", "pretrained", 1)]
    assert "random_init" not in r.stdout
