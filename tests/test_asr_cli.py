"""`nest-ssl finetune`, `decode` and `transcribe` as real subprocesses on the tone corpus (tests/asr_corpus.py):
a tiny model fine-tuned to CER 0 decodes the test set exactly, greedy and with our own LM; --avg averages; user
mistakes give one line, exit 2 and write nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from asr_corpus import SENTENCES, TINY, make_asr_corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def nest_ssl(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "nest_ssl.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    corpus = make_asr_corpus(root / "corpus")
    out = root / "run"
    p = nest_ssl("finetune", "--train-manifest", corpus["train"], "--dev-manifest", corpus["test"], "--out-dir", out,
                 "--tokenizer-type", "char", "--steps", 60, "--save-every", 20, "--lr", 3e-3, *TINY)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "encoder initialised at random" in p.stdout
    return corpus, out, p.stdout


@pytest.mark.slow
def test_finetune_reaches_cer_0_and_keeps_its_checkpoints(run):
    corpus, out, stdout = run
    assert sorted(p.name for p in out.glob("step-*.ckpt")) == ["step-20.ckpt", "step-40.ckpt", "step-60.ckpt"]
    assert (out / "tokenizer" / "vocab.txt").is_file()
    last = (out / "log.tsv").read_text().splitlines()[-1].split("\t")
    assert last[0] == "60" and float(last[3]) == 0.0, stdout


@pytest.mark.slow
def test_decode_greedy_and_lm_exactly_with_icefall_outputs(run, tmp_path):
    corpus, out, _ = run
    p = nest_ssl("decode", "--model", out, "--test", f"tones={corpus['test']}", "--out-dir", tmp_path / "dec",
                 "--lm-text", corpus["lm_text"])
    assert p.returncode == 0, p.stdout + p.stderr
    for method in ("greedy", "lm"):
        recogs = (tmp_path / "dec" / f"recogs-tones-{method}.txt").read_text().splitlines()
        hyps = [line.split("hyp=")[1] for line in recogs if "\thyp=" in line]
        assert hyps == [str(s.split()) for s in SENTENCES], (method, recogs)
        summary = (tmp_path / "dec" / f"wer-summary-tones-{method}.txt").read_text().splitlines()
        assert summary[0] == "settings\tWER\tCER\tRTF" and summary[1].startswith(f"{method}\t0.00\t0.00\t")
        assert float(summary[1].split("\t")[3]) > 0
        assert (tmp_path / "dec" / f"errs-tones-{method}.txt").read_text().startswith("%WER = 0.00")
    assert (tmp_path / "dec" / "lm-3gram.arpa").is_file()
    assert "tones\tlm\tWER 0.00\tCER 0.00\tRTF" in p.stdout


@pytest.mark.slow
def test_transcribe_prints_path_tab_text(run):
    corpus, out, _ = run
    wavs = sorted((corpus["test"].parent / "test").glob("*.wav"))[:2]
    p = nest_ssl("transcribe", out / "step-60.ckpt", *wavs, "--lm-text", corpus["lm_text"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"{w}\t{SENTENCES[i]}" for i, w in enumerate(wavs)]


@pytest.mark.slow
def test_avg_decodes_the_hand_computed_mean(run, tmp_path):
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.checkpoint import load_checkpoint

    corpus, out, _ = run
    model, _, paths = load_asr(out, avg=2)
    assert [p.name for p in paths] == ["step-40.ckpt", "step-60.ckpt"]
    a, b = (load_checkpoint(out / f"step-{n}.ckpt")["state_dict"] for n in (40, 60))
    key = "encoder.layers.0.self_attn.linear_q.weight"
    assert torch.allclose(model.state_dict()[key], (a[key] + b[key]) / 2)
    p = nest_ssl("decode", "--model", out / "step-60.ckpt", "--avg", 2, "--test", f"t={corpus['test']}",
                 "--out-dir", tmp_path / "d")
    assert p.returncode == 0 and "averaged 2" in p.stdout, p.stdout + p.stderr


def _one_line_exit_2(code_or_proc, err=None, *needles):
    """A subprocess (CompletedProcess) or an in-process main() (exit code, stderr)."""
    if isinstance(code_or_proc, subprocess.CompletedProcess):
        code, err, needles = code_or_proc.returncode, code_or_proc.stderr, (err, *needles)
    else:
        code = code_or_proc
    lines = err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in lines if line.startswith("nest-ssl: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in errors[0], errors[0]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A 2-step run (in-process, seconds): enough for the checks that read a model but not its accuracy."""
    from nest_ssl.cli import main

    root = tmp_path_factory.mktemp("asr_quick")
    corpus = make_asr_corpus(root / "corpus")
    out = root / "run"
    assert main(["finetune", "--train-manifest", str(corpus["train"]), "--out-dir", str(out), "--tokenizer-type",
                 "char", "--steps", "2", "--save-every", "1", *TINY]) == 0
    return corpus, out


