"""egs/nemo_manifest as a real subprocess: NeMo train/validation/noise manifests in, Shar shards, bins, a short
training, the export and the summary out; a rerun on changed data trains a new run; one run per data folder."""

import fcntl
import glob
import gzip
import json
import os
import re
import subprocess
import sys

import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "egs", "nemo_manifest", "run.sh")
ENV = dict(os.environ, PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""))
sys.path.insert(0, os.path.join(REPO, "local"))

from make_mini_corpus import make_corpus, make_noise  # noqa: E402


def _nemo_manifest(path, flacs, relative_to=None):
    with open(path, "w") as f:
        for p in flacs:
            info = sf.info(p)
            audio = os.path.relpath(p, relative_to) if relative_to else p
            f.write(json.dumps({"audio_filepath": audio, "duration": info.frames / info.samplerate, "text": ""}) + "\n")


@pytest.mark.slow  # a whole recipe or several processes: minutes on 2 cores
def test_nemo_manifests_through_shar_bins_and_training(tmp_path):
    make_corpus(str(tmp_path / "audio"), ("small",), speakers=3, books=1, files=2, min_seconds=12, max_seconds=16,
                seed=5)
    make_noise(str(tmp_path / "noise_audio"), files=3, seconds=6.0)
    flacs = sorted(glob.glob(str(tmp_path / "audio" / "small" / "*" / "*" / "*.flac")))
    # two training manifests (one with paths relative to its own folder, as NeMo allows) and one for validation
    _nemo_manifest(tmp_path / "audio" / "train_a.json", flacs[:2], relative_to=tmp_path / "audio")
    _nemo_manifest(tmp_path / "train_b.json", flacs[2:4])
    _nemo_manifest(tmp_path / "dev.json", flacs[4:])
    _nemo_manifest(tmp_path / "noise.json", sorted(glob.glob(str(tmp_path / "noise_audio" / "*" / "*" / "*.wav"))))

    cmd = [RECIPE, "--train-manifest", "audio/train_a.json,train_b.json", "--val-manifest", "dev.json",
           "--noise-manifest", "noise.json", "--data-dir", "data", "--exp-dir", "exp",
           "--max-duration", "6", "--use-shar", "true", "--shard-size", "4", "--num-buckets", "2",
           "--config-name", "nest_tiny", "--ngpus", "0", "--stop-stage", "7",
           "--train-opts", "trainer.max_steps=2 trainer.val_check_interval=2 trainer.check_val_every_n_epoch=null"]
    # run from tmp_path: the relative manifest, data and exp paths are taken from where the user stands
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]

    data = tmp_path / "data"
    assert len(gzip.open(data / "manifests" / "train_0.jsonl.gz", "rt").read().splitlines()) == 2
    train = [json.loads(x) for x in gzip.open(data / "cuts" / "train.jsonl.gz", "rt").read().splitlines()]
    val = [json.loads(x) for x in gzip.open(data / "cuts" / "val.jsonl.gz", "rt").read().splitlines()]
    # 4 training files of 12-16 s in windows of at most 6 s, none lost to the windowing
    assert all(c["duration"] <= 6.0 + 1e-6 for c in train + val)
    assert abs(sum(c["duration"] for c in train) - sum(sf.info(p).duration for p in flacs[:4])) < 0.01
    assert {c["recording"]["sources"][0]["source"] for c in val} == set(flacs[4:])
    shards = sorted(glob.glob(str(data / "shar" / "train" / "cuts.*.jsonl.gz")))
    assert len(shards) == -(-len(train) // 4)
    assert (data / "noise" / "noise_cuts.jsonl.gz").exists()
    assert (data / "bucket_bins.txt").read_text().startswith("model.train_ds.bucket_duration_bins=[")
    run_dir = tmp_path / "exp" / "nest_tiny"
    assert glob.glob(str(run_dir / "checkpoints" / "*step=2*last.ckpt"))
    hparams = (run_dir / "hparams.yaml").read_text()
    assert str(data / "shar" / "train") in hparams and "noise_cuts.jsonl.gz" in hparams
    assert any('"val_loss"' in line for line in open(run_dir / "metrics.jsonl"))

    summary = (run_dir / "summary.txt").read_text()
    assert (run_dir / "export" / "model.nemo").exists() and summary in r.stdout

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
    assert again.returncode == 0 and again.stderr.count("skipped, up to date") == 7, again.stderr[-3000:]

    # The corpus changes (a training file less): the finished run is kept aside, a new one trains from step 0 on the
    # new windows (not a "resume" of a run that has ended) and the summary is that of the new run.
    _nemo_manifest(tmp_path / "train_b.json", flacs[2:3])
    changed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=ENV)
    assert changed.returncode == 0, changed.stderr[-4000:]
    moved = re.search(r"Stage 6: input (\S+) changed since the last run finished: that run is now (\S+); training "
                      r"starts anew", changed.stderr)
    assert moved and moved.group(1) == str(data / "shar" / "train"), changed.stderr[-4000:]  # what it reads
    (old,) = glob.glob(str(run_dir) + ".before-*")
    assert moved.group(2) == old and (tmp_path / "exp" / os.path.basename(old) / "summary.txt").read_text() == summary
    assert not re.search(r"resum\w+ .*step", changed.stderr + changed.stdout, re.I), changed.stderr[-4000:]
    steps = [json.loads(line)["step"] for line in open(run_dir / "metrics.jsonl")]
    assert steps and min(steps) <= 2 and max(steps) == 2  # one run of 2 steps, nothing carried over
    assert "Stage 7: export and summary (not done yet)" in changed.stderr
    assert (run_dir / "summary.txt").read_text() != summary

    # A second run while one holds the data folder is refused, and touches nothing.
    with open(data / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.name != ".lock")
        refused = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
        assert refused.returncode == 1 and f"{data} is in use by another run" in refused.stderr, refused.stderr
        assert "Stage 1" not in refused.stderr
        assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.name != ".lock") == before


def test_options_of_other_recipes_and_bad_numbers_are_refused(tmp_path):
    """Options of egs/librilight's own data stages mean nothing here: refused like typos; so are numeric options
    that are not numbers. Exit 2, one message, nothing created; --help lists the options of stages 4-7 too."""
    for opt, value, says in (("--val-speakers", "1", "invalid option --val-speakers"),
                             ("--corpus-dir", "1", "invalid option --corpus-dir"),
                             ("--skip-data-prep", "true", "invalid option --skip-data-prep"),
                             ("--no-such-option", "1", "invalid option --no-such-option"),
                             ("--nj", "two", "option --nj expects an integer >= 1, got 'two'"),
                             ("--max-duration", "abc", "option --max-duration expects a number >= 0, got 'abc'")):
        r = subprocess.run([RECIPE, opt, value, "--stop-stage", "0"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, env=ENV)
        assert r.returncode == 2 and says in r.stderr, (opt, r.stderr[-2000:])
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.iterdir())
    h = subprocess.run([RECIPE, "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    assert h.returncode == 0
    for opt in ("--use-shar", "--ngpus", "--nnodes", "--config-name", "--train-opts", "--noise-manifest"):
        assert opt in h.stderr, opt
