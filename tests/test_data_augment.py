"""MultiSpeakerNoiseAugmentation: NeMo 2.7.3's parameters and meaning, our fixes, determinism."""

import math
import random

import pytest
import torch

from nest_ssl.data.augment import MultiSpeakerNoiseAugmentation, tile_to
from nest_ssl.data.batch import AudioNoiseBatch

NEST = dict(
    prob=0.5, noise_ratio=0.5, min_r_speech=-5.0, max_r_speech=5.0, min_r_noise=-5.0, max_r_noise=20.0,
    min_mix_rate=0.5, max_mix_rate=0.5, min_num_segments=1, max_num_segments=1, min_num_speakers=1,
    max_num_speakers=1,
)


def speechlike(n, seed):
    """Harmonic tone with a syllable-rate envelope plus a little noise (distinct per seed)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000.0
    f0 = 100.0 + 20.0 * seed
    x = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6))
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 4.0 * t + seed) ** 2
    return (0.1 * env * x + 0.005 * torch.randn(n, generator=g)).float()


def make_batch(lens, noise_lens=None, seed=0):
    width = max(lens)
    audio = torch.zeros(len(lens), width)
    for i, n in enumerate(lens):
        audio[i, :n] = speechlike(n, seed + i)
    noise = torch.zeros_like(audio)
    noise_lens = noise_lens or lens
    g = torch.Generator().manual_seed(1000 + seed)
    for i, n in enumerate(noise_lens):
        noise[i, :n] = 0.3 * torch.randn(n, generator=g)
    return AudioNoiseBatch(
        sample_id=[f"u{i}" for i in range(len(lens))], audio=audio, audio_len=torch.tensor(lens),
        noise=noise, noise_len=torch.tensor(noise_lens),
    )


def snr_db(batch, i):
    n = int(batch.audio_len[i])
    s = batch.audio[i, :n].double()
    r = batch.noise[i, :n].double()
    return 10 * math.log10(float(s @ s) / float(r @ r))


@pytest.mark.parametrize("noise_ratio", [0.0, 1.0])
@pytest.mark.parametrize("segments", [1, 4])
def test_measured_energy_ratio_equals_drawn(noise_ratio, segments):
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 1.0, "noise_ratio": noise_ratio,
                                           "max_num_segments": segments, "max_num_speakers": 3,
                                           "min_mix_rate": 0.2, "max_mix_rate": 0.9})
    batch = make_batch([16000, 12000, 9000, 20000, 5000])
    out = aug(batch, rng=random.Random(3))
    for i, info in enumerate(out.aug_info):
        assert info is not None
        assert info["mode"] == ("noise" if noise_ratio == 1.0 else "speech")
        lo, hi = (-5.0, 20.0) if noise_ratio == 1.0 else (-5.0, 5.0)
        assert lo <= info["energy_ratio_db"] <= hi
        assert snr_db(out, i) == pytest.approx(info["energy_ratio_db"], abs=1e-3)


def test_prob_zero_leaves_everything_clean():
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 0.0})
    batch = make_batch([8000, 6000, 7000])
    out = aug(batch, rng=random.Random(0))
    assert out.aug_info == [None, None, None]
    assert torch.count_nonzero(out.noise) == 0
    assert torch.equal(out.noisy_audio, out.audio)


def test_prob_one_noise_ratio_one_is_noise_only_from_the_noise_clip():
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 1.0, "noise_ratio": 1.0})
    # Noise clips shorter than the mix length must be tiled (NeMo's repeat_noise).
    batch = make_batch([16000, 12000, 10000], noise_lens=[3000, 12000, 700])
    out = aug(batch, rng=random.Random(1))
    for i, info in enumerate(out.aug_info):
        assert info["mode"] == "noise"
        (start, length, src), = info["segments"]
        assert src == -1 and length == int(int(batch.audio_len[i]) * 0.5)
        clip = tile_to(batch.noise[i, : int(batch.noise_len[i])], length)
        assert torch.allclose(out.noise[i, start : start + length], info["scale"] * clip, atol=1e-6)
        # Nothing outside the mixed region.
        assert torch.count_nonzero(out.noise[i, :start]) == 0
        assert torch.count_nonzero(out.noise[i, start + length :]) == 0


def test_speech_mode_uses_a_crop_of_another_utterance():
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 1.0, "noise_ratio": 0.0})
    batch = make_batch([16000, 12000, 3000])
    out = aug(batch, rng=random.Random(5))
    for i, info in enumerate(out.aug_info):
        (start, length, src), = info["segments"]
        assert src != i and 0 <= src < 3
        piece = out.noise[i, start : start + length] / info["scale"]
        other = batch.audio[src, : int(batch.audio_len[src])]
        if length > other.numel():
            expected = tile_to(other, length)
        else:
            # Find the crop offset from the first sample pair and compare the whole segment.
            offs = [o for o in range(other.numel() - length + 1)
                    if torch.allclose(other[o : o + length], piece, atol=1e-5)]
            assert offs, f"utterance {i}: residual is not a crop of utterance {src}"
            expected = other[offs[0] : offs[0] + length]
        assert torch.allclose(piece, expected, atol=1e-5)


def test_skipped_utterances_stay_clean_even_with_raw_noise():
    # NeMo would add the dataset's raw noise to a skipped utterance; we keep it clean.
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 0.5})
    batch = make_batch([8000] * 16)
    out = aug(batch, rng=random.Random(11))
    skipped = [i for i, info in enumerate(out.aug_info) if info is None]
    assert 0 < len(skipped) < 16
    for i in skipped:
        assert torch.count_nonzero(out.noise[i]) == 0
        assert torch.equal(out.noisy_audio[i], out.audio[i])


def test_noisy_is_audio_plus_noise_and_lengths():
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 1.0, "max_num_segments": 3, "max_num_speakers": 2})
    batch = make_batch([16000, 12000, 9000, 4000], noise_lens=[500, 12000, 9000, 100])
    audio_before = batch.audio.clone()
    noise_before = batch.noise.clone()
    out = aug(batch, rng=random.Random(2))
    assert torch.equal(out.noisy_audio, out.audio + out.noise)
    assert torch.equal(out.noisy_audio_len, out.audio_len)
    assert torch.equal(out.noise_len, out.audio_len)
    assert out.noise.shape == out.audio.shape == out.noisy_audio.shape
    # Padding stays silent and the inputs are untouched.
    for i, n in enumerate(out.audio_len.tolist()):
        assert torch.count_nonzero(out.noise[i, n:]) == 0
    assert torch.equal(batch.audio, audio_before) and torch.equal(batch.noise, noise_before)


def test_segments_statistics_and_placement():
    aug = MultiSpeakerNoiseAugmentation(prob=0.7, noise_ratio=0.3, min_mix_rate=0.1, max_mix_rate=0.6,
                                        min_num_segments=2, max_num_segments=5, min_num_speakers=1,
                                        max_num_speakers=4)
    rng = random.Random(123)
    lens = [3000, 5000, 8000, 1000, 6000, 7000]
    n_aug = n_noise = n_total = 0
    for _ in range(300):
        plans = aug.plan(lens, rng)
        for i, p in enumerate(plans):
            n_total += 1
            if p is None:
                continue
            n_aug += 1
            n_noise += p.mode == "noise"
            assert int(lens[i] * 0.1) <= p.mix_len <= max(1, int(lens[i] * 0.6))
            assert sum(s.length for s in p.segments) == p.mix_len
            assert 1 <= len(p.segments) <= 5
            end = 0
            for s in p.segments:  # left to right, no overlap, inside the utterance
                assert s.dst_start >= end and s.length > 0
                end = s.dst_start + s.length
            assert end <= lens[i]
            if p.mode == "speech":
                assert len({s.src for s in p.segments}) <= 4 and i not in {s.src for s in p.segments}
    assert n_aug / n_total == pytest.approx(0.7, abs=0.03)
    assert n_noise / n_aug == pytest.approx(0.3, abs=0.04)


def test_batch_of_one_always_uses_noise_mode():
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 1.0, "noise_ratio": 0.0})
    out = aug(make_batch([8000]), rng=random.Random(0))
    assert out.aug_info[0]["mode"] == "noise"
    assert snr_db(out, 0) == pytest.approx(out.aug_info[0]["energy_ratio_db"], abs=1e-3)


def test_noise_mode_without_noise_stays_clean():
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 1.0, "noise_ratio": 1.0})
    batch = make_batch([8000, 4000])
    batch.noise.zero_()
    out = aug(batch, rng=random.Random(0))
    assert torch.count_nonzero(out.noise) == 0
    out = aug(batch, rng=random.Random(0), noise_source=lambda i, n: None)
    assert torch.count_nonzero(out.noise) == 0


def test_noise_source_is_called_only_for_noise_mode_with_mix_len():
    aug = MultiSpeakerNoiseAugmentation(**NEST)
    batch = make_batch([10000] * 12)
    calls = []

    def source(i, n):
        calls.append((i, n))
        return torch.ones(n // 3)  # short: tiled

    out = aug(batch, rng=random.Random(4), noise_source=source)
    noise_items = [i for i, info in enumerate(out.aug_info) if info and info["mode"] == "noise"]
    assert noise_items and [c[0] for c in calls] == noise_items
    assert all(n == 5000 for _, n in calls)


def test_deterministic_given_the_rng():
    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "max_num_segments": 3, "max_num_speakers": 3})
    a = aug(make_batch([9000, 8000, 7000, 6000]), rng=random.Random(9))
    b = aug(make_batch([9000, 8000, 7000, 6000]), rng=random.Random(9))
    c = aug(make_batch([9000, 8000, 7000, 6000]), rng=random.Random(10))
    assert torch.equal(a.noisy_audio, b.noisy_audio) and a.aug_info == b.aug_info
    assert a.aug_info != c.aug_info
    # A torch.Generator works too and is deterministic in its seed.
    d = aug(make_batch([9000, 8000]), rng=torch.Generator().manual_seed(5))
    e = aug(make_batch([9000, 8000]), rng=torch.Generator().manual_seed(5))
    assert torch.equal(d.noisy_audio, e.noisy_audio)


@pytest.mark.parametrize(
    "bad",
    [dict(prob=1.5), dict(noise_ratio=-0.1), dict(min_r_speech=6.0), dict(min_r_noise=30.0),
     dict(min_mix_rate=0.8, max_mix_rate=0.5), dict(min_num_segments=0), dict(min_num_speakers=3, max_num_speakers=2)],
)
def test_invalid_parameters_raise(bad):
    with pytest.raises(ValueError):
        MultiSpeakerNoiseAugmentation(**{**NEST, **bad})


def test_nemo_defaults_match():
    aug = MultiSpeakerNoiseAugmentation()
    assert (aug.prob, aug.noise_ratio, aug.min_r_speech, aug.max_r_speech, aug.min_r_noise, aug.max_r_noise,
            aug.min_mix_rate, aug.max_mix_rate, aug.min_num_segments, aug.max_num_segments,
            aug.min_num_speakers, aug.max_num_speakers) == (0.0, 0.0, -5.0, 5.0, -5.0, 20.0, 0.0, 1.0, 1, 5, 1, 4)


def test_compact_form_pickles_and_materializes_to_the_dense_batch():
    import pickle

    aug = MultiSpeakerNoiseAugmentation(**{**NEST, "prob": 0.7, "max_num_segments": 3, "max_num_speakers": 2})
    dense = aug(make_batch([9000, 8000, 7000, 3000]), rng=random.Random(8))
    compact = aug(make_batch([9000, 8000, 7000, 3000]), rng=random.Random(8), dense=False)
    assert compact.noise is None and compact.noisy_audio is None
    # Only the spans travel: fewer samples than one dense (B, T) tensor.
    assert compact.noise_values.numel() < dense.noise.numel()
    for batch in (pickle.loads(pickle.dumps(compact)), pickle.loads(pickle.dumps(dense)), compact.to("cpu")):
        assert torch.equal(batch.noise, dense.noise) and torch.equal(batch.noisy_audio, dense.noisy_audio)
        assert torch.equal(batch.noisy_audio_len, dense.audio_len) and batch.aug_info == dense.aug_info
    assert torch.equal(compact.materialize().noisy_audio, dense.noisy_audio)
