"""Whole-model parity with NeMo 2.7.3's EncDecDenoiseMaskedTokenPredModel (the 17-layer yaml, fp32, CPU).

Both models are built from the same config; NeMo's state dict is loaded into ours with strict=True; inputs are
real speech plus noise. Every measured difference is printed (run with `-s`) for the record.
"""

import copy
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from nest_ssl.config import load_config
from nest_ssl.models import NESTModel

REAL = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "real_audio"
if not REAL.is_dir():
    REAL = Path("/work/shared/fixtures/real_audio")


def report(name, value):
    print(f"[parity] {name}: {value}")


def nemo_model_config():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_config import nemo_yaml_text  # the NeMo spelling of our yaml

    cfg = OmegaConf.create(nemo_yaml_text())
    cfg.model.train_ds.manifest_filepath = None
    cfg.model.validation_ds.manifest_filepath = None
    OmegaConf.resolve(cfg)
    model_cfg = cfg.model
    # No data loaders: the models are compared on tensors.
    del model_cfg["train_ds"], model_cfg["validation_ds"]
    return model_cfg


def build_pair(state_dict=None):
    """NeMo's model and ours from the same config, ours holding NeMo's weights."""
    from nemo.collections.asr.models import EncDecDenoiseMaskedTokenPredModel

    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    torch.manual_seed(1234)
    nemo = EncDecDenoiseMaskedTokenPredModel(cfg=copy.deepcopy(nemo_model_config()), trainer=None)
    if state_dict is not None:
        nemo.load_state_dict(state_dict, strict=True)
    ours = NESTModel.from_config(load_config().model)
    ours.load_state_dict(nemo.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(nemo.state_dict())
    return nemo, ours


@pytest.fixture(scope="module")
def models():
    return build_pair()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(7)
    clips = [sf.read(REAL / name, dtype="float32")[0] for name in ("2412-153948-0000.flac", "2412-153948-0001.flac")]
    clips = [torch.from_numpy(c[: int(s * 16000)]) for c, s in zip(clips, (8.0, 6.37))]
    lengths = torch.tensor([len(c) for c in clips])
    audio = torch.zeros(2, int(lengths.max()))
    for i, c in enumerate(clips):
        audio[i, : len(c)] = c
    valid = torch.arange(audio.shape[1]) < lengths[:, None]
    power = audio.pow(2).sum(1, keepdim=True) / lengths[:, None]
    noise = torch.randn(audio.shape, generator=g) * (power / 10 ** (10 / 10)).sqrt() * valid  # 10 dB SNR
    return audio, lengths, audio + noise


def test_parameters_and_state_dict(models):
    nemo, ours = models
    n_total = sum(p.numel() for p in nemo.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    report("parameters (NeMo, ours)", (n_total, n_ours))
    assert n_total == n_ours == 113_106_000
    assert nemo.num_weights == ours.num_weights == 112_964_608
    for (k1, v1), (k2, v2) in zip(nemo.state_dict().items(), ours.state_dict().items()):
        assert k1 == k2 and v1.shape == v2.shape and v1.dtype == v2.dtype, k1
    # and ours loads into NeMo
    nemo.load_state_dict(ours.state_dict(), strict=True)


def test_features_tokens_encoder_eval(models, batch):
    nemo, ours = models
    nemo.eval(), ours.eval()
    audio, lengths, noisy = batch
    with torch.no_grad():
        f_nemo, l_nemo = nemo.preprocessor(input_signal=noisy, length=lengths)
        f_ours, l_ours = ours.preprocessor(input_signal=noisy, length=lengths)
        diff = (f_nemo - f_ours).abs().max().item()
        report("features max abs diff", diff)
        assert torch.equal(l_nemo, l_ours) and f_nemo.shape == f_ours.shape
        assert diff <= 1e-4

        e_nemo, el_nemo = nemo.encoder(audio_signal=f_nemo, length=l_nemo)
        e_ours, el_ours = ours.encoder(audio_signal=f_nemo, length=l_nemo)
        scale = e_nemo.abs().max().item()
        diff = (e_nemo - e_ours).abs().max().item()
        report("encoder output max abs diff / scale", (diff, scale, diff / scale))
        assert torch.equal(el_nemo, el_ours)
        assert diff <= 1e-4 * scale

        lp_nemo, len_nemo, m_nemo, tok_nemo = nemo(
            input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy,
            noisy_input_signal_length=lengths, apply_mask=False,
        )
        lp_ours, len_ours, m_ours, tok_ours = ours(
            input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy,
            noisy_input_signal_length=lengths, apply_mask=False,
        )
        same = (tok_nemo == tok_ours).float().mean().item()
        report("tokens equal (fraction of positions)", same)
        assert tok_nemo.shape == tok_ours.shape and same >= 0.999
        diff = (lp_nemo - lp_ours).abs().max().item()
        report("log_probs max abs diff", diff)
        assert torch.equal(len_nemo, len_ours) and diff <= 1e-3


def _fixed_masks(model, feats, lengths, seed):
    torch.manual_seed(seed)
    return model.mask_processor(input_feats=feats, input_lengths=lengths)


def _with_masks(model, masked, masks):
    """Makes `model.mask_processor` return the given masks (so both models see the same ones)."""
    model.mask_processor.forward = lambda input_feats, input_lengths: (masked, masks)


def _forward_loss(model, audio, lengths, noisy):
    log_probs, enc_len, masks, tokens = model(
        input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy,
        noisy_input_signal_length=lengths, apply_mask=True,
    )
    return model.loss(masks=masks, decoder_outputs=log_probs, targets=tokens, decoder_lengths=enc_len)


def test_loss_same_masks_eval(models, batch):
    nemo, ours = models
    nemo.eval(), ours.eval()
    audio, lengths, noisy = batch
    with torch.no_grad():
        feats, feat_len = ours.preprocessor(input_signal=noisy, length=lengths)
        masked, masks = _fixed_masks(ours, feats, feat_len, seed=5)
    try:
        _with_masks(nemo, masked, masks)
        _with_masks(ours, masked, masks)
        with torch.no_grad():
            l_nemo = _forward_loss(nemo, audio, lengths, noisy)
            l_ours = _forward_loss(ours, audio, lengths, noisy)
    finally:
        del nemo.mask_processor.forward, ours.mask_processor.forward
    rel = abs(l_nemo.item() - l_ours.item()) / abs(l_nemo.item())
    report("eval loss (NeMo, ours, rel diff)", (l_nemo.item(), l_ours.item(), rel))
    assert rel <= 1e-4


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.preprocessor.featurizer.dither = 0.0


def test_train_mode_gradients(models, batch):
    nemo, ours = build_pair(models[0].state_dict())  # fresh pair: train mode changes BatchNorm statistics
    for m in (nemo, ours):
        _no_dropout(m)
        m.train()
    audio, lengths, noisy = batch
    with torch.no_grad():
        feats, feat_len = ours.preprocessor(input_signal=noisy, length=lengths)
        masked, masks = _fixed_masks(ours, feats, feat_len, seed=11)
    _with_masks(nemo, masked, masks)
    _with_masks(ours, masked, masks)
    l_nemo = _forward_loss(nemo, audio, lengths, noisy)
    # ours through training_output: the trainer's path, which weights the masked tokens instead of selecting them
    batch = SimpleNamespace(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths)
    l_ours = ours.training_output(batch, apply_mask=True).loss
    l_nemo.backward()
    l_ours.backward()
    rel = abs(l_nemo.item() - l_ours.item()) / abs(l_nemo.item())
    report("train loss (NeMo, ours, rel diff)", (l_nemo.item(), l_ours.item(), rel))
    assert rel <= 1e-4
    params_ours = dict(ours.named_parameters())
    encoder = [(name, p.grad, params_ours[name].grad) for name, p in nemo.named_parameters()
               if name.startswith("encoder.") and p.grad is not None]
    # One scale for the whole encoder gradient: some parameters' gradients are zero in exact arithmetic (the
    # depthwise-conv bias before BatchNorm, the key bias under softmax), so their own scale is rounding noise.
    scale = max(g.abs().max().item() for _, g, _ in encoder)
    worst = max((g_nemo - g_ours).abs().max().item() for _, g_nemo, g_ours in encoder)
    report("encoder gradients: max abs diff, scale, relative", (worst, scale, worst / scale))
    assert all(g_ours is not None for _, _, g_ours in encoder)
    assert worst <= 1e-4 * scale
