"""egs/librilight's evaluation data stage on a tiny fake LibriSpeech + librispeech_finetuning layout (no download can
run here): folders to CutSets in the evaluator's contract, and the argument mistakes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "local" / "prepare_librispeech_eval.py"
RUN = REPO / "egs" / "librilight" / "run.sh"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PATH=str(REPO / ".venv" / "bin") + os.pathsep + os.environ.get("PATH", ""))


def _chapter(folder: Path, speaker: str, chapter: str, texts):
    d = folder / speaker / chapter
    d.mkdir(parents=True)
    lines = []
    for i, text in enumerate(texts):
        uid = f"{speaker}-{chapter}-{i:04d}"
        sf.write(d / f"{uid}.flac", (0.1 * np.sin(np.arange(8000) * 0.05)).astype(np.float32), 16000)
        lines.append(f"{uid} {text}")
    (d / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def _fake_layout(root: Path):
    ls = root / "LibriSpeech"
    for n, part in enumerate(("dev-clean", "dev-other", "test-clean", "test-other")):
        _chapter(ls / part, str(100 + n), "10", ["HELLO WORLD", "IT'S A TEST"])
    ft = root / "librispeech_finetuning"
    for fold in range(6):
        _chapter(ft / "1h" / str(fold) / "clean", str(200 + fold), "5", ["ONE TWO"])
    _chapter(ft / "9h" / "other", "300", "7", ["THREE FOUR", "FIVE"])
    return ls, ft


def _run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=120, **kw)


def test_folders_become_labelled_cutsets(tmp_path):
    ls, ft = _fake_layout(tmp_path)
    out = tmp_path / "eval_data"
    r = _run([sys.executable, SCRIPT, "--librispeech-dir", ls, "--finetuning-dir", ft, "--out-dir", out])
    assert r.returncode == 0, r.stderr[-2000:]
    # Libri-light's subsets by folder: 10min = 1h/0, 1h = 1h/*, 10h = 1h/* + 9h
    sizes = {s: len(CutSet.from_file(out / f"train_{s}_cuts.jsonl.gz")) for s in ("10min", "1h", "10h")}
    assert sizes == {"10min": 1, "1h": 6, "10h": 8}
    dev = CutSet.from_file(out / "dev_clean_cuts.jsonl.gz")
    texts = sorted(c.supervisions[0].text for c in dev)
    assert texts == ["hello world", "it's a test"]  # lower-cased for the CTC vocabulary
    assert {c.supervisions[0].speaker for c in dev} == {"100"}
    train = CutSet.from_file(out / "train_10h_cuts.jsonl.gz")
    assert all(len(c.supervisions) == 1 and c.supervisions[0].duration == c.duration for c in train)
    assert {c.supervisions[0].speaker for c in train} >= {"200", "300"}
    for part in ("dev_other", "test_clean", "test_other"):
        assert len(CutSet.from_file(out / f"{part}_cuts.jsonl.gz")) == 2


def test_argument_mistakes_are_one_line_and_exit_2(tmp_path):
    ls, ft = _fake_layout(tmp_path)
    r = _run([sys.executable, SCRIPT, "--librispeech-dir", tmp_path / "nope", "--finetuning-dir", ft,
              "--out-dir", tmp_path / "o"])
    assert r.returncode == 2 and "--librispeech-dir" in r.stderr and "not a folder" in r.stderr
    r = _run([sys.executable, SCRIPT, "--librispeech-dir", ls, "--finetuning-dir", ft, "--out-dir", tmp_path / "o",
              "--subsets", "5min"])
    assert r.returncode == 2 and "choose from 10min, 1h, 10h" in r.stderr
    r = _run([sys.executable, SCRIPT, "--librispeech-dir", ls, "--finetuning-dir", ls, "--out-dir", tmp_path / "o"])
    assert r.returncode == 2 and "no 1h/0/ folder" in r.stderr and "Traceback" not in r.stderr


def test_recipe_stage_8_prepares_and_stage_9_needs_a_model(tmp_path):
    ls, ft = _fake_layout(tmp_path)
    data = tmp_path / "data"
    r = _run(["bash", RUN, "--stage", "8", "--stop-stage", "8", "--data-dir", data, "--exp-dir", tmp_path / "exp",
              "--eval-librispeech-dir", ls, "--eval-finetuning-dir", ft, "--eval-subsets", "10min"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (data / "eval" / "train_10min_cuts.jsonl.gz").is_file()
    assert (data / "eval" / "test_other_cuts.jsonl.gz").is_file()
    # without the folders the evaluation stages say so and do nothing (egs/mini hands its stages on to this recipe)
    r = _run(["bash", RUN, "--stage", "8", "--stop-stage", "9", "--data-dir", tmp_path / "d2",
              "--exp-dir", tmp_path / "exp"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--eval-librispeech-dir" in r.stderr and not (tmp_path / "d2" / "eval").exists()
    # stage 9 on prepared data but no exported model: a clear failure naming it
    r = _run(["bash", RUN, "--stage", "9", "--stop-stage", "9", "--data-dir", data, "--exp-dir", tmp_path / "exp",
              "--eval-librispeech-dir", ls, "--eval-finetuning-dir", ft, "--eval-subsets", "10min"])
    assert r.returncode != 0 and "model.nemo" in r.stderr