def test_user_mistakes_give_one_line_exit_2_and_write_nothing(quick_run, tmp_path, capsys):
    from evaluate_corpus import tiny_checkpoint
    from nest_ssl.cli import main

    def cli(*args):
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err

    corpus, out = quick_run
    # out-of-vocabulary transcript in the test set: the line is named
    bad = tmp_path / "bad.json"
    lines = corpus["test"].read_text().splitlines()
    rec = json.loads(lines[1])
    rec["text"] = "the cat!"
    bad.write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    _one_line_exit_2(*cli("decode", "--model", out, "--test", f"t={bad}", "--out-dir", tmp_path / "o1"),
                     f"{bad}:2", "['!']")
    # ... and in the training set, with a tokenizer given
    _one_line_exit_2(*cli("finetune", "--train-manifest", bad, "--out-dir", tmp_path / "o2", "--tokenizer",
                          out / "tokenizer", "--tokenizer-type", "char", *TINY), f"{bad}:2")
    # an empty test set
    empty = tmp_path / "empty.json"
    empty.write_text("")
    _one_line_exit_2(*cli("decode", "--model", out, "--test", f"t={empty}", "--out-dir", tmp_path / "o3"),
                     "has no utterance")
    # a missing tokenizer
    _one_line_exit_2(*cli("decode", "--model", out, "--tokenizer", tmp_path / "nope", "--test",
                          f"t={corpus['test']}", "--out-dir", tmp_path / "o4"), "no tokenizer folder at", "nope")
    _one_line_exit_2(*cli("finetune", "--train-manifest", corpus["train"], "--out-dir", tmp_path / "o5",
                          "--tokenizer", tmp_path / "nope", *TINY), "tokenizer folder", "does not exist")
    # an encoder config that does not match the pretrained checkpoint
    ckpt = tiny_checkpoint(tmp_path / "nest.ckpt")
    _one_line_exit_2(*cli("finetune", "--train-manifest", corpus["train"], "--out-dir", tmp_path / "o6",
                          "--init-from", ckpt, "--tokenizer-type", "char", "encoder.n_layers=3"),
                     "n_layers=2", "n_layers=3")
    # --avg beyond the run's checkpoints; a run folder reused
    _one_line_exit_2(*cli("decode", "--model", out, "--avg", 9, "--test", f"t={corpus['test']}", "--out-dir",
                          tmp_path / "o7"), "holds only 2 step checkpoints")
    _one_line_exit_2(*cli("finetune", "--train-manifest", corpus["test"], "--out-dir", out, "--tokenizer-type",
                          "char", *TINY), "holds a run on", "not this --train-manifest")
    # a test file that is not audio
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    rec = json.loads(lines[0])
    rec["audio_filepath"] = str(broken)
    bad_audio = tmp_path / "bad_audio.json"
    bad_audio.write_text("\n".join([lines[1], json.dumps(rec)]) + "\n")
    _one_line_exit_2(*cli("decode", "--model", out, "--test", f"t={bad_audio}", "--out-dir", tmp_path / "o8"),
                     f"{bad_audio}:2", "cannot be read as audio")
    _one_line_exit_2(*cli("transcribe", out, broken), str(broken), "cannot be read as audio")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 9))


