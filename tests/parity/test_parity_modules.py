"""Parity of the core NEST modules with NeMo 2.7.3 on real speech (run: .venv-nemo/bin/python -m pytest -s ...).

Each test builds NeMo's module and ours from the NEST yaml's values, copies NeMo's state dict into ours (strict),
runs both in fp32 on CPU and prints the measured difference. NeMo is imported inside the tests so that this file
still collects (and is skipped by conftest) where NeMo is missing.
"""

import math

import pytest
import soundfile as sf
import torch

from nest_ssl.modules.decoder import MultiSoftmaxDecoder
from nest_ssl.modules.loss import MultiMLMLoss
from nest_ssl.modules.masking import RandomBlockMasking
from nest_ssl.modules.preprocessor import AudioToMelSpectrogramPreprocessor
from nest_ssl.modules.quantizer import RandomProjectionVectorQuantizer
from nest_ssl.optim import CosineAnnealing, NoamAnnealing

SPEECH = "/work/shared/fixtures/real_audio/2412-153948-0000.flac"
PRE_KW = dict(sample_rate=16000, normalize="per_feature", window_size=0.025, window_stride=0.01, window="hann",
              features=80, n_fft=512, log=True, frame_splicing=1, dither=0.00001, pad_to=16, pad_value=0.0)
QUANT_KW = dict(feat_in=80, code_dim=16, num_books=1, num_classes=8192, dist_fn="l2", freeze=True,
                squeeze_single=False, combine_time_steps=8)
MASK_KW = dict(block_size=40, mask_prob=0.01, feat_in=80, freeze=True, allow_overlap=True)


def _nemo_modules():
    from nemo.collections.asr import modules

    return modules


@pytest.fixture(scope="module")
def speech_batch():
    """Real speech, speech + noise, a cropped noisy copy and pure noise: 4 utterances of different lengths."""
    audio, sr = sf.read(SPEECH, dtype="float32")
    assert sr == 16000
    speech = torch.from_numpy(audio)
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(len(speech), generator=g) * speech.std() * 10 ** (-10 / 20)  # 10 dB SNR
    lens = [len(speech), len(speech), 80000, 48000 + 77]
    x = torch.zeros(4, len(speech))
    x[0] = speech
    x[1] = speech + noise
    x[2, : lens[2]] = (speech + noise)[: lens[2]]
    x[3, : lens[3]] = noise[: lens[3]] * 3
    return x, torch.tensor(lens)


@pytest.fixture(scope="module")
def preprocessors():
    theirs = _nemo_modules().AudioToMelSpectrogramPreprocessor(**PRE_KW)
    ours = AudioToMelSpectrogramPreprocessor(**PRE_KW)
    fresh = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours, fresh


def test_preprocessor_buffers_built_equal_to_nemo(preprocessors):
    theirs, _, fresh = preprocessors
    ref = theirs.state_dict()
    assert list(fresh) == list(ref) == ["featurizer.window", "featurizer.fb"]
    for key in ref:
        diff = (fresh[key] - ref[key]).abs().max().item()
        print(f"\n[parity] fresh {key} {tuple(ref[key].shape)} max abs diff vs NeMo (librosa): {diff:.3g}")
        assert fresh[key].shape == ref[key].shape and diff <= 1e-7


@pytest.mark.parametrize("mode", ["eval", "train_dither0", "train_dither_seeded"])
def test_preprocessor_features_match_nemo(preprocessors, speech_batch, mode):
    theirs, ours, _ = preprocessors
    x, lens = speech_batch
    dither = 0.0 if mode == "train_dither0" else PRE_KW["dither"]
    for m in (theirs, ours):
        m.featurizer.dither = dither
        m.train(mode != "eval")
    try:
        torch.manual_seed(7)
        f_ref, l_ref = theirs(input_signal=x.clone(), length=lens)  # NeMo dithers its input in place
        torch.manual_seed(7)
        f_our, l_our = ours(input_signal=x.clone(), length=lens)
    finally:
        for m in (theirs, ours):
            m.featurizer.dither = PRE_KW["dither"]
            m.eval()
    diff = (f_ref - f_our).abs().max().item()
    print(f"\n[parity] features {mode}: shape {tuple(f_our.shape)}, lengths {l_our.tolist()}, max abs diff {diff:.3g}")
    assert f_ref.shape == f_our.shape
    assert torch.equal(l_ref, l_our) and l_our.dtype == torch.int64
    assert diff <= 1e-4


def test_preprocessor_lengths_match_nemo_on_edge_cases(preprocessors):
    theirs, ours, _ = preprocessors
    lens = torch.tensor([16001, 160, 161, 319, 320, 1000, 12345, 16000])
    x = torch.randn(len(lens), 16001) * 0.1
    f_ref, l_ref = theirs(input_signal=x, length=lens)
    f_our, l_our = ours(input_signal=x, length=lens)
    diff = (f_ref - f_our).abs().max().item()
    print(f"\n[parity] edge lengths {lens.tolist()} -> {l_our.tolist()}, max abs diff {diff:.3g}")
    assert torch.equal(l_ref, l_our) and f_ref.shape == f_our.shape and diff <= 1e-4


