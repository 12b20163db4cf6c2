"""Encoder parity with NeMo 2.7.3's ConformerEncoder on real speech.

NeMo's encoder is built from the encoder block of nest_ssl/conf/nest_fast-conformer.yaml, its state dict is
loaded into ours with strict=True, and both run in float32 on CPU on a batch of two LibriSpeech utterances of
different lengths (features from NeMo's own preprocessor). Tolerances are relative to the output (or gradient)
scale: max |ours - NeMo| <= 1e-4 * max |NeMo|. The measured differences are printed (run with -s).

Run: .venv-nemo/bin/python -m pytest -s tests/parity/test_parity_encoder.py
"""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "nest_ssl" / "conf" / "nest_fast-conformer.yaml"
AUDIO = Path("/work/shared/fixtures/real_audio")
REL_TOL = 1e-4


def _model_cfg():
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(YAML), resolve=True)["model"]


def encoder_kwargs(**over):
    kw = dict(_model_cfg()["encoder"])
    kw.pop("_target_")
    kw.update(over)
    return kw


def no_dropout(**over):
    return encoder_kwargs(dropout=0.0, dropout_pre_encoder=0.0, dropout_emb=0.0, dropout_att=0.0, **over)


def nemo_encoder(**kw):
    from nemo.collections.asr.modules import ConformerEncoder

    return ConformerEncoder(**kw)


def our_encoder(**kw):
    from nest_ssl.modules.conformer import ConformerEncoder

    return ConformerEncoder(**kw)


def pair(**kw):
    """NeMo's encoder (default init) and ours holding the same weights (strict load)."""
    theirs = nemo_encoder(**kw)
    ours = our_encoder(**kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def rel_err(ref, other):
    """(max abs difference, max abs of the reference)."""
    return (ref - other).abs().max().item(), ref.abs().max().item()


def check(name, ref, other, rel_tol=REL_TOL):
    err, scale = rel_err(ref, other)
    print(f"\n[encoder parity] {name}: max|diff| {err:.3e}, scale {scale:.3e}, relative {err / max(scale, 1e-30):.3e}")
    assert err <= rel_tol * scale, f"{name}: {err} > {rel_tol} * {scale}"
    return err


@pytest.fixture(scope="module")
def speech_batch():
    """NeMo log-mel features (B=2, 80, T) of a long and a shorter real utterance, with their lengths."""
    import soundfile as sf
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    torch.set_num_threads(2)
    long_wav, sr = sf.read(AUDIO / "2412-153948-0000.flac", dtype="float32")
    short_wav, sr2 = sf.read(AUDIO / "2412-153948-0001.flac", dtype="float32")
    assert sr == sr2 == 16000
    # Cut the second one so the batch has a clearly padded row whose length is not a multiple of 8 frames.
    short_wav = short_wav[: int(6.37 * sr)]
    audio = torch.zeros(2, len(long_wav))
    audio[0] = torch.from_numpy(long_wav)
    audio[1, : len(short_wav)] = torch.from_numpy(short_wav)
    lengths = torch.tensor([len(long_wav), len(short_wav)])
    pre_cfg = dict(_model_cfg()["preprocessor"])
    pre_cfg.pop("_target_")
    pre = AudioToMelSpectrogramPreprocessor(**pre_cfg).eval()  # eval: no dither
    with torch.no_grad():
        feats, feat_len = pre(input_signal=audio, length=lengths)
    assert feat_len[1] % 8 != 0 and feat_len[1] < feat_len[0]
    print(f"\n[encoder parity] features {tuple(feats.shape)}, lengths {feat_len.tolist()}")
    return feats, feat_len


@pytest.fixture(scope="module")
def full_pair():
    torch.manual_seed(0)
    return pair(**encoder_kwargs())


def test_full_yaml_encoder_names_counts_and_strict_load(full_pair):
    theirs, ours = full_pair
    t_sd, o_sd = theirs.state_dict(), ours.state_dict()
    assert list(t_sd) == list(o_sd)  # same names in the same order
    assert all(t_sd[k].shape == o_sd[k].shape and t_sd[k].dtype == o_sd[k].dtype for k in t_sd)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in theirs.parameters()) == 108_762_112
    # and NeMo's tied-bias / bias-free variants count the same as ours
    for over in (dict(untie_biases=False, n_layers=3), dict(use_bias=False, xscaling=False, n_layers=3)):
        assert sum(p.numel() for p in nemo_encoder(**encoder_kwargs(**over)).parameters()) == sum(
            p.numel() for p in our_encoder(**encoder_kwargs(**over)).parameters()
        )


