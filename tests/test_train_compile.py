"""nest_trainer.compile: the padding that bounds recompilation, the settings' checks, and a compiled training run
whose losses match the eager run's at the same padding (tiny model, CPU, Inductor with the system's C++ compiler)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from nest_ssl.config import ConfigError
from nest_ssl.train.compile import pad_batch, samples_per_encoder_frame
from nest_ssl.train.loggers import read_metrics, series
from nest_ssl.train.trainer_config import parse_nest_trainer
from tests.nemo_corpus import write_lines, write_wav

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_pad_batch_rounds_the_time_axis_up_and_keeps_lengths():
    audio = torch.randn(2, 3000)
    batch = SimpleNamespace(audio=audio, audio_len=torch.tensor([3000, 2000]), noisy_audio=audio + 1,
                            noisy_audio_len=torch.tensor([3000, 2000]), noise=None)
    out = pad_batch(batch, 1280)
    assert out.audio.shape == out.noisy_audio.shape == (2, 3840)
    assert torch.equal(out.audio[:, :3000], audio) and not out.audio[:, 3000:].any()
    assert torch.equal(out.noisy_audio[:, 3000:], torch.zeros(2, 840))
    assert out.audio_len.tolist() == [3000, 2000] and batch.audio.shape == (2, 3000)  # the input is left alone
    assert pad_batch(out, 1280) is out and pad_batch(batch, 0) is batch


def test_samples_per_encoder_frame_of_nest():
    from nest_ssl.config import load_config

    assert samples_per_encoder_frame(load_config(config_name="nest_fast-conformer").model) == 1280


@pytest.mark.parametrize("node, message", [
    ({"compile": {"pad_to_multiple": -1}}, "nest_trainer.compile.pad_to_multiple=-1"),
    ({"compile": {"mode": "fast"}}, "nest_trainer.compile.mode='fast'"),
])
def test_settings_are_checked(node, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_nest_trainer(node)


@pytest.mark.slow
def test_compiled_losses_match_eager(tmp_path):
    rows = []
    for i, s in enumerate([1.2, 1.5, 1.9, 2.2, 2.6, 3.0, 1.4, 2.0]):
        rows.append({"audio_filepath": write_wav(str(tmp_path / "audio" / f"u{i}.wav"), s, seed=i), "duration": s})
    manifest = write_lines(tmp_path / "train.json", rows)
    losses = {}
    for enabled in ("false", "true"):
        exp = tmp_path / f"exp-{enabled}"
        cmd = [sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
               f"model.train_ds.manifest_filepath={manifest}", f"model.validation_ds.manifest_filepath={manifest}",
               "trainer.max_steps=4", "trainer.log_every_n_steps=1", "+trainer.limit_val_batches=0",
               "trainer.enable_progress_bar=false", f"exp_manager.exp_dir={exp}",
               f"+nest_trainer.compile.enabled={enabled}", "+nest_trainer.compile.pad_to_multiple=8",
               "++exp_manager.checkpoint_callback_params.every_n_train_steps=4"]
        p = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=1200)
        assert p.returncode == 0, p.stderr[-3000:]
        run_dir = next(root for root, _, files in os.walk(exp) if "metrics.jsonl" in files)
        losses[enabled] = series(read_metrics(run_dir), "train_loss")
    assert sorted(losses["true"]) == [1, 2, 3, 4]
    for step, eager in losses["false"].items():
        # Inductor fuses and reorders the float32 sums: agreement to 1e-3 relative (measured: ~1e-5)
        assert losses["true"][step] == pytest.approx(eager, rel=1e-3), (step, losses)
