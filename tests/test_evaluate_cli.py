"""`nest-ssl evaluate` end to end on a generated labelled corpus (real WAV files, lhotse CutSets, a real checkpoint):
the stage as a subprocess, .nemo input, determinism, and every user mistake giving one clear line and exit 2."""

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from evaluate_corpus import make_corpus, tiny_checkpoint
from nest_ssl.cli import main as cli
from nest_ssl.evaluate.run import EvalOptions, evaluate

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PATH=str(REPO / ".venv" / "bin") + os.pathsep + os.environ.get("PATH", ""))
QUICK = ["--epochs", "2", "--finetune-steps", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    cuts = make_corpus(d / "corpus", per_speaker=(3, 1, 1))
    return d, cuts, tiny_checkpoint(d / "tiny.ckpt")


def _cuts_args(cuts):
    return ["--train-cuts", str(cuts["train"]), "--dev-cuts", str(cuts["dev"]), "--test-cuts", str(cuts["test"])]


def test_evaluate_stage_as_a_subprocess(corpus, tmp_path):
    d, cuts, ckpt = corpus
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "evaluate", "--model", str(ckpt), *_cuts_args(cuts),
                        "--out-dir", str(out), "--random-seeds", "3", *QUICK],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pretrained > random + 3 std" in r.stdout and "per-layer linear probe" in r.stdout

    rows = json.loads((out / "results.json").read_text())
    assert all(set(row) == {"task", "model", "seed", "metric", "value", "higher_is_better"} for row in rows)

    def models(task, metric):
        return sorted((row["model"], row["seed"]) for row in rows if row["task"] == task and row["metric"] == metric)

    probe_models = [("fbank", 0), ("pretrained", 0), ("random_init", 0), ("random_init", 1), ("random_init", 2)]
    assert models("phone", "accuracy") == probe_models
    assert models("speaker", "accuracy") == probe_models
    assert models("asr", "cer") == probe_models and models("asr", "wer") == probe_models
    assert models("finetune", "cer") == [("pretrained", 0)] + [("random_init", s) for s in range(3)]  # no fbank
    # nest_tiny: layer 0 (after subsampling) and its 2 Conformer layers; fbank has one "layer"
    for i in range(3):
        assert [m for m, _ in models(f"phone_layer{i}", "accuracy")] == \
               (["fbank"] if i == 0 else []) + ["pretrained"] + ["random_init"] * 3
    assert models("phone_majority", "accuracy") == [("majority", None)]
    for row in rows:
        assert row["higher_is_better"] == (row["metric"] == "accuracy")
        assert row["value"] >= 0 and (row["metric"] != "accuracy" or row["value"] <= 1)

    assert (out / "layer_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = json.loads((out / "layer_weights.json").read_text())
    pre = [w for w in weights if w["model"] == "pretrained"]
    assert sorted(w["task"] for w in pre) == ["asr", "phone", "speaker"]
    assert all(len(w["weights"]) == 3 and abs(sum(w["weights"]) - 1) < 1e-5 for w in pre)


def _nemo_style_archive(ckpt: Path, out: Path) -> Path:
    """The checkpoint as NeMo's own save_to lays it out: NeMo's _target_s, a legacy decoder_ssl (released NEST
    checkpoints carry one), gzip as NeMo before 1.7 wrote."""
    from nest_ssl.checkpoint import load_checkpoint
    from nest_ssl.checkpoint.nemo import nemo_model_config

    ck = load_checkpoint(ckpt)
    sd = dict(ck["state_dict"])
    sd["decoder_ssl.decoder_layers.0.weight"] = sd["decoder.decoder_layers.0.weight"].clone()
    cfg = nemo_model_config(ck["nest_ssl"]["config"]["model"])
    assert cfg["encoder"]["_target_"] == "nemo.collections.asr.modules.ConformerEncoder"
    buf = io.BytesIO()
    torch.save(sd, buf)
    with tarfile.open(out, "w:gz") as tar:
        for name, blob in (("./model_config.yaml", yaml.safe_dump(cfg).encode()), ("./model_weights.ckpt", buf.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return out


def test_nemo_archive_evaluates_like_the_checkpoint_and_reruns_are_identical(corpus, tmp_path):
    d, cuts, ckpt = corpus
    nemo = _nemo_style_archive(ckpt, tmp_path / "nemo_style.nemo")
    opts = EvalOptions(tasks=("phone", "speaker"), random_seeds=1, epochs=2)
    a = evaluate(ckpt, cuts, tmp_path / "a", opts).rows
    b = evaluate(ckpt, cuts, tmp_path / "b", opts).rows
    c = evaluate(nemo, cuts, tmp_path / "c", opts).rows
    assert a == b  # deterministic for the seeds
    assert a == c  # the .nemo holds the same model: the same numbers


def _rewrite_cuts(src: Path, dst: Path, edit) -> Path:
    with gzip.open(src, "rt") as f:
        lines = [json.loads(line) for line in f]
    for i, cut in enumerate(lines):
        edit(i, cut)
    with gzip.open(dst, "wt") as f:
        f.writelines(json.dumps(c) + "\n" for c in lines)
    return dst


def _run_cli(capsys, args):
    code = cli(["evaluate", *args, *QUICK])
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_checkpoints_give_one_line_and_exit_2(corpus, tmp_path, capsys):
    d, cuts, ckpt = corpus
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(2000))
    not_nemo = tmp_path / "broken.nemo"
    not_nemo.write_bytes(b"this is not a tar archive" * 10)
    wrong = tmp_path / "wrong_weights.ckpt"
    from nest_ssl.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(ckpt)
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if not k.startswith("encoder.layers.1.")}
    save_checkpoint(ck, wrong)
    # the reason may be worded by the loader (nest_ssl.export) or by the evaluator: either names the problem
    for model, expected in ((tmp_path / "missing.ckpt", ("does not exist",)),
                            (garbage, ("cannot be read", "not a usable NEST model")),
                            (not_nemo, ("not a .nemo archive",)), (wrong, ("Missing key",))):
        code, err = _run_cli(capsys, ["--model", str(model), *_cuts_args(cuts), "--out-dir", str(tmp_path / "o")])
        assert code == 2, err
        assert len(err.splitlines()) == 1 and err.startswith("nest-ssl: error: --model " + str(model)), err
        assert any(e in err for e in expected) and "Traceback" not in err, err
        assert "give a .ckpt written by nest-ssl train" in err


def test_bad_checkpoint_subprocess_has_no_traceback(corpus, tmp_path):
    d, cuts, _ = corpus
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    r = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "evaluate", "--model", str(bad), *_cuts_args(cuts),
                        "--out-dir", str(tmp_path / "o")], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and str(bad) in r.stderr


