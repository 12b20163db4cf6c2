"""bf16 mixed precision is numerically safe by construction: under torch.autocast the front end (STFT, mel, log,
normalisation), the quantizer (projection, normalisation, nearest codeword) and the loss (decoder log_softmax, NLL)
run in fp32, so the training targets are fp32's exactly and only the encoder runs in bf16.

CPU autocast (bf16) stands in for the GPU here; tests/test_gpu.py repeats the token check on CUDA.
"""

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nest_ssl.config import load_config
from nest_ssl.models import NESTModel
from nest_ssl.modules.quantizer import RandomProjectionVectorQuantizer
from dummy_data import make_dummy_data

REPO = Path(__file__).resolve().parent.parent
SR = 16000
# The bf16 encoder moves the loss by rounding only: measured |bf16 - fp32| / fp32 below 1e-4 on these batches
# (tiny model, untrained weights); the bound leaves room for other CPUs and torch builds.
LOSS_RTOL = 2e-3


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def tiny_model(*overrides) -> NESTModel:
    # 8192 classes as in every real config: with many codewords a bf16 projection changes visibly many tokens.
    cfg = load_config(config_name="nest_tiny", overrides=["model.train_ds.manifest_filepath=null",
                                                          "model.validation_ds.manifest_filepath=null",
                                                          "model.num_classes=8192", *overrides])
    torch.manual_seed(0)
    return NESTModel.from_config(cfg.model)


