"""`nest-ssl finetune` on the trainer's parts: Lhotse cuts and bucketing, NeMo's fine-tuning yaml keys (with
include/exclude initialisation), bf16 autocast, the run lock, TensorBoard + metrics.jsonl, dev WER with best.ckpt;
SIGTERM -> checkpoint + exit 75 + an exact resume, and DDP over 2 gloo ranks (those two as real subprocesses,
marked slow). All on the CPU, on the tone corpus of tests/asr_corpus.py."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from asr_corpus import TINY, make_asr_corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_asr_corpus(tmp_path_factory.mktemp("asr_trainer") / "corpus")


def to_cuts(manifest: Path, out: Path, texts: dict[int, str] | None = None) -> Path:
    """The manifest as a Lhotse CutSet whose supervisions hold the transcripts (`texts` replaces some, by line)."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    cuts = []
    for i, line in enumerate(manifest.read_text().splitlines()):
        rec = json.loads(line)
        recording = Recording.from_file(rec["audio_filepath"])
        text = (texts or {}).get(i + 1, rec["text"])
        sup = SupervisionSegment(id=recording.id, recording_id=recording.id, start=0, duration=recording.duration,
                                 text=text)
        cuts.append(MonoCut(id=recording.id, start=0, duration=recording.duration, channel=0, recording=recording,
                            supervisions=[sup]))
    CutSet.from_cuts(cuts).to_file(out)
    return out


def cli(*args):
    from nest_ssl.cli import main

    return main([str(a) for a in args])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lhotse_cuts_bucketing_metrics_tensorboard_and_best_by_dev_wer(corpus, tmp_path):
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.checkpoint import load_checkpoint

    train = to_cuts(corpus["train"], tmp_path / "train_cuts.jsonl.gz")
    dev = to_cuts(corpus["test"], tmp_path / "dev_cuts.jsonl.gz")
    out = tmp_path / "run"
    assert cli("finetune", "--train-cuts", train, "--dev-cuts", dev, "--out-dir", out, "--tokenizer-type", "char",
               "--steps", 4, "--save-every", 2, "--val-every", 1, "--max-duration", 6, "--lr", 3e-3,
               "model.train_ds.num_buckets=2", *TINY) == 0
    hp = (out / "hparams.yaml").read_text()
    assert "use_bucketing: true" in hp and "batch_duration: 6.0" in hp
    assert sorted(p.name for p in out.glob("step-*.ckpt")) == ["step-2.ckpt", "step-4.ckpt"]
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard events"
    metrics = rows(out / "metrics.jsonl")
    assert [r["step"] for r in metrics if "train_loss" in r] == [1, 2, 3, 4]
    val = {r["step"]: r["val_wer"] for r in metrics if "val_wer" in r}
    assert sorted(val) == [1, 2, 3, 4]
    best_step = min(val, key=lambda s: (val[s], s))
    best = load_checkpoint(out / "best.ckpt")
    assert best["global_step"] == best_step and best["training"]["best"]["wer"] == val[best_step]
    tsv = (out / "log.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in tsv] == ["step", "1", "2", "3", "4"]
    assert float(tsv[4].split("\t")[2]) == pytest.approx(val[4], abs=1e-4)
    model, _, paths = load_asr(out, avg=2)  # --avg reads the step checkpoints
    assert [p.name for p in paths] == ["step-2.ckpt", "step-4.ckpt"]
    assert json.loads((out / "train_status.json").read_text())["exit_code"] == 0


def test_a_transcript_outside_the_vocabulary_in_cuts_is_named_by_file_and_line(corpus, tmp_path, capsys):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("".join(c + "\n" for c in " acdeghnorst"))
    bad = to_cuts(corpus["train"], tmp_path / "bad.jsonl.gz", texts={3: "the cat!"})
    code = cli("finetune", "--train-cuts", bad, "--out-dir", tmp_path / "o", "--tokenizer", tok, "--tokenizer-type",
               "char", *TINY)
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:3" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_nemo_yaml_keys_include_exclude_and_bf16(corpus, tmp_path, capsys):
    from evaluate_corpus import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "nest.ckpt")
    out = tmp_path / "run"
    init = f"{{enc: {{path: {ckpt}, include: [encoder.], exclude: [encoder.layers.1.]}}}}"
    assert cli("finetune", "--config-name", "fast-conformer_ctc_bpe", f"model.train_ds.manifest_filepath="
               f"{corpus['train']}", f"exp_manager.explicit_log_dir={out}", "model.tokenizer.type=char",
               "trainer.max_steps=3", "trainer.log_every_n_steps=1", "model.train_ds.batch_size=4",
               "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0", "trainer.precision=bf16-mixed",
               f"init_from_nemo_model={init}") == 0
    printed = capsys.readouterr().out
    from nest_ssl.checkpoint import load_checkpoint

    sd = load_checkpoint(ckpt)["state_dict"]
    enc = [k for k in sd if k.startswith("encoder.")]
    layer1 = [k for k in enc if k.startswith("encoder.layers.1.")]
    found = re.search(r"^initialised (\d+) of (\d+) encoder tensors \(and (\d+) preprocessor buffers\) from (\S+);"
                      r" skipped", printed, re.M)
    assert found, printed
    assert int(found.group(1)) == len(enc) - len(layer1) and int(found.group(3)) == 0 and found.group(4) == str(ckpt)
    import yaml

    hp = yaml.safe_load((out / "hparams.yaml").read_text())
    assert hp["model"]["spec_augment"]["time_masks"] == 10 and hp["model"]["ctc_reduction"] == "mean_volume"
    assert hp["model"]["optim"]["sched"]["name"] == "CosineAnnealing"
    lrs = [r["learning_rate"] for r in rows(out / "metrics.jsonl") if "learning_rate" in r]
    assert len(lrs) == 3 and lrs[0] < lrs[1] < lrs[2] < 1e-3  # the warm-up of NeMo's CosineAnnealing
    losses = [r["train_loss"] for r in rows(out / "metrics.jsonl") if "train_loss" in r]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_the_run_lock_refuses_a_second_run_on_the_folder(corpus, tmp_path, capsys):
    from nest_ssl.train.run_lock import RunFolderLock

    out = tmp_path / "run"
    out.mkdir()
    with RunFolderLock(out):
        code = cli("finetune", "--train-manifest", corpus["train"], "--out-dir", out, "--tokenizer-type", "char",
                   "--steps", 1, *TINY)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, err
    assert not (out / "tokenizer").exists()