def _drop(field):
    def edit(i, cut):
        sup = cut["supervisions"][0]
        if field == "phone":
            sup.pop("alignment", None)
        else:
            sup.pop(field, None)
    return edit


@pytest.mark.parametrize("field,task,expected", [
    ("phone", "phone", "have no phone alignment (supervision.alignment['phone']"),
    ("speaker", "speaker", "have no speaker (supervision.speaker)"),
    ("text", "asr", "have no text (supervision.text)"),
    ("text", "finetune", "have no text (supervision.text)"),
])
def test_cuts_without_the_labels_a_task_needs(corpus, tmp_path, capsys, field, task, expected):
    d, cuts, ckpt = corpus
    bad = _rewrite_cuts(cuts["dev"], tmp_path / "dev_bad.jsonl.gz", _drop(field))
    args = ["--model", str(ckpt), "--train-cuts", str(cuts["train"]), "--dev-cuts", str(bad),
            "--test-cuts", str(cuts["test"]), "--tasks", task, "--out-dir", str(tmp_path / "o")]
    code, err = _run_cli(capsys, args)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--dev-cuts {bad}: 3 of 3 cuts {expected}" in err
    assert "the first: cut 'dev-spk1-00' (line 1)" in err and f"leave {task} out of --tasks" in err


def test_a_task_only_checks_its_own_labels(corpus, tmp_path):
    """Cuts without phone alignments are fine for the speaker task."""
    d, cuts, ckpt = corpus
    no_phones = {s: _rewrite_cuts(p, tmp_path / f"{s}.jsonl.gz", _drop("phone")) for s, p in cuts.items()}
    rows = evaluate(ckpt, no_phones, tmp_path / "o", EvalOptions(tasks=("speaker",), random_seeds=0, epochs=1)).rows
    assert sorted(r["task"] for r in rows) == ["speaker", "speaker", "speaker_majority"]


def test_other_input_mistakes(corpus, tmp_path, capsys):
    d, cuts, ckpt = corpus

    def rename_speaker(i, cut):
        if i == 0:
            cut["supervisions"][0]["speaker"] = "stranger"

    def punctuate(i, cut):
        if i == 1:
            cut["supervisions"][0]["text"] += "!"

    unseen = _rewrite_cuts(cuts["test"], tmp_path / "test_unseen.jsonl.gz", rename_speaker)
    code, err = _run_cli(capsys, ["--model", str(ckpt), "--train-cuts", str(cuts["train"]), "--dev-cuts",
                                  str(cuts["dev"]), "--test-cuts", str(unseen), "--tasks", "speaker"])
    assert code == 2 and "speakers stranger are not in the train cuts" in err and str(unseen) in err

    odd = _rewrite_cuts(cuts["train"], tmp_path / "train_odd.jsonl.gz", punctuate)
    code, err = _run_cli(capsys, ["--model", str(ckpt), "--train-cuts", str(odd), "--dev-cuts", str(cuts["dev"]),
                                  "--test-cuts", str(cuts["test"]), "--tasks", "asr"])
    assert code == 2 and "(line 2)" in err and "'!'" in err and str(odd) in err

    code, err = _run_cli(capsys, ["--model", str(ckpt), *_cuts_args(cuts), "--tasks", "phone,lm"])
    assert code == 2 and "choose from phone,speaker,asr,finetune" in err

    code, err = _run_cli(capsys, ["--model", str(ckpt), "--train-cuts", str(tmp_path / "nope.jsonl.gz"),
                                  "--dev-cuts", str(cuts["dev"]), "--test-cuts", str(cuts["test"])])
    assert code == 2 and "--train-cuts" in err and "nope.jsonl.gz: does not exist" in err
