"""Checks that need a CUDA GPU (marker `gpu`; bench/gpu_check.sh runs them with `pytest -m gpu`). Without CUDA they
skip. CUDA against the CPU with the same weights in fp32, NCCL in a one-process group, bf16 autocast on CUDA
(targets equal fp32's), activation checkpointing with CUDA dropout."""

import socket
from types import SimpleNamespace

import pytest
import torch

from nest_ssl.config import load_config
from nest_ssl.models import NESTModel

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def _no_tf32():
    # Exact fp32 on the GPU for the comparisons (cuDNN convolutions use TF32 by default).
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def model(config="nest_tiny", *overrides):
    cfg = load_config(config_name=config, overrides=["model.train_ds.manifest_filepath=null",
                                                     "model.validation_ds.manifest_filepath=null", *overrides])
    torch.manual_seed(0)
    return NESTModel.from_config(cfg.model)


def batch(n=3, seconds=4.0, device="cpu"):
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * 16000)
    t = torch.arange(samples) / 16000
    audio = torch.stack([0.3 * torch.sin(2 * torch.pi * (120 + 40 * i) * t) + 0.05 * torch.randn(samples, generator=g)
                         for i in range(n)])
    lengths = torch.tensor([samples - 4000 * i for i in range(n)])
    noisy = audio + 0.05 * torch.randn(audio.shape, generator=g)
    return SimpleNamespace(audio=audio.to(device), audio_len=lengths.to(device), noisy_audio=noisy.to(device),
                           noisy_audio_len=lengths.to(device))


def test_cuda_matches_cpu_in_fp32():
    cpu = model("nest_fast-conformer").eval()  # the 17-layer model
    gpu = model("nest_fast-conformer").eval().cuda()
    gpu.load_state_dict(cpu.state_dict())
    b_cpu, b_gpu = batch(), batch(device="cuda")
    with torch.no_grad():
        lp_c, len_c, _, tok_c = cpu(input_signal=b_cpu.audio, input_signal_length=b_cpu.audio_len)
        lp_g, len_g, _, tok_g = gpu(input_signal=b_gpu.audio, input_signal_length=b_gpu.audio_len)
        feats_c, _ = cpu.preprocessor(input_signal=b_cpu.audio, length=b_cpu.audio_len)
        feats_g, _ = gpu.preprocessor(input_signal=b_gpu.audio, length=b_gpu.audio_len)
    assert torch.equal(len_c, len_g.cpu())
    torch.testing.assert_close(feats_g.cpu(), feats_c, rtol=1e-4, atol=1e-4)
    # FFT and reduction order differ between the devices: a token whose two nearest codewords are within
    # rounding may flip; nearly all must agree.
    assert (tok_g.cpu() == tok_c).float().mean() > 0.995
    torch.testing.assert_close(lp_g.cpu(), lp_c, rtol=1e-3, atol=1e-3)


def test_nccl_one_process_all_reduce(tmp_path):
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            device_id=torch.device("cuda", 0))
    try:
        x = torch.arange(4, dtype=torch.float32, device="cuda")
        dist.all_reduce(x)
        torch.cuda.synchronize()
        assert x.tolist() == [0.0, 1.0, 2.0, 3.0]
        from nest_ssl.train.distributed import DistInfo, all_ranks_have

        info = DistInfo(rank=0, world_size=1, device=torch.device("cuda", 0), backend="nccl")
        assert all_ranks_have(info, True) and not all_ranks_have(info, False)
    finally:
        dist.destroy_process_group()


def test_bf16_autocast_on_cuda_keeps_fp32_targets():
    m = model("nest_tiny", "model.num_classes=8192").train().cuda()
    b = batch(device="cuda")
    torch.manual_seed(3)
    ref = m.training_output(b)
    torch.manual_seed(3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = m.training_output(b)
    assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.masks, ref.masks)
    assert got.log_probs.dtype == torch.float32 and torch.isfinite(got.loss)
    assert abs(float(got.loss.detach()) - float(ref.loss.detach())) < 2e-2 * abs(float(ref.loss.detach()))
    got.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_activation_checkpointing_same_gradients_with_cuda_dropout():
    plain = model("nest_tiny").train().cuda()
    ckpt = model("nest_tiny", "+model.encoder.activation_checkpointing=true").train().cuda()
    ckpt.load_state_dict(plain.state_dict())
    b = batch(device="cuda")
    grads = []
    for m in (plain, ckpt):
        torch.manual_seed(5)
        out = m.training_output(b)
        out.loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)