def test_a_user_mistake_in_a_subprocess_has_no_traceback(quick_run, tmp_path):
    corpus, out = quick_run
    empty = tmp_path / "empty.json"
    empty.write_text("")
    p = nest_ssl("decode", "--model", out, "--test", f"t={empty}", "--out-dir", tmp_path / "o")
    _one_line_exit_2(p, "has no utterance")
    assert not (tmp_path / "o").exists()


def test_init_from_pretrained_is_reported(quick_run, tmp_path, capsys):
    from evaluate_corpus import tiny_checkpoint
    from nest_ssl.cli import main

    corpus, _ = quick_run
    ckpt = tiny_checkpoint(tmp_path / "nest.ckpt")
    assert main(["finetune", "--train-manifest", str(corpus["train"]), "--out-dir", str(tmp_path / "r"),
                 "--init-from", str(ckpt), "--tokenizer-type", "char", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    import re

    found = [m for m in re.finditer(r"^initialised (\d+) of (\d+) encoder tensors .* from (\S+)$", out, re.M)]
    assert len(found) == 1, out
    assert found[0].group(1) == found[0].group(2) and int(found[0].group(1)) > 50 and found[0].group(3) == str(ckpt)
    assert (tmp_path / "r" / "finetune.log").read_text().splitlines()[0] == found[0].group(0)


def test_resume_mid_finetuning_gives_the_same_losses(quick_run, tmp_path, capsys):
    from nest_ssl.cli import main

    corpus, _ = quick_run
    common = ["finetune", "--train-manifest", str(corpus["train"]), "--dev-manifest", str(corpus["test"]),
              "--tokenizer-type", "char", "--save-every", "2", "--batch-size", "3", "--spec-augment", "time_masks=2",
              "--spec-augment", "time_width=0.05", *TINY]
    assert main([*common, "--out-dir", str(tmp_path / "whole"), "--steps", "6"]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "cut"), "--steps", "3"]) == 0
    (tmp_path / "cut" / "step-3.ckpt").unlink()  # stopped after step 3 was logged but before its checkpoint
    assert main([*common, "--out-dir", str(tmp_path / "cut"), "--steps", "6"]) == 0
    assert "resuming from" in capsys.readouterr().out
    whole = (tmp_path / "whole" / "log.tsv").read_text().splitlines()
    cut = (tmp_path / "cut" / "log.tsv").read_text().splitlines()
    assert len(whole) == 7 and cut == whole


@pytest.mark.slow
def test_bpe_tokenizer_trained_by_finetune_decodes_exactly(tmp_path, capsys):
    """The SentencePiece path end to end (in-process): tokenizer trained from the transcripts, greedy and LM."""
    from nest_ssl.cli import main

    corpus = make_asr_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    assert main(["finetune", "--train-manifest", str(corpus["train"]), "--out-dir", str(out), "--tokenizer-type",
                 "bpe", "--vocab-size", "20", "--steps", "80", "--save-every", "80", "--lr", "3e-3", *TINY]) == 0
    assert (out / "tokenizer" / "tokenizer.model").is_file()
    assert main(["decode", "--model", str(out), "--test", f"t={corpus['test']}", "--out-dir", str(tmp_path / "d"),
                 "--lm-text", str(corpus["lm_text"])]) == 0
    printed = capsys.readouterr().out
    assert "t\tgreedy\tWER 0.00\tCER 0.00" in printed and "t\tlm\tWER 0.00\tCER 0.00" in printed, printed
