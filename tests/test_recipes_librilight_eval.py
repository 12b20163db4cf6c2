"""egs/librilight's evaluation data stage on a tiny fake LibriSpeech + librispeech_finetuning layout (no download can
run here): folders to CutSets in the evaluator's contract, and the argument mistakes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


def _run(args, timeout=120, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=timeout, **kw)


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


# ---- stages 10-14: fine-tuning on the Libri-light splits and decoding (tiny model, tiny fake corpus) ----------------

WORDS = ["ONE TWO THREE", "TWO THREE FOUR", "FOUR FIVE ONE", "FIVE ONE TWO", "THREE FOUR FIVE"]


def _ft_layout(root: Path):
    """The fake layout with utterances long enough for CTC (2 s) and LibriSpeech's train-clean-100 for the 100h
    split; transcripts upper case, as LibriSpeech distributes them."""
    def chapter(folder, speaker, chapter_id, texts):
        d = folder / speaker / chapter_id
        d.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            uid = f"{speaker}-{chapter_id}-{i:04d}"
            t = np.arange(32000) / 16000
            sf.write(d / f"{uid}.flac", (0.1 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32), 16000)
            lines.append(f"{uid} {text}")
        (d / f"{speaker}-{chapter_id}.trans.txt").write_text("\n".join(lines) + "\n")

    ls = root / "LibriSpeech"
    for n, part in enumerate(("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100")):
        chapter(ls / part, str(100 + n), "10", WORDS[n:] + WORDS[:n][:1])
    ft = root / "librispeech_finetuning"
    for fold in range(6):
        chapter(ft / "1h" / str(fold) / ("clean" if fold % 2 else "other"), str(200 + fold), "5", WORDS[fold % 5:][:2])
    chapter(ft / "9h" / "clean", "300", "7", WORDS[:3])
    return ls, ft


def _tiny_exported_model(path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from evaluate_corpus import tiny_checkpoint

    ckpt = tiny_checkpoint(path.parent / "nest.ckpt")
    path.parent.mkdir(parents=True, exist_ok=True)
    r = _run([sys.executable, "-m", "nest_ssl.cli", "export", ckpt, "--to", "nemo", path])
    assert r.returncode == 0, r.stderr[-2000:]
    return path


def _gzipped_arpa(tmp_path: Path) -> Path:
    import gzip

    from nest_ssl.asr.lm import estimate, write_arpa

    arpa = write_arpa(estimate(WORDS * 2, 3), tmp_path / "lm.arpa")
    gz = tmp_path / "lm.arpa.gz"
    gz.write_bytes(gzip.compress(arpa.read_bytes()))
    return gz


def test_arpa_unigrams_reads_plain_and_gzip(tmp_path):
    from nest_ssl.asr.lm import arpa_unigrams, read_arpa

    gz = _gzipped_arpa(tmp_path)
    plain = [g[0] for g in read_arpa(tmp_path / "lm.arpa")[1]]
    assert arpa_unigrams(gz) == arpa_unigrams(tmp_path / "lm.arpa") == plain
    assert set(plain) == {"<s>", "</s>", "<unk>", "ONE", "TWO", "THREE", "FOUR", "FIVE"}
    assert read_arpa(gz) == read_arpa(tmp_path / "lm.arpa")


def _ft_cmd(tmp_path, ls, ft, *extra):
    return ["bash", RUN, "--stage", "10", "--stop-stage", "14", "--data-dir", tmp_path / "data",
            "--exp-dir", tmp_path / "exp", "--exp-name", "tiny", "--eval-librispeech-dir", ls,
            "--eval-finetuning-dir", ft, *extra]


def test_finetuning_options_mistakes_are_one_line_exit_2(tmp_path):
    ls, ft = _fake_layout(tmp_path)
    for extra, needle in ((["--ft-splits", "10min,5min"], "unknown split '5min'"),
                          (["--lm-arpa", tmp_path / "nope.arpa.gz"], "--lm-arpa"),
                          (["--lm-text", tmp_path / "nope.txt"], "--lm-text"),
                          (["--lm-arpa", RUN, "--lm-text", RUN], "give one of them"),
                          (["--tokenizer-type", "wordpiece"], "--tokenizer-type"),
                          (["--ft-steps", "many"], "--ft-steps"),
                          (["--ft-dev", "test_clean"], "--ft-dev")):
        r = _run(_ft_cmd(tmp_path, ls, ft, *extra))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (extra, r.stderr)
    assert "does not exist" in _run(_ft_cmd(tmp_path, ls, ft, "--lm-arpa", tmp_path / "x.arpa")).stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "exp").exists()


def test_stage_12_estimates_the_lm_from_the_head_of_the_text(tmp_path):
    ls, ft = _fake_layout(tmp_path)
    text = tmp_path / "lm.txt"
    text.write_text("one two\n\n  Three   four\nfive six\n")  # the head: 2 non-empty lines, upper-cased
    r = _run(_ft_cmd(tmp_path, ls, ft, "--stage", "12", "--stop-stage", "12", "--lm-text", text,
                     "--lm-max-sentences", "2", "--lm-order", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    from nest_ssl.asr.lm import read_arpa

    arpa = tmp_path / "data" / "asr" / "lm" / "lm_2gram_head2.arpa"
    model = read_arpa(arpa)
    assert sorted(model) == [1, 2]
    assert {g[0] for g in model[1]} == {"<s>", "</s>", "<unk>", "ONE", "TWO", "THREE", "FOUR"}


@pytest.mark.slow
def test_stages_10_to_14_finetune_and_decode_every_split(tmp_path):
    """Stages 10-14 through run.sh on the fake layout: manifests, per-split tokenizers, fine-tuning from the exported
    model, decoding greedy and with a gzip-compressed ARPA, averaged over 2 checkpoints; a rerun skips them all."""
    ls, ft = _ft_layout(tmp_path)
    _tiny_exported_model(tmp_path / "exp" / "tiny" / "export" / "model.nemo")
    gz = _gzipped_arpa(tmp_path)
    cmd = _ft_cmd(tmp_path, ls, ft, "--ft-splits", "10min,100h", "--vocab-size", "40", "--ft-steps", "2",
                  "--ft-save-every", "1", "--ft-batch-size", "2", "--avg", "2", "--lm-arpa", gz,
                  "--decode-opts", "--beam-size 5")
    r = _run(cmd, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    man = tmp_path / "data" / "asr" / "manifests"
    import json

    rows = [json.loads(x) for x in (man / "train_10min.json").read_text().splitlines()]
    assert [x["text"] for x in rows] == WORDS[:2]  # 1h/0, upper case as LibriSpeech writes it
    assert Path(rows[0]["audio_filepath"]).is_absolute()
    assert abs(rows[0]["duration"] - 2.0) < 1e-3
    assert len((man / "train_100h.json").read_text().splitlines()) == 2  # train-clean-100
    for split in ("10min", "100h"):
        tok = tmp_path / "data" / "asr" / "lang_bpe_40" / split
        assert (tok / "tokenizer.model").is_file()
        vocab = (tok / "tokenizer.vocab").read_text()
        assert all(f"{c}\t" in vocab for c in "QXZ'")  # LibriSpeech's alphabet, whatever the split's text has
        run = tmp_path / "exp" / "tiny" / "finetune" / split
        assert sorted(p.name for p in run.glob("step-*.ckpt")) == ["step-1.ckpt", "step-2.ckpt"]
        assert "initialised" in (run / "finetune.log").read_text().splitlines()[0]
        dec = run / "decode"
        for s in ("dev-clean", "dev-other", "test-clean", "test-other"):
            for m in ("greedy", "lm"):
                for kind in ("recogs", "errs", "wer-summary"):
                    assert (dec / f"{kind}-{s}-{m}.txt").is_file(), (split, s, m, kind)
    assert "(averaged 2)" in r.stdout
    table = (tmp_path / "exp" / "tiny" / "finetune" / "wer.tsv").read_text().splitlines()
    assert table[0] == "split\tset\tmethod\tWER\tCER" and len(table) == 1 + 2 * 4 * 2
    assert {tuple(x.split("\t")[:3]) for x in table[1:]} == {
        (sp, s, m) for sp in ("10min", "100h") for s in ("dev-clean", "dev-other", "test-clean", "test-other")
        for m in ("greedy", "lm")}
    ckpt = tmp_path / "exp" / "tiny" / "finetune" / "10min" / "step-2.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    r = _run(cmd, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # --stage 10 forces stage 10; it writes the same manifests, so nothing after it runs again
    assert "forced by --stage 10" in r.stderr, r.stderr
    for n in ("11", "13_10min", "13_100h", "14_10min", "14_100h"):
        assert any(line.split(") ", 1)[-1].startswith(f"Stage {n}:") and "skipped, up to date" in line
                   for line in r.stderr.splitlines()), (n, r.stderr)
    assert ckpt.stat().st_mtime_ns == mtime


def test_nemo_manifests_upper_case_and_the_100h_split(tmp_path):
    ls, ft = _ft_layout(tmp_path)
    (ls / "dev-clean" / "100" / "10" / "100-10.trans.txt").write_text(
        "100-10-0000 ONE  TWO three\n100-10-0001 TWO\n100-10-0002 X\n100-10-0003 Y\n100-10-0004 Z\n")
    out = tmp_path / "m"
    r = _run([sys.executable, SCRIPT, "--librispeech-dir", ls, "--finetuning-dir", ft, "--out-dir", out,
              "--subsets", "10h,100h", "--format", "nemo", "--case", "upper"])
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    dev = [json.loads(x) for x in (out / "dev_clean.json").read_text().splitlines()]
    assert sorted(x["text"] for x in dev)[:2] == ["ONE TWO THREE", "TWO"]  # upper case, whitespace collapsed
    assert all(Path(x["audio_filepath"]).is_file() and x["duration"] == 2.0 for x in dev)
    assert len((out / "train_10h.json").read_text().splitlines()) == sum(len(WORDS[f % 5:][:2]) for f in range(6)) + 3
    train100 = [json.loads(x) for x in (out / "train_100h.json").read_text().splitlines()]
    assert {Path(x["audio_filepath"]).parts[-4] for x in train100} == {"train-clean-100"}
    r = _run([sys.executable, SCRIPT, "--librispeech-dir", tmp_path / "LibriSpeech", "--finetuning-dir", ft,
              "--out-dir", out, "--subsets", "100h", "--format", "nemo"])
    assert r.returncode == 0
    import shutil

    shutil.rmtree(ls / "train-clean-100")
    r = _run([sys.executable, SCRIPT, "--librispeech-dir", ls, "--finetuning-dir", ft, "--out-dir", out,
              "--subsets", "100h", "--format", "nemo"])
    assert r.returncode == 2 and "no train-clean-100/ folder" in r.stderr and "Traceback" not in r.stderr


def test_tokenizers_hold_the_required_alphabet():
    from nest_ssl.asr.tokenizer import train_tokenizer

    texts = ["ONE TWO THREE", "TWO THREE FOUR"] * 3
    for kind, size in (("bpe", 40), ("unigram", 32), ("char", 0)):
        tok = train_tokenizer(texts, kind, size, required_chars="ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
        ids = tok.encode("QUIZ JAX'S", "test")  # letters the texts never had
        assert tok.decode(ids) == "QUIZ JAX'S", kind
