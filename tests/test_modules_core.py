"""Unit tests of the NEST front end, quantizer, masking, decoder, loss and optimiser schedule (no NeMo needed)."""

import math

import pytest
import torch
import torchaudio

from nest_ssl.modules.decoder import MultiSoftmaxDecoder
from nest_ssl.modules.loss import MLMLoss, MultiMLMLoss
from nest_ssl.modules.masking import RandomBlockMasking
from nest_ssl.modules.preprocessor import AudioToMelSpectrogramPreprocessor, SpectrogramAugmentation
from nest_ssl.modules.quantizer import RandomProjectionVectorQuantizer
from nest_ssl.optim import NoamAnnealing, build_optimizer, build_scheduler

# The NEST yaml's preprocessor values.
PRE_KW = dict(sample_rate=16000, normalize="per_feature", window_size=0.025, window_stride=0.01, window="hann",
              features=80, n_fft=512, log=True, frame_splicing=1, dither=0.00001, pad_to=16, pad_value=0.0)


@pytest.fixture(scope="module")
def pre():
    return AudioToMelSpectrogramPreprocessor(**PRE_KW).eval()


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_max = max(max(lengths), 1)
    x = torch.randn(len(lengths), n_max, generator=g) * 0.1
    return x, torch.tensor(lengths, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------- preproc

def test_preprocessor_buffers_match_nemo_names_and_an_independent_slaney_filterbank(pre):
    sd = pre.state_dict()
    assert list(sd) == ["featurizer.window", "featurizer.fb"]
    assert sd["featurizer.window"].shape == (400,) and sd["featurizer.fb"].shape == (1, 80, 257)
    assert torch.equal(sd["featurizer.window"], torch.hann_window(400, periodic=False))
    ta = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 80, 16000, norm="slaney", mel_scale="slaney").T
    assert torch.allclose(sd["featurizer.fb"][0], ta, atol=1e-6, rtol=1e-4)
    assert list(pre.parameters()) == []


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 319, 320, 16000, 16001, 12345])
def test_frame_count_is_n_over_hop_and_width_a_multiple_of_16(pre, n):
    x, lens = _batch([n])
    feats, feat_len = pre(input_signal=x, length=lens)
    n_frames = 1 + max(n, 1) // 160  # the STFT of the padded tensor (at least one sample wide here)
    assert feat_len.dtype == torch.int64 and feat_len.tolist() == [n // 160]
    assert feats.shape == (1, 80, 16 * math.ceil(n_frames / 16))
    assert torch.isfinite(feats).all()
    assert (feats[..., n // 160:] == 0).all()


def test_batch_lengths_padding_zero_and_valid_frames_normalised(pre):
    x, lens = _batch([16000, 12345, 161, 0])
    feats, feat_len = pre(input_signal=x, length=lens)
    assert feat_len.tolist() == [100, 77, 1, 0]
    assert feats.shape == (4, 80, 112) and feats.dtype == torch.float32
    for b, n in enumerate(feat_len.tolist()):
        assert (feats[b, :, n:] == 0).all()
    valid = feats[0, :, :100]
    assert valid.mean(1).abs().max() < 1e-4
    assert (valid.std(1) - 1).abs().max() < 1e-3  # std + 1e-5 in the denominator
    assert (feats[2] == 0).all()  # a single frame normalises to 0 (its std is defined as 0)


def test_features_do_not_depend_on_batch_padding(pre):
    x, lens = _batch([12345])
    alone, _ = pre(input_signal=x, length=lens)
    padded = torch.cat([x, torch.randn(1, 5000)], dim=1)  # garbage after the length must not leak in
    batched, _ = pre(input_signal=padded, length=lens)
    n = 12345 // 160
    assert torch.allclose(alone[..., :n], batched[..., :n], atol=1e-5)
    assert (batched[..., n:] == 0).all()


def test_sixty_second_utterance_batch_of_one(pre):
    x, lens = _batch([60 * 16000])
    feats, feat_len = pre(input_signal=x, length=lens)
    assert feat_len.tolist() == [6000] and feats.shape == (1, 80, 6016)
    assert torch.isfinite(feats).all()


def test_dither_only_in_training_and_input_left_untouched(pre):
    x, lens = _batch([8000, 8000])
    keep = x.clone()
    a, _ = pre(input_signal=x, length=lens)
    b, _ = pre(input_signal=x, length=lens)
    assert torch.equal(a, b)
    pre.train()
    try:
        c, _ = pre(input_signal=x, length=lens)
    finally:
        pre.eval()
    assert not torch.equal(a, c) and torch.allclose(a, c, atol=0.05)
    assert torch.equal(x, keep)


def test_preprocessor_has_no_grad_and_casts_input_to_float32(pre):
    x, lens = _batch([4000])
    x = x.double().requires_grad_()
    feats, _ = pre(input_signal=x, length=lens)
    assert feats.dtype == torch.float32 and not feats.requires_grad


def test_unimplemented_options_raise_and_spec_augment_is_identity():
    with pytest.raises(NotImplementedError):
        AudioToMelSpectrogramPreprocessor(**{**PRE_KW, "nb_augmentation_prob": 0.5})
    with pytest.raises(NotImplementedError):
        AudioToMelSpectrogramPreprocessor(**{**PRE_KW, "window": "kaiser"})
    with pytest.raises(ValueError):
        AudioToMelSpectrogramPreprocessor(**{**PRE_KW, "n_window_size": 400})  # window_size given too
    with pytest.raises(NotImplementedError):
        SpectrogramAugmentation(freq_masks=2, time_masks=10, freq_width=27, time_width=0.05)
    aug = SpectrogramAugmentation(freq_masks=0, time_masks=0, freq_width=27, time_width=0.05)
    spec = torch.randn(2, 80, 32)
    assert aug(input_spec=spec, length=torch.tensor([32, 20])) is spec
    assert list(aug.state_dict()) == []


# --------------------------------------------------------------------------------------------------------- quantizer

def _brute_force_l2(q, feats):
    """NeMo's reference: the full float64 difference tensor, Euclidean norm, argmin."""
    x = feats.transpose(1, 2)
    B, T, _ = x.shape
    x = x.reshape(B, T // q.combine_time_steps, -1)
    x = torch.nn.functional.normalize(q.proj(x).view(B, x.shape[1], q.num_books, q.code_dim), dim=-1)
    diff = x.unsqueeze(-1) - q.codebooks.transpose(1, 2)[None, None]
    return diff.norm(dim=-2).argmin(dim=-1)


@pytest.mark.parametrize("num_classes,num_books", [(8192, 1), (300, 2)])
def test_quantizer_tokens_equal_brute_force_l2(num_classes, num_books):
    q = RandomProjectionVectorQuantizer(feat_in=80, code_dim=16, num_classes=num_classes, num_books=num_books,
                                        dist_fn="l2", freeze=True, squeeze_single=False, combine_time_steps=8)
    feats = torch.randn(2, 80, 96)
    feats[1, :, 40:] = 0  # padding frames: every codeword is (almost) equally far
    with torch.no_grad():
        _, xid = q(input_signal=feats)
        ref = _brute_force_l2(q, feats)
    assert xid.dtype == torch.int64 and xid.shape == (2, 12, num_books)
    assert torch.equal(xid, ref)


@pytest.mark.parametrize("num_books", [1, 2])
def test_quantizer_near_ties_are_decided_by_nemos_formula(num_books):
    """Frames halfway between two codewords (their scores tie to rounding) and all-zero frames take NeMo's answer,
    like every other frame; the decision reads nothing on the host (a fixed number of exact re-scores per chunk)."""
    q = RandomProjectionVectorQuantizer(feat_in=80, code_dim=16, num_classes=8192, num_books=num_books,
                                        dist_fn="l2", freeze=True, squeeze_single=False, combine_time_steps=8)
    g = torch.Generator().manual_seed(1)
    books = q.codebooks.detach()  # (H, C, D)
    x = torch.nn.functional.normalize(torch.randn(2, 10, num_books, 16, generator=g, dtype=torch.float64), dim=-1)
    for i in range(5):  # the normalised midpoint of two codewords: equidistant from both
        for h in range(num_books):
            a, b = torch.randint(0, 8192, (2,), generator=g).tolist()
            x[0, i, h] = torch.nn.functional.normalize(books[h, a] + books[h, b], dim=-1)
    x[1, 6:] = 0  # padding
    ids = q._nearest_l2(x)
    ref = (x.unsqueeze(-1) - books.transpose(1, 2)[None, None]).norm(dim=-2).argmin(dim=-1)
    assert torch.equal(ids, ref)


def test_quantizer_parameters_shapes_frozen_and_outputs():
    q = RandomProjectionVectorQuantizer(feat_in=80, code_dim=16, num_classes=8192, num_books=1, dist_fn="l2",
                                        freeze=True, squeeze_single=False, combine_time_steps=8)
    sd = q.state_dict()
    assert list(sd) == ["codebooks", "proj.weight"]  # NeMo order: own parameter, then submodule
    assert sd["proj.weight"].shape == (16, 640) and sd["proj.weight"].dtype == torch.float32
    assert sd["codebooks"].shape == (1, 8192, 16) and sd["codebooks"].dtype == torch.float64
    assert torch.allclose(sd["codebooks"].norm(dim=-1), torch.ones(1, 8192, dtype=torch.float64))
    assert abs(sd["proj.weight"].std().item() - math.sqrt(2 / (640 + 16))) < 0.005
    assert not any(p.requires_grad for p in q.parameters())
    q.train()
    assert not q.training  # frozen targets stay in eval mode
    feats = torch.randn(3, 80, 64)
    xq, xid = q(input_signal=feats)
    assert xq.shape == (3, 16, 8, 1) and xid.shape == (3, 8, 1)
    assert torch.equal(xq[:, :, :, 0].transpose(1, 2), q.codebooks[0][xid[..., 0]])
    with pytest.raises(ValueError):
        q(input_signal=torch.randn(1, 80, 60))  # 60 frames are not whole tokens of 8


def test_quantizer_cosine_equals_l2_and_squeeze_time_ahead():
    q = RandomProjectionVectorQuantizer(feat_in=80, code_dim=16, num_classes=512, num_books=1, dist_fn="l2",
                                        squeeze_single=True, combine_time_steps=8, time_ahead=True)
    feats = torch.randn(2, 64, 80)
    xq, xid = q(input_signal=feats)
    assert xq.shape == (2, 8, 16) and xid.shape == (2, 8)
    q.dist_fn = "cosine"
    assert torch.equal(q(input_signal=feats)[1], xid)


# ----------------------------------------------------------------------------------------------------------- masking

def _masker(**kw):
    args = dict(feat_in=80, mask_prob=0.01, block_size=40, freeze=True, allow_overlap=True)
    args.update(kw)
    return RandomBlockMasking(**args)


def test_masking_invariants_padding_never_masked_and_embedding_applied():
    m = _masker(mask_prob=0.05)
    feats = torch.randn(6, 80, 400, requires_grad=True)
    lens = torch.tensor([400, 321, 200, 90, 51, 3])
    masked, masks = m(input_feats=feats, input_lengths=lens)
    assert masks.shape == feats.shape and masks.dtype == feats.dtype
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    frame = masks[:, 0, :].bool()
    assert torch.equal(masks, frame[:, None, :].expand_as(masks).float())
    for b, n in enumerate(lens.tolist()):
        assert not frame[b, n:].any()
        if n > 50:
            assert not frame[b, n - 1]  # a block starts at most L - block - 1 frames in, so never reaches L - 1
    emb = m.mask_embedding[None, :, None].expand_as(feats)
    assert torch.equal(masked[masks.bool()], emb[masks.bool()])
    assert torch.equal(masked[~masks.bool()], feats[~masks.bool()])
    masked.sum().backward()
    assert torch.equal(feats.grad, 1 - masks)
    assert m.mask_embedding.shape == (80,) and not m.mask_embedding.requires_grad
    assert 0.06 < m.mask_embedding.std().item() < 0.14


def test_masking_short_rule():
    m = _masker()
    lens = torch.tensor([50, 49, 5, 0, 51])  # 40 >= 0.8 L  <=>  L <= 50
    _, masks = m(input_feats=torch.zeros(5, 80, 64), input_lengths=lens)
    frame = masks[:, 0, :]
    assert frame[0, :8].all() and frame[0].sum() == 8
    assert frame[1, :8].all() and frame[1].sum() == 8
    assert frame[2, :5].all() and frame[2].sum() == 5
    assert frame[3].sum() == 0


def _expected_fraction(L, block, p):
    # Binomial(count, p) starts chosen uniformly = each of the `count` candidate starts kept independently with p.
    count = L - block
    t = torch.arange(L)
    k = (torch.minimum(t, torch.tensor(count - 1)) - (t - block + 1).clamp(min=0) + 1).clamp(min=0)
    return (1 - (1 - p) ** k.double()).mean().item()


def test_masking_statistics_match_nemo_distribution():
    m = _masker()
    B, L = 400, 1000
    _, masks = m(input_feats=torch.zeros(B, 80, L), input_lengths=torch.full((B,), L))
    frac = masks[:, 0, :].mean().item()
    expected = _expected_fraction(L, 40, 0.01)
    assert abs(expected - 0.32) < 0.01
    assert abs(frac - expected) < 0.02  # per-utterance sd ~0.14 -> sd of the mean ~0.007
    starts = (masks[:, 0, 1:] > masks[:, 0, :-1]).sum(1) + masks[:, 0, 0]  # runs of masked frames
    assert 4.5 < starts.float().mean().item() < 9.6  # overlapping blocks merge; 9.6 blocks on average


def test_masking_without_overlap_masks_exactly_n_blocks():
    m = _masker(mask_prob=0.5, block_size=48, allow_overlap=False)
    B, L = 64, 1000
    _, masks = m(input_feats=torch.zeros(B, 80, 1024), input_lengths=torch.full((B,), L))
    frame = masks[:, 0, :]
    # ceil(1000 * 0.5 / 48) = 11 blocks of 48 on distinct grid cells, never overlapping, never past L.
    assert (frame.sum(1) == 11 * 48).all()
    assert not frame[:, L:].any()
    assert frame.std(0).sum() > 0  # positions are random


# ------------------------------------------------------------------------------------------------- decoder and loss

def test_decoder_shapes_init_and_log_softmax():
    d = MultiSoftmaxDecoder(feat_in=512, num_classes=8192, num_decoders=1, squeeze_single=False, use_bias=True)
    sd = d.state_dict()
    assert list(sd) == ["decoder_layers.0.weight", "decoder_layers.0.bias"]
    assert sd["decoder_layers.0.weight"].shape == (8192, 512, 1)
    bound = math.sqrt(6 / (512 + 8192))
    w = sd["decoder_layers.0.weight"]
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert sd["decoder_layers.0.bias"].abs().max() <= 1 / math.sqrt(512)
    out = d(encoder_output=torch.randn(2, 512, 5))
    assert out.shape == (2, 5, 8192, 1)
    assert torch.allclose(out.logsumexp(dim=2), torch.zeros(2, 5, 1), atol=1e-4)
    d2 = MultiSoftmaxDecoder(feat_in=8, num_classes=6, num_decoders=2)
    out2 = d2(encoder_output=torch.randn(1, 8, 3))
    logits = d2.decoder_layers(torch.randn(1, 8, 3))
    assert out2.shape == (1, 3, 6, 2) and logits.shape == (1, 12, 3)


def _frame_masks(token_frames, D=4):
    """(B, T') numbers of masked frames per 8-frame token -> frame masks (B, D, 8 T')."""
    B, Tt = token_frames.shape
    per = torch.arange(8)[None, None, :] < token_frames[:, :, None]
    return per.reshape(B, Tt * 8).float()[:, None, :].expand(B, D, Tt * 8).contiguous()


def test_loss_equals_hand_computed_token_weighted_nll():
    loss_fn = MultiMLMLoss(combine_time_steps=8, mask_threshold=0.8, num_decoders=1, squeeze_single=False)
    frames = torch.tensor([[8, 7, 6, 0], [0, 8, 0, 1]])
    masks = _frame_masks(frames)
    assert loss_fn.token_mask(masks).tolist() == [[True, True, False, False], [False, True, False, False]]
    lp = torch.randn(2, 4, 10, 1).log_softmax(dim=2).requires_grad_()
    tgt = torch.randint(0, 10, (2, 4, 1))
    loss = loss_fn(masks=masks, decoder_outputs=lp, targets=tgt, decoder_lengths=torch.tensor([4, 4]))
    picked = [lp[0, 0, tgt[0, 0, 0], 0], lp[0, 1, tgt[0, 1, 0], 0], lp[1, 1, tgt[1, 1, 0], 0]]
    expected = -torch.stack(picked).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert lp.grad.abs().sum() > 0


def test_loss_multi_decoder_average_and_short_targets_padded():
    masks = _frame_masks(torch.tensor([[8, 8, 8]]))
    lp = torch.randn(1, 3, 5, 2).log_softmax(dim=2)
    tgt = torch.randint(0, 5, (1, 3, 2))
    two = MultiMLMLoss(combine_time_steps=8, num_decoders=2)(masks=masks, decoder_outputs=lp, targets=tgt)
    one = MLMLoss(combine_time_steps=8)
    each = [one(decoder_outputs=lp[..., i], targets=tgt[..., i], masks=masks) for i in range(2)]
    assert torch.allclose(two, (each[0] + each[1]) / 2)
    squeezed = MultiMLMLoss(combine_time_steps=8, squeeze_single=True)
    short = squeezed(masks=masks, decoder_outputs=lp[..., 0], targets=tgt[:, :2, 0])  # padded with class 0
    expected = -torch.stack([lp[0, 0, tgt[0, 0, 0], 0], lp[0, 1, tgt[0, 1, 0], 0], lp[0, 2, 0, 0]]).mean()
    assert torch.allclose(short, expected)


def test_loss_without_masked_tokens_is_a_connected_zero():
    loss_fn = MultiMLMLoss(combine_time_steps=8, mask_threshold=0.8)
    masks = _frame_masks(torch.tensor([[6, 0, 5]]))  # nothing passes 0.8
    lp = torch.randn(1, 3, 7, 1).log_softmax(dim=2)
    lp[0, 0, 0, 0] = float("-inf")
    lp.requires_grad_()
    loss = loss_fn(masks=masks, decoder_outputs=lp, targets=torch.zeros(1, 3, 1, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(lp.grad, torch.zeros_like(lp))


# ------------------------------------------------------------------------------------------------ optimiser, schedule

def _noam(**kw):
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(p, {"name": "adamw", "lr": 5.0, "betas": [0.9, 0.98], "weight_decay": 1e-3})
    cfg = {"name": "NoamAnnealing", "d_model": 512, "warmup_steps": 25000, "warmup_ratio": None, "min_lr": 1e-6}
    cfg.update(kw)
    return opt, build_scheduler(opt, cfg, max_steps=500000)


def test_noam_values():
    opt, sched = _noam()
    assert isinstance(sched, NoamAnnealing)
    assert opt.param_groups[0]["lr"] == pytest.approx(5.59e-8, rel=1e-3)  # s = max(1, 0) before any step
    for step, lr in [(1, 5.59e-8), (1000, 5.59e-5), (25000, 1.3975e-3), (100000, 6.99e-4), (500000, 3.125e-4)]:
        sched.last_epoch = step
        assert sched.get_lr()[0] == pytest.approx(lr, rel=1e-3)
    _, floored = _noam(min_lr=1e-3)
    floored.last_epoch = 10  # warmup: min_lr does not apply
    assert floored.get_lr()[0] == pytest.approx(5.59e-7, rel=1e-3)
    floored.last_epoch = 500000  # after warmup it does
    assert floored.get_lr()[0] == 1e-3


def test_noam_steps_with_optimizer_and_state_round_trip():
    opt, sched = _noam()
    for _ in range(30):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5.0 * 512 ** -0.5 * 30 * 25000 ** -1.5)
    assert opt.param_groups[0]["betas"] == (0.9, 0.98) and opt.param_groups[0]["weight_decay"] == 1e-3
    opt2, sched2 = _noam()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for _ in range(5):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_optimizer_and_scheduler_config_errors():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(p, {"name": "lamb", "lr": 1.0})
    with pytest.raises(ValueError, match="momentum"):
        build_optimizer(p, {"name": "adamw", "lr": 1.0, "momentum": 0.9})
    sgd = build_optimizer(p, {"name": "sgd", "lr": 0.1, "momentum": 0.9})
    assert isinstance(sgd, torch.optim.SGD)
    assert build_scheduler(sgd, None) is None and build_scheduler(sgd, {"name": "none"}) is None
    with pytest.raises(ValueError, match="NoamAnnealing"):
        build_scheduler(sgd, {"name": "Linear"})
    cos = build_scheduler(sgd, {"name": "CosineAnnealing", "warmup_steps": 10, "min_lr": 0.0}, max_steps=110)
    cos.last_epoch = 60
    assert cos.get_lr()[0] == pytest.approx(0.05)
