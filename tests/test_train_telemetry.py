"""Throughput telemetry in metrics.jsonl (nest_ssl/train/telemetry.py) against figures computed by hand from the
known lengths of a tiny run: every batch holds all 8 utterances, so each step's shapes are known exactly."""

import math
import os
import subprocess
import sys

import pytest

from nest_ssl.config import load_config
from nest_ssl.models import NESTModel
from nest_ssl.models.flops import step_flops, synthetic_batch
from nest_ssl.train.loggers import read_metrics
from tests.nemo_corpus import write_lines, write_wav

SR = 16000
SECONDS = [1.0, 1.3, 1.55, 1.8, 2.05, 2.3, 2.6, 3.0]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def encoder_frames(samples: int) -> int:
    """By hand: 10 ms feature frames (centred STFT: samples // 160 + 1), then three stride-2 convolutions."""
    frames = samples // 160 + 1
    for _ in range(3):
        frames = math.ceil(frames / 2)
    return frames


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("telemetry")
    rows = []
    for i, s in enumerate(SECONDS):
        path = write_wav(str(d / "audio" / f"u{i}.wav"), s, seed=i)
        rows.append({"audio_filepath": path, "duration": s})
    manifest = write_lines(d / "train.json", rows)
    cmd = [sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
           f"model.train_ds.manifest_filepath={manifest}", f"model.validation_ds.manifest_filepath={manifest}",
           "model.train_ds.batch_size=8", "trainer.max_steps=4", "trainer.log_every_n_steps=2",
           "+trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", f"exp_manager.exp_dir={d}/exp",
           "++exp_manager.checkpoint_callback_params.every_n_train_steps=4"]
    p = subprocess.run(cmd, cwd=d, env=ENV, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    found = [root for root, _, files in os.walk(d / "exp") if "metrics.jsonl" in files]
    assert len(found) == 1, found
    return found[0]


def test_telemetry_matches_hand_counts(run_dir):
    rows = [r for r in read_metrics(run_dir) if "train_loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    samples = [int(round(s * SR)) for s in SECONDS]
    audio_per_step = sum(samples) / SR
    tokens_per_step = sum(encoder_frames(n) for n in samples)
    padding = 1 - sum(samples) / (len(samples) * max(samples))
    model = NESTModel.from_config(load_config(config_name="nest_tiny").model)
    flops = step_flops(model, synthetic_batch(len(samples), max(samples), lengths=samples), seed=0)  # the run's seed
    for r in rows:
        t = r["train_time"]  # training time of the window's 2 steps
        assert r["audio_per_s"] == pytest.approx(2 * audio_per_step / t, rel=1e-6)
        assert r["throughput"] == pytest.approx(r["audio_per_s"], rel=1e-6)
        assert r["tokens_per_s"] == pytest.approx(2 * tokens_per_step / t, rel=1e-6)
        assert r["padding_share"] == pytest.approx(padding, rel=1e-6)  # float32 lengths / sample rate, summed
        # The decoder sees the masked tokens only, whose number is random: the same shape within a few percent
        # counted at the batches' shape; the decoder sees the masked tokens only, drawn for the batch's order of lengths
        assert r["step_tflop"] * 1e12 == pytest.approx(flops, rel=0.01)
        assert r["tflops_per_device"] == pytest.approx(2 * r["step_tflop"] / t, rel=1e-6)
        assert "mfu" not in r  # a CPU has no dense peak in the table: logged as null, i.e. left out
        assert 0.0 <= r["data_wait_share"] < 1.0


def test_flops_of_an_uncounted_shape_come_from_the_fit():
    """Past max_counted shapes, FLOPs per utterance = a*samples + c*samples^2 fitted to the counted ones."""
    import torch

    from nest_ssl.train.telemetry import Telemetry

    model = NESTModel.from_config(load_config(config_name="nest_tiny").model)

    def count(shape, lengths):
        return step_flops(model, synthetic_batch(shape[0], shape[1], lengths))

    tel = Telemetry(torch.device("cpu"), SR, count, max_counted=3)
    for b, s in ((2, 8000), (2, 24000), (1, 48000), (3, 32000)):  # the last one is past max_counted
        tel.micro_batch(synthetic_batch(b, s))
    tel.step(1.0, 0.0, 0.0, 0.0)
    m = tel.metrics()
    assert len(tel.flop_model.counted) == 3 and (3, 32000) not in tel.flop_model.counted
    counted = sum(count(shape, [shape[1]] * shape[0]) for shape in ((2, 8000), (2, 24000), (1, 48000), (3, 32000)))
    assert m["step_tflop"] * 1e12 == pytest.approx(counted, rel=0.02)
    assert m["padding_share"] == 0.0 and m["data_wait_share"] == 0.0


def test_run_summary_reports_the_run_throughput(run_dir):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "local" / "summary.py"
    spec = importlib.util.spec_from_file_location("summary", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [r for r in read_metrics(run_dir) if "train_loss" in r]
    total_time = sum(r["train_time"] for r in rows)
    audio = 4 * sum(SECONDS)  # 4 steps of all 8 utterances
    t = mod.run_throughput(mod.metrics(run_dir))
    assert t["audio_per_s"] == pytest.approx(audio / total_time, rel=1e-6)
    assert "mfu" not in t
    text = mod.summary(run_dir, "none.jsonl", "none.jsonl")
    assert f"throughput:   {audio / total_time:.1f} audio s/s" in text and "MFU n/a" in text
    assert "padding 35.0% of computed samples" in text