def nest_ssl(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "nest_ssl.cli", *map(str, args)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_exits_75_and_the_resumed_run_repeats_the_losses(corpus, tmp_path):
    """With a DataLoader worker, which reads ahead of the step trained on: the checkpoint's sampler state is
    rewound to the batches trained on."""
    common = ["finetune", "--train-manifest", corpus["train"], "--dev-manifest", corpus["test"], "--tokenizer-type",
              "char", "--batch-size", 2, "--steps", 16, "--save-every", 100, "--val-every", 5, "--spec-augment",
              "time_masks=2", "--spec-augment", "time_width=0.05", "--num-workers", 1, *TINY]
    whole = nest_ssl(*common, "--out-dir", tmp_path / "whole")
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, out + err
    cut = nest_ssl(*common, "--out-dir", tmp_path / "cut")
    for line in cut.stdout:  # the first validation: some steps done, most to go
        if line.startswith("step 5:"):
            cut.send_signal(signal.SIGTERM)
            break
    out, err = cut.communicate(timeout=600)
    assert cut.returncode == 75, out + err
    saved = [int(p.stem.split("-")[1]) for p in (tmp_path / "cut").glob("step-*.ckpt")]
    assert len(saved) == 1 and 5 <= saved[0] < 16, saved
    assert json.loads((tmp_path / "cut" / "train_status.json").read_text())["stop_reason"] == "preempted"
    again = nest_ssl(*common, "--out-dir", tmp_path / "cut")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and f"resuming from {tmp_path / 'cut'}/step-{saved[0]}.ckpt" in out, out + err
    assert (tmp_path / "cut" / "log.tsv").read_text() == (tmp_path / "whole" / "log.tsv").read_text()


@pytest.mark.slow
def test_two_gloo_ranks_train_as_one_rank_with_the_doubled_batch(corpus, tmp_path):
    """Dropout, dither and SpecAugment off and LayerNorm in the conv module (BatchNorm's statistics depend on
    the batch split): 2 ranks x 2 utterances then see the gradients and loss of 1 rank x 4."""
    from nest_ssl.checkpoint import load_checkpoint

    same = ["encoder.dropout=0", "encoder.dropout_pre_encoder=0", "encoder.dropout_emb=0", "encoder.dropout_att=0",
            "encoder.conv_norm_type=layer_norm", "preprocessor.dither=0"]
    common = ["finetune", "--train-manifest", corpus["train"], "--dev-manifest", corpus["test"], "--tokenizer-type",
              "char", "--steps", 4, "--save-every", 4, "--val-every", 2, *TINY, *same]
    one = nest_ssl(*common, "--batch-size", 4, "--out-dir", tmp_path / "one")
    o1, e1 = one.communicate(timeout=600)
    assert one.returncode == 0, o1 + e1
    two = nest_ssl(*common, "--batch-size", 2, "--devices", 2, "--out-dir", tmp_path / "two")
    o2, e2 = two.communicate(timeout=600)
    assert two.returncode == 0, o2 + e2

    def table(name):
        return [r.split("\t") for r in (tmp_path / name / "log.tsv").read_text().splitlines()[1:]]

    a, b = table("one"), table("two")
    assert [r[0] for r in a] == [r[0] for r in b] == ["1", "2", "3", "4"]
    for ra, rb in zip(a, b):
        assert float(ra[1]) == pytest.approx(float(rb[1]), rel=1e-4), (a, b)
        assert ra[2:] == rb[2:]  # the dev WER/CER, the dev set split over the ranks
    wa = load_checkpoint(tmp_path / "one" / "step-4.ckpt")["state_dict"]
    wb = load_checkpoint(tmp_path / "two" / "step-4.ckpt")["state_dict"]
    # Adam turns rounding-level gradient differences of near-zero gradients into steps of up to lr (1e-3): the
    # weights agree as a whole, not to the last digit
    diff = sum(float((wa[k].double() - wb[k].double()).norm() ** 2) for k in wa if wa[k].is_floating_point())
    norm = sum(float(wa[k].double().norm() ** 2) for k in wa if wa[k].is_floating_point())
    assert (diff / norm) ** 0.5 < 1e-3


def torchrun(*args, nproc=2):
    """`nest-ssl` under torchrun on this node: nproc processes, a free rendezvous port."""
    from nest_ssl.train.distributed import free_port

    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                             "--master-port", str(free_port()), "-m", "nest_ssl.cli", *map(str, args)], env=ENV,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_under_torchrun_rank_0_prepares_and_both_train_as_the_processes_started_here(corpus, tmp_path):
    """torchrun starts the two processes (as on every node of a multi-node job): global rank 0 checks the data,
    trains the tokenizer and writes the folder, and the run is the one `--devices 2` starts itself, to the last
    digit of every loss and dev score. A mistake found by rank 0 stops both ranks with its one line, and a
    trainer.num_nodes that does not match torchrun's world is named before anything is written."""
    common = ["finetune", "--train-manifest", corpus["train"], "--dev-manifest", corpus["test"], "--tokenizer-type",
              "char", "--steps", 4, "--save-every", 4, "--val-every", 2, "--batch-size", 2, "--devices", 2, *TINY]
    spawned = nest_ssl(*common, "--out-dir", tmp_path / "spawned")
    o1, e1 = spawned.communicate(timeout=600)
    assert spawned.returncode == 0, o1 + e1
    launched = torchrun(*common, "--out-dir", tmp_path / "launched")
    o2, e2 = launched.communicate(timeout=600)
    assert launched.returncode == 0, o2 + e2
    assert o2.count("encoder initialised at random") == 1, o2  # rank 0 alone prints
    names = ["log.tsv"] + [f"tokenizer/{p.name}" for p in (tmp_path / "spawned" / "tokenizer").iterdir()]
    for name in names:
        assert (tmp_path / "launched" / name).read_bytes() == (tmp_path / "spawned" / name).read_bytes(), name
    status = json.loads((tmp_path / "launched" / "train_status.json").read_text())
    assert (status["stop_reason"], status["global_step"]) == ("max_steps", 4), status

    wrong = torchrun(*common, "--tokenizer", tmp_path / "no-such-tokenizer", "--out-dir", tmp_path / "bad")
    out, err = wrong.communicate(timeout=600)
    assert wrong.returncode != 0 and not (tmp_path / "bad").exists(), out + err
    lines = [line for line in err.splitlines() if "no-such-tokenizer" in line]
    # one whole line from each rank (rank 0's error, raised again by rank 1), neither cut by the other's
    assert len(lines) == 2 and all(line.startswith("nest-ssl: error: tokenizer folder ") for line in lines), err
    nodes = torchrun(*common, "--num-nodes", 2, "--out-dir", tmp_path / "nodes")
    out, err = nodes.communicate(timeout=600)
    assert nodes.returncode != 0 and not (tmp_path / "nodes").exists(), out + err
    assert "torchrun's WORLD_SIZE is 2, but trainer.num_nodes=2 x 2 processes per node is 4" in err, err


