"""egs/nemo_manifest as a real subprocess: NeMo train/validation/noise manifests in, Shar shards, bins and a
short training on them out."""

import glob
import gzip
import json
import os
import subprocess
import sys

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
           "--config-name", "nest_tiny", "--ngpus", "0", "--stop-stage", "6",
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

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
    assert again.returncode == 0 and again.stderr.count("skipped, up to date") == 6, again.stderr[-3000:]


def test_only_the_options_of_stages_4_to_7_are_handed_on_to_librilight(tmp_path):
    """Options of ../librilight/run.sh's own data stages would be silently ignored there (--skip-data-prep true),
    so this recipe refuses them, as it does typos; --help lists the options it hands on."""
    for opt in ("--val-speakers", "--corpus-dir", "--skip-data-prep", "--no-such-option"):
        r = subprocess.run([RECIPE, opt, "1", "--stop-stage", "0"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, env=ENV)
        assert r.returncode == 1 and f"invalid option {opt}" in r.stderr, (opt, r.stderr[-2000:])
    assert not (tmp_path / "data").exists()
    h = subprocess.run([RECIPE, "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    assert h.returncode == 0
    for opt in ("--use-shar", "--ngpus", "--nnodes", "--config-name", "--train-opts", "--noise-manifest"):
        assert opt in h.stderr, opt