def speech_like(n: int, seed: int) -> torch.Tensor:
    """Harmonics with a slow amplitude envelope plus a little noise: varied spectra, like voiced speech."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    f0 = 100 + 150 * torch.rand(1, generator=g)
    x = sum(torch.sin(2 * math.pi * f0 * k * t + k) / k for k in range(1, 8))
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)
    return 0.2 * x * env + 0.01 * torch.randn(n, generator=g)


def square_wave(n: int) -> torch.Tensor:
    """Full-scale clipping: +-1.0 at 200 Hz."""
    t = torch.arange(n) / SR
    return torch.where(torch.sin(2 * math.pi * 200 * t) >= 0, 1.0, -1.0)


def batch_of(clips: list[torch.Tensor]) -> SimpleNamespace:
    n = max(len(c) for c in clips)
    audio = torch.zeros(len(clips), n)
    for i, c in enumerate(clips):
        audio[i, :len(c)] = c
    lengths = torch.tensor([len(c) for c in clips])
    g = torch.Generator().manual_seed(7)
    noisy = audio + 0.02 * torch.randn(audio.shape, generator=g)
    return SimpleNamespace(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths)


def step(model, batch, autocast: bool, seed: int = 3):
    """One training forward + backward; returns the StepOutput and the gradients by name."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same masks, dither and dropout draws in both precisions
    if autocast:
        with bf16():
            out = model.training_output(batch, apply_mask=True)
    else:
        out = model.training_output(batch, apply_mask=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_front_end_is_bitwise_fp32_under_autocast():
    model = tiny_model().train()
    audio = torch.stack([speech_like(24000, 1), torch.zeros(24000), square_wave(24000)])
    lengths = torch.tensor([24000, 20000, 24000])
    torch.manual_seed(0)
    ref, ref_len = model.preprocessor(input_signal=audio, length=lengths)
    torch.manual_seed(0)
    with bf16():
        got, got_len = model.preprocessor(input_signal=audio, length=lengths)
        # bf16 audio (what a bf16 data path could hand over) is computed in fp32 as well
        from_bf16, _ = model.preprocessor(input_signal=audio.bfloat16(), length=lengths)
    assert got.dtype == torch.float32 and from_bf16.dtype == torch.float32
    assert torch.equal(got, ref) and torch.equal(got_len, ref_len)
    assert torch.isfinite(from_bf16).all()


@pytest.mark.parametrize("dist_fn", ["l2", "cosine"])
def test_quantizer_tokens_are_fp32_tokens_under_autocast(dist_fn):
    torch.manual_seed(0)
    q = RandomProjectionVectorQuantizer(feat_in=80, code_dim=16, num_classes=8192, num_books=1, dist_fn=dist_fn,
                                        squeeze_single=True, combine_time_steps=8)
    x = torch.randn(4, 80, 400)
    ref_q, ref_ids = q(x)
    with bf16():
        got_q, got_ids = q(x)
        # bf16 frames (e.g. post-conv features of a bf16 encoder) are projected in fp32 too
        _, ids_from_bf16 = q(x.bfloat16())
    assert torch.equal(got_ids, ref_ids) and torch.equal(got_q, ref_q)
    assert ids_from_bf16.dtype == torch.int64
    # The projection layer on its own does run in bf16 under autocast: the island above is what keeps it fp32.
    with bf16():
        projected = q.proj(x.transpose(1, 2).reshape(4, 50, 640))
    assert projected.dtype == torch.bfloat16


def test_bf16_step_targets_equal_and_loss_close():
    model = tiny_model().train()
    batch = batch_of([speech_like(40000, 1), speech_like(32000, 2), speech_like(36000, 3)])
    ref, ref_grads = step(model, batch, autocast=False)
    got, got_grads = step(model, batch, autocast=True)
    assert torch.equal(got.tokens, ref.tokens)
    assert torch.equal(got.masks, ref.masks) and got.num_masked_tokens == ref.num_masked_tokens > 0
    assert got.log_probs.dtype == torch.float32  # log_softmax in fp32
    assert got.loss.dtype == torch.float32
    rel = abs(float(got.loss.detach()) - float(ref.loss.detach())) / abs(float(ref.loss.detach()))
    assert rel < LOSS_RTOL, (float(got.loss.detach()), float(ref.loss.detach()))
    # Gradients stay finite and point the same way as fp32's.
    for name, g in got_grads.items():
        assert torch.isfinite(g).all(), name
    flat_ref = torch.cat([ref_grads[n].flatten() for n in sorted(ref_grads)])
    flat_got = torch.cat([got_grads[n].flatten() for n in sorted(ref_grads)])
    assert torch.nn.functional.cosine_similarity(flat_ref, flat_got, dim=0) > 0.99


def test_post_conv_targets_equal_under_autocast():
    model = tiny_model("model.mask_position=post_conv").train()
    batch = batch_of([speech_like(40000, 4), speech_like(30000, 5)])
    ref, _ = step(model, batch, autocast=False)
    got, _ = step(model, batch, autocast=True)
    assert torch.equal(got.tokens, ref.tokens)
    assert torch.isfinite(got.loss)


@pytest.mark.parametrize("signal", ["silence", "clipping"])
def test_no_nan_on_silence_or_clipping(signal):
    model = tiny_model().train()
    n = 32000
    clip = torch.zeros(n) if signal == "silence" else square_wave(n)
    batch = batch_of([clip, clip.clone()])
    if signal == "silence":
        batch.noisy_audio = batch.audio.clone()  # silence in, silence to the encoder as well
    ref, _ = step(model, batch, autocast=False)
    got, grads = step(model, batch, autocast=True)
    assert torch.equal(got.tokens, ref.tokens)
    assert torch.isfinite(got.loss) and torch.isfinite(got.log_probs).all()
    assert all(torch.isfinite(g).all() for g in grads.values())
    rel = abs(float(got.loss.detach()) - float(ref.loss.detach())) / abs(float(ref.loss.detach()))
    assert rel < LOSS_RTOL


def test_bf16_training_run_through_the_trainer(tmp_path):
    make_dummy_data(tmp_path, num_train=12, num_val=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "recipes/nest/train.py"), "--config-name", "nest_tiny",
           "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
           "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
           "trainer.precision=bf16-mixed", "trainer.max_steps=3", "trainer.val_check_interval=3",
           "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
           "exp_manager.exp_dir=exp"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    from nest_ssl.checkpoint import load_checkpoint
    from nest_ssl.train.loggers import read_metrics, series

    run_dir = tmp_path / "exp" / "SSL-NEST-FastConformer-Tiny"
    rows = read_metrics(run_dir)
    losses = series(rows, "train_loss")
    assert sorted(losses) == [1, 2, 3]
    assert all(math.isfinite(v) for v in losses.values())
    assert math.isfinite(series(rows, "val_loss")[3])
    assert "non-finite" not in p.stderr
    last = next((run_dir / "checkpoints").glob("*-last.ckpt"))
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 3
    # master weights stay fp32: autocast only changes the compute dtype
    assert all(v.dtype in (torch.float32, torch.int64, torch.float64) for v in ckpt["state_dict"].values())