@pytest.fixture(scope="module")
def clean_features(preprocessors, speech_batch):
    theirs, _, _ = preprocessors
    x, lens = speech_batch
    return theirs(input_signal=x, length=lens)


def test_quantizer_init_and_tokens_match_nemo(clean_features):
    feats, _ = clean_features
    torch.manual_seed(11)
    theirs = _nemo_modules().RandomProjectionVectorQuantizer(**QUANT_KW)
    torch.manual_seed(11)
    ours = RandomProjectionVectorQuantizer(**QUANT_KW)
    same_init = all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(), ours.state_dict().values()))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        xq_ref, id_ref = theirs(input_signal=feats)
        xq_our, id_our = ours(input_signal=feats)
    agree = (id_ref == id_our).float().mean().item()
    print(f"\n[parity] tokens {tuple(id_our.shape)}: {agree * 100:.4f} % equal "
          f"({int((id_ref != id_our).sum())} differ, padding tokens included); seeded init identical: {same_init}")
    assert same_init
    assert id_ref.shape == id_our.shape and id_our.dtype == torch.int64
    assert agree >= 0.999
    assert xq_ref.shape == xq_our.shape


def _mask_stats(masker, lengths, T, repeats, token_threshold=0.8, padding_free=True):
    """Mean masked-frame fraction per valid frame, mean passing-token fraction, and P(no passing token).

    Only valid frames are counted: NeMo's allow_overlap=False path can run past the length (padding_free=False).
    """
    frac, tok, empty = [], [], []
    for _ in range(repeats):
        feats = torch.zeros(len(lengths), 80, T)
        _, masks = masker(input_feats=feats, input_lengths=lengths)
        frame = masks[:, 0, :]
        valid = torch.arange(T)[None, :] < lengths[:, None]
        if padding_free:
            assert not frame[~valid].any()
        frame = frame * valid
        frac.append((frame.sum(1) / lengths.clamp(min=1)).mean().item())
        passing = frame.reshape(len(lengths), T // 8, 8).mean(-1) > token_threshold
        tok.append(passing.float().mean().item())
        empty.append((~passing.any(1)).float().mean().item())
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return mean(frac), mean(tok), mean(empty)


@pytest.mark.parametrize("allow_overlap", [True, False])
def test_masking_distribution_matches_nemo(allow_overlap):
    kw = dict(MASK_KW, allow_overlap=allow_overlap)
    if not allow_overlap:
        kw.update(mask_prob=0.3, block_size=24)
    torch.manual_seed(5)
    theirs = _nemo_modules().RandomBlockMasking(**kw)
    torch.manual_seed(5)
    ours = RandomBlockMasking(**kw)
    assert torch.equal(theirs.mask_embedding, ours.mask_embedding)  # same init draws
    assert ours.mask_embedding.requires_grad is theirs.mask_embedding.requires_grad is False
    lengths = torch.tensor([1000] * 24 + [700, 333, 120, 51, 50, 30, 9, 0])
    torch.manual_seed(0)
    ref = _mask_stats(theirs, lengths, 1008, repeats=25, padding_free=allow_overlap)
    our = _mask_stats(ours, lengths, 1008, repeats=25)
    print(f"\n[parity] masking overlap={allow_overlap}: masked fraction NeMo {ref[0]:.4f} ours {our[0]:.4f}; "
          f"passing tokens NeMo {ref[1]:.4f} ours {our[1]:.4f}")
    # 800 utterance draws each: the standard error of the masked fraction is ~0.005 (overlap) or less.
    assert abs(ref[0] - our[0]) < 0.02 and abs(ref[1] - our[1]) < 0.02
    # The short rule is deterministic and must agree exactly on valid frames: [0, min(8, L)). (NeMo's
    # allow_overlap=False short rule also masks frames past L; ours never does.)
    feats = torch.zeros(4, 80, 64)
    short = torch.tensor([int(kw["block_size"] / 0.8), 20, 9, 0])  # block >= 0.8 L
    valid = (torch.arange(64)[None, :] < short[:, None])[:, None, :]
    m_ref = theirs(input_feats=feats, input_lengths=short)[1] * valid
    m_our = ours(input_feats=feats, input_lengths=short)[1]
    assert torch.equal(m_ref, m_our)


def test_masking_l1000_statistics_against_nemo():
    torch.manual_seed(6)
    theirs = _nemo_modules().RandomBlockMasking(**MASK_KW)
    ours = RandomBlockMasking(**MASK_KW)
    lengths = torch.full((200,), 1000)
    torch.manual_seed(1)
    ref = _mask_stats(theirs, lengths, 1008, repeats=5)
    our = _mask_stats(ours, lengths, 1008, repeats=5)
    print(f"\n[parity] L=1000, 1000 draws: masked fraction NeMo {ref[0]:.4f} ours {our[0]:.4f}; passing tokens "
          f"NeMo {ref[1]:.4f} ours {our[1]:.4f}; P(no token) NeMo {ref[2]:.4f} ours {our[2]:.4f}")
    assert abs(ref[0] - our[0]) < 0.015 and abs(our[0] - 0.32) < 0.015
    assert abs(ref[1] - our[1]) < 0.015


def test_decoder_matches_nemo():
    kw = dict(feat_in=512, num_classes=8192, num_decoders=1, squeeze_single=False, use_bias=True)
    torch.manual_seed(3)
    theirs = _nemo_modules().MultiSoftmaxDecoder(**kw)
    torch.manual_seed(3)
    ours = MultiSoftmaxDecoder(**kw)
    same_init = all(torch.equal(a, b) for a, b in zip(theirs.state_dict().values(), ours.state_dict().values()))
    assert list(theirs.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    enc = torch.randn(2, 512, 40)
    ref, our = theirs(encoder_output=enc), ours(encoder_output=enc)
    diff = (ref - our).abs().max().item()
    print(f"\n[parity] decoder log-probs {tuple(our.shape)} max abs diff {diff:.3g}; "
          f"seeded init identical: {same_init}")
    assert same_init and ref.shape == our.shape and diff <= 1e-5


@pytest.mark.parametrize("num_decoders", [1, 2])
def test_loss_matches_nemo_on_identical_inputs(clean_features, num_decoders):
    from nemo.collections.asr.losses import MultiMLMLoss as NeMoMultiMLMLoss

    feats, feat_len = clean_features
    kw = dict(combine_time_steps=8, mask_threshold=0.8, num_decoders=num_decoders, squeeze_single=False)
    theirs, ours = NeMoMultiMLMLoss(**kw), MultiMLMLoss(**kw)
    torch.manual_seed(2)
    _, masks = RandomBlockMasking(**dict(MASK_KW, mask_prob=0.03))(input_feats=feats, input_lengths=feat_len)
    B, _, T = feats.shape
    log_probs = torch.randn(B, T // 8, 8192, num_decoders).log_softmax(dim=2)
    targets = torch.randint(0, 8192, (B, T // 8, num_decoders))
    enc_len = torch.div(feat_len + 7, 8, rounding_mode="floor")
    ref = theirs(masks=masks, decoder_outputs=log_probs, targets=targets, decoder_lengths=enc_len)
    our = ours(masks=masks, decoder_outputs=log_probs, targets=targets, decoder_lengths=enc_len)
    rel = abs(ref.item() - our.item()) / abs(ref.item())
    n_tok = int(ours.token_mask(masks).sum())
    print(f"\n[parity] loss ({num_decoders} decoder(s), {n_tok} masked tokens): NeMo {ref.item():.6f} "
          f"ours {our.item():.6f} rel diff {rel:.3g}")
    assert n_tok > 0 and rel <= 1e-4


def test_loss_empty_batch_is_zero_where_nemo_gives_nan():
    from nemo.collections.asr.losses import MultiMLMLoss as NeMoMultiMLMLoss

    kw = dict(combine_time_steps=8, mask_threshold=0.8, num_decoders=1, squeeze_single=False)
    masks = torch.zeros(2, 80, 64)
    log_probs = torch.randn(2, 8, 16, 1).log_softmax(dim=2)
    targets = torch.zeros(2, 8, 1, dtype=torch.long)
    ref = NeMoMultiMLMLoss(**kw)(masks=masks, decoder_outputs=log_probs, targets=targets)
    our = MultiMLMLoss(**kw)(masks=masks, decoder_outputs=log_probs, targets=targets)
    print(f"\n[parity] no masked token: NeMo {ref.item()} (deliberate deviation) ours {our.item()}")
    assert math.isnan(ref.item()) and our.item() == 0.0


def _lrs(cls, kwargs, steps):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5.0, betas=(0.9, 0.98), weight_decay=1e-3)
    sched = cls(opt, **kwargs)
    out = {}
    for step in range(max(steps) + 1):
        if step in steps:
            out[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return out


def test_noam_and_cosine_match_nemo_exactly():
    from nemo.core.optim import lr_scheduler as nemo_sched

    steps = [0, 1, 2, 10, 999, 1000, 2499, 2500, 2501, 4000, 10000, 25000]
    noam = dict(d_model=512, warmup_steps=2500, min_lr=1e-6, max_steps=500000)
    ref = _lrs(nemo_sched.NoamAnnealing, noam, steps)
    our = _lrs(NoamAnnealing, noam, steps)
    worst = max(abs(ref[s] - our[s]) for s in steps)
    print(f"\n[parity] Noam lr over {len(steps)} steps up to {max(steps)}: max abs diff {worst:.3g}")
    assert ref == our
    # NEST's own values (warmup 25k) straight from the formula both sides share.
    for s, lr in [(1, 5.59e-8), (25000, 1.3975e-3), (500000, 3.125e-4)]:
        assert 5.0 * 512 ** -0.5 * min(s ** -0.5, s * 25000 ** -1.5) == pytest.approx(lr, rel=1e-3)
    cos = dict(max_steps=3000, warmup_steps=200, min_lr=1e-5)
    steps = [0, 1, 100, 200, 201, 1500, 2999, 3000, 3001, 4000]
    assert _lrs(nemo_sched.CosineAnnealing, cos, steps) == _lrs(CosineAnnealing, cos, steps)