def test_config_mistakes_give_one_line_exit_2_and_write_nothing(corpus, tmp_path, capsys):
    base = ["finetune", "--config-name", "fast-conformer_ctc_bpe", f"model.train_ds.manifest_filepath={corpus['train']}",
            "model.tokenizer.type=char"]
    cases = [(["trainer.max_steps=-1"], "set trainer.max_steps"),  # CosineAnnealing needs it (NeMo derives it)
             (["trainer.max_steps=2", "trainer.precision=fp8"], "trainer.precision=fp8"),
             (["trainer.max_steps=2", "model.optim.lrr=1"], "model.optim.lrr"),
             (["trainer.max_steps=2", "trainer.precision=16-mixed", "trainer.accelerator=cpu"], "needs a GPU"),
             (["trainer.max_steps=2", "init_from_pretrained_model=stt_en_fastconformer_ctc_large"], "not downloaded"),
             # the NEST model cards' key, which NeMo ignores (the encoder silently stays random): refused here
             (["trainer.max_steps=2", "++init_from_pretrained.ssl.path=x.nemo"], "no weights would load")]
    for i, (extra, needle) in enumerate(cases):
        code = cli(*base, f"exp_manager.explicit_log_dir={tmp_path / str(i)}", *extra)
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not (tmp_path / str(i)).exists()