def test_full_17_layer_forward_eval(full_pair, speech_batch):
    theirs, ours = full_pair
    theirs.eval(), ours.eval()
    feats, feat_len = speech_batch
    with torch.no_grad():
        ref, ref_len = theirs(audio_signal=feats, length=feat_len)
        out, out_len = ours(audio_signal=feats, length=feat_len)
    assert out.shape == ref.shape and out_len.dtype == ref_len.dtype == torch.int64
    assert out_len.tolist() == ref_len.tolist() == [-(-n // 8) for n in feat_len.tolist()]
    check("17 layers, eval, real speech (B=2)", ref, out)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_train_mode_gradients_without_dropout(speech_batch, use_sdpa):
    torch.manual_seed(0)
    theirs, ours = pair(**no_dropout(n_layers=3, use_pytorch_sdpa=use_sdpa))
    theirs.train(), ours.train()
    feats, feat_len = speech_batch
    ref, _ = theirs(audio_signal=feats, length=feat_len)
    out, _ = ours(audio_signal=feats, length=feat_len)
    check(f"3 layers, train, no dropout, sdpa={use_sdpa}: output", ref, out)
    projection = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ref * projection).sum().backward()
    (out * projection).sum().backward()
    t_params = dict(theirs.named_parameters())
    # One scale for the whole encoder gradient: some parameters have a gradient that is zero in exact arithmetic
    # (the depthwise-conv bias before BatchNorm, the key bias under softmax), so their own scale is rounding noise.
    scale = max(t_params[name].grad.abs().max().item() for name, _ in ours.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        g_ref, g = t_params[name].grad, p.grad
        assert g is not None, name
        err, _ = rel_err(g_ref, g)
        assert err <= REL_TOL * scale, f"grad {name}: {err} > {REL_TOL} * {scale}"
        worst = max(worst, err)
    print(f"\n[encoder parity] sdpa={use_sdpa}: gradients max|diff| {worst:.3e}, scale {scale:.3e}, "
          f"relative {worst / scale:.3e}")
    # BatchNorm updated its running statistics the same way (they include padded frames in both)
    t_buf = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            check(f"BatchNorm buffer {name}", t_buf[name], b)


def test_stochastic_depth_draws_the_same_random_numbers(speech_batch):
    """With stochastic depth on, the same seed drops the same layers in both: our layer drops consume the RNG in
    NeMo's order. (Dropout masks come from the same seed too, but land on other elements: our CPU dropout draws
    its own bits and our pointwise convs run channels-last, see nest_ssl/modules/{dropout,pointwise}.py.)"""
    torch.manual_seed(0)
    theirs, ours = pair(**no_dropout(n_layers=3, stochastic_depth_drop_prob=0.3))
    theirs.train(), ours.train()
    feats, feat_len = speech_batch
    for seed in (3, 4):
        torch.manual_seed(seed)
        ref, _ = theirs(audio_signal=feats, length=feat_len)
        torch.manual_seed(seed)
        out, _ = ours(audio_signal=feats, length=feat_len)
        check(f"3 layers, train, stochastic depth 0.3, seed {seed}", ref.detach(), out.detach())


def test_dropout_statistics_match(speech_batch):
    """The yaml's dropouts in train mode: ours and NeMo's outputs have the same spread around the eval output."""
    torch.manual_seed(0)
    theirs, ours = pair(**encoder_kwargs(n_layers=3))
    feats, feat_len = speech_batch
    with torch.no_grad():
        theirs.eval(), ours.eval()
        clean, _ = theirs(audio_signal=feats, length=feat_len)
        theirs.train(), ours.train()
        spread = {}
        for name, enc in (("NeMo", theirs), ("ours", ours)):
            torch.manual_seed(1)
            devs = [(enc(audio_signal=feats, length=feat_len)[0] - clean).pow(2).mean().sqrt().item() for _ in range(4)]
            spread[name] = sum(devs) / len(devs)
    print(f"\n[encoder parity] train-mode RMS deviation from eval with dropout 0.1: {spread}")
    assert abs(spread["ours"] - spread["NeMo"]) <= 0.05 * spread["NeMo"]


def test_same_seed_gives_the_same_initial_weights():
    kw = encoder_kwargs(n_layers=2)
    torch.manual_seed(123)
    t_sd = nemo_encoder(**kw).state_dict()
    torch.manual_seed(123)
    o_sd = our_encoder(**kw).state_dict()
    assert all(torch.equal(t_sd[k], o_sd[k]) for k in t_sd)


def test_padding_invariance_holds_in_nemo_and_ours(speech_batch):
    """NeMo 2.7.3 (masked subsampling) encodes the short utterance the same alone and in the batch."""
    torch.manual_seed(0)
    theirs, ours = pair(**encoder_kwargs(n_layers=4))
    theirs.eval(), ours.eval()
    feats, feat_len = speech_batch
    n = int(feat_len[1])
    with torch.no_grad():
        t_batch, t_len = theirs(audio_signal=feats, length=feat_len)
        t_alone, _ = theirs(audio_signal=feats[1:, :, :n], length=feat_len[1:])
        o_batch, _ = ours(audio_signal=feats, length=feat_len)
        o_alone, _ = ours(audio_signal=feats[1:, :, :n], length=feat_len[1:])
    m = int(t_len[1])
    check("NeMo: short utterance alone vs batched", t_alone, t_batch[1:, :, :m])
    check("ours: short utterance alone vs batched", o_alone, o_batch[1:, :, :m])
    check("4 layers, eval, batch", t_batch, o_batch)
    check("4 layers, eval, alone", t_alone, o_alone)


@pytest.mark.parametrize(
    "over",
    [
        dict(use_pytorch_sdpa=True),
        dict(untie_biases=False),
        dict(use_bias=False, xscaling=False),
        dict(subsampling="striding", subsampling_conv_channels=64),
        dict(subsampling_conv_chunking_factor=2),
        dict(conv_context_size="causal"),
        dict(conv_norm_type="layer_norm"),
        dict(att_context_size=[16, 4]),
        dict(att_context_size=[8, 3], att_context_style="chunked_limited"),
        dict(feat_out=96),
        dict(subsampling_factor=4),
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_variants_eval(speech_batch, over):
    torch.manual_seed(0)
    kw = no_dropout(n_layers=2, d_model=128, n_heads=4, subsampling_conv_channels=32)
    kw.update(over)
    theirs, ours = pair(**kw)
    theirs.eval(), ours.eval()
    feats, feat_len = speech_batch
    with torch.no_grad():
        ref, ref_len = theirs(audio_signal=feats, length=feat_len)
        out, out_len = ours(audio_signal=feats, length=feat_len)
    assert out_len.tolist() == ref_len.tolist()
    check(f"variant {over}", ref, out)
