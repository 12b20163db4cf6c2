"""AudioNoiseDataset / NoiseSet / build_dataloader on real audio files written to tmp_path."""

import json
import logging
import math
import os
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import AudioSource, CutSet, Recording, RecordingSet

from nest_ssl.data import (
    AudioNoiseBatch,
    AudioNoiseDataset,
    EmptyNoiseManifestError,
    MultiSpeakerNoiseAugmentation,
    NoiseSet,
    build_dataloader,
    build_dataset,
)

SR = 16000
NEST_AUG = dict(
    _target_="nemo.collections.asr.modules.ssl_modules.MultiSpeakerNoiseAugmentation",
    prob=0.5, noise_ratio=0.5, min_r_speech=-5.0, max_r_speech=5.0, min_r_noise=-5.0, max_r_noise=20.0,
    min_mix_rate=0.5, max_mix_rate=0.5, min_num_segments=1, max_num_segments=1, min_num_speakers=1,
    max_num_speakers=1,
)


def speechlike(seconds, sr=SR, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110.0 + 15.0 * seed
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t + seed) ** 2
    return (0.1 * env * x + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def write(path, samples, sr=SR, subtype=None):
    sf.write(str(path), samples, sr, subtype=subtype)
    return str(path)


def cut_of(path, cut_id=None):
    cut = Recording.from_file(path).to_cut()
    return cut.with_id(cut_id) if cut_id else cut


def declared_cut(path, cut_id, seconds=1.0, sr=SR):
    """A cut whose manifest entry says `seconds` of mono `sr` audio, without looking at the file (as a NeMo line
    with a duration does), so that broken files reach the dataset."""
    n = int(seconds * sr)
    rec = Recording(id=cut_id, sources=[AudioSource(type="file", channels=[0], source=str(path))],
                    sampling_rate=sr, num_samples=n, duration=n / sr)
    return rec.to_cut()


@pytest.fixture
def corpus(tmp_path):
    paths = [write(tmp_path / f"utt{i}.flac", speechlike(1.0 + 0.5 * i, seed=i)) for i in range(4)]
    noise = write(tmp_path / "noise.flac", (0.05 * np.random.default_rng(7).standard_normal(3 * SR)).astype(np.float32))
    return tmp_path, paths, noise


def nemo_manifest(path, entries):
    with open(path, "w") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")
    return str(path)


# ----------------------------------------------------------------------------------------------------------------


def test_batch_fields_match_the_files(corpus):
    _, paths, _ = corpus
    cuts = CutSet.from_cuts(cut_of(p) for p in paths[:3])
    batch = AudioNoiseDataset(sample_rate=SR)[cuts]
    assert isinstance(batch, AudioNoiseBatch) and len(batch) == 3
    assert batch.sample_id == [c.id for c in cuts]
    for i, p in enumerate(paths[:3]):
        ref, _ = sf.read(p, dtype="float32")
        n = int(batch.audio_len[i])
        assert n == ref.size
        assert torch.equal(batch.audio[i, :n], torch.from_numpy(ref))
        assert torch.count_nonzero(batch.audio[i, n:]) == 0
    assert batch.audio.dtype == torch.float32 and batch.audio_len.dtype == torch.int64
    assert torch.equal(batch.noisy_audio, batch.audio + batch.noise)
    assert torch.equal(batch.noisy_audio_len, batch.audio_len) and torch.equal(batch.noise_len, batch.audio_len)
    assert batch.rejected == []


def test_resampled_to_the_model_rate_and_downmixed(tmp_path):
    mono22 = write(tmp_path / "a22.wav", speechlike(1.5, sr=22050), sr=22050)
    left, right = speechlike(1.0, seed=1), speechlike(1.0, seed=2)
    stereo = write(tmp_path / "st.flac", np.stack([left, right], axis=1))
    stereo8 = write(tmp_path / "st8.wav", np.stack([left[::2], right[::2]], axis=1), sr=8000)
    cuts = CutSet.from_cuts([cut_of(mono22, "a22"), cut_of(stereo, "st"), cut_of(stereo8, "st8")])
    batch = AudioNoiseDataset(sample_rate=SR)[cuts]
    assert batch.sample_id == ["a22", "st", "st8"]
    assert batch.audio_len.tolist() == [24000, 16000, 16000]
    ref, _ = sf.read(stereo, dtype="float32")
    assert torch.allclose(batch.audio[1, :16000], torch.from_numpy(ref.mean(axis=1)), atol=1e-6)
    # The resampled tone keeps its pitch: the spectral peak of the 22.05 kHz file stays at its f0 (110 Hz).
    spec = torch.fft.rfft(batch.audio[0, :24000]).abs()
    assert abs(int(spec.argmax()) * SR / 24000 - 110.0) < 2.0


def test_nemo_line_with_wrong_assumed_rate_is_resampled(tmp_path, caplog):
    # A NeMo line with a duration but no sampling_rate is assumed to be 16 kHz; the files are 22.05 kHz. The 1 s
    # file differs by less than lhotse's 0.5 s length tolerance, which would otherwise pass it on at the wrong rate.
    long_wav = write(tmp_path / "lj.wav", speechlike(2.0, sr=22050), sr=22050)
    write(tmp_path / "short.wav", speechlike(1.0, sr=22050), sr=22050)
    manifest = nemo_manifest(tmp_path / "m.json", [{"audio_filepath": "lj.wav", "duration": 2.0},
                                                   {"audio_filepath": "short.wav", "duration": 1.0}])
    from nest_ssl.data.manifests import open_cutset

    cuts = open_cutset(manifest, what="train_ds.manifest_filepath")
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data"):
        batch = AudioNoiseDataset(sample_rate=SR)[cuts]
    assert len(batch) == 2 and batch.audio_len.tolist() == [32000, 16000]
    assert any("22050 Hz" in r.getMessage() and long_wav in r.getMessage() for r in caplog.records)
    spec = torch.fft.rfft(batch.audio[1, :16000]).abs()
    assert abs(int(spec.argmax()) * SR / 16000 - 110.0) < 2.0  # the right pitch: read at its true rate


def test_wrong_declared_rate_that_cannot_be_fixed_is_a_clear_rejection(tmp_path):
    # Declared 16 kHz / 4 s, the file is 8 kHz / 2 s, and the cut starts at 2.5 s: past the file's true end.
    path = write(tmp_path / "r8k.wav", speechlike(2.0, sr=8000), sr=8000)
    rec = Recording(id="r8k", sources=[AudioSource(type="file", channels=[0], source=path)], sampling_rate=SR,
                    num_samples=4 * SR, duration=4.0)
    cut = rec.to_cut().truncate(offset=2.5, duration=1.0, preserve_id=True)
    batch = AudioNoiseDataset(sample_rate=SR)[CutSet.from_cuts([cut])]
    (cut_id, reason), = batch.rejected
    assert "declares 16000 Hz" in reason and "8000 Hz" in reason and path in reason


def test_unusable_cuts_are_dropped_counted_and_logged(tmp_path, caplog):
    good1 = write(tmp_path / "good1.flac", speechlike(1.0, seed=1))
    good2 = write(tmp_path / "good2.flac", speechlike(1.0, seed=2))
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    nan = speechlike(1.0, seed=3)
    nan[100:110] = np.nan
    nan_path = write(tmp_path / "nan.wav", nan, subtype="FLOAT")
    inf = speechlike(1.0, seed=4)
    inf[5] = np.inf
    inf_path = write(tmp_path / "inf.wav", inf, subtype="FLOAT")
    missing = tmp_path / "missing.flac"
    cuts = CutSet.from_cuts([
        cut_of(good1, "good1"),
        declared_cut(missing, "missing"),
        declared_cut(corrupt, "corrupt"),
        declared_cut(empty, "empty"),
        cut_of(nan_path, "nan"),
        cut_of(inf_path, "inf"),
        cut_of(good2, "good2"),
    ])
    ds = AudioNoiseDataset(sample_rate=SR, batch_augmentor=MultiSpeakerNoiseAugmentation(prob=1.0))
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data"):
        batch = ds[cuts]
    assert batch.sample_id == ["good1", "good2"] and len(batch) == 2
    reasons = dict(batch.rejected)
    assert list(reasons) == ["missing", "corrupt", "empty", "nan", "inf"]
    assert "not found" in reasons["missing"] and str(missing) in reasons["missing"]
    assert "cannot decode" in reasons["corrupt"] and str(corrupt) in reasons["corrupt"]
    assert "empty" in reasons["empty"] and str(empty) in reasons["empty"]
    assert "NaN/Inf" in reasons["nan"] and nan_path in reasons["nan"]
    assert "NaN/Inf" in reasons["inf"]
    assert all("remove" in r for r in reasons.values())  # every message says what to do
    assert ds.num_rejected == 5
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for cut_id in reasons:
        assert any(f"cut {cut_id} " in m for m in logged)
    assert torch.isfinite(batch.noisy_audio).all()


def test_a_batch_of_only_bad_cuts_is_empty_not_an_error(tmp_path):
    cuts = CutSet.from_cuts([declared_cut(tmp_path / "nope.flac", "nope")])
    batch = AudioNoiseDataset(sample_rate=SR, batch_augmentor=MultiSpeakerNoiseAugmentation(prob=1.0))[cuts]
    assert len(batch) == 0 and batch.audio.shape == (0, 0) and batch.rejected[0][0] == "nope"


def test_noise_set_reads_spans_at_random_offsets_and_tiles_short_clips(tmp_path):
    long_noise = (0.1 * np.random.default_rng(1).standard_normal(2 * SR)).astype(np.float32)
    short_noise = (0.1 * np.random.default_rng(2).standard_normal(1000)).astype(np.float32)
    long_p = write(tmp_path / "long.wav", long_noise, subtype="FLOAT")
    short_p = write(tmp_path / "short.wav", short_noise, subtype="FLOAT")
    ns = NoiseSet.from_cuts([cut_of(long_p)], sample_rate=SR)
    rng = random.Random(0)
    offsets = set()
    for _ in range(5):
        clip = ns.sample(4000, rng).numpy()
        assert clip.shape == (4000,)
        hits = [o for o in range(long_noise.size - 4000 + 1) if np.array_equal(long_noise[o : o + 4000], clip)]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1
    short = NoiseSet.from_cuts([cut_of(short_p)], sample_rate=SR).sample(2500, rng).numpy()
    assert np.array_equal(short, np.tile(short_noise, 3)[:2500])


def test_unreadable_noise_is_replaced_by_another_clip(tmp_path, caplog):
    good = write(tmp_path / "n.wav", (0.1 * np.random.default_rng(3).standard_normal(SR)).astype(np.float32))
    ns = NoiseSet.from_cuts([declared_cut(tmp_path / "gone.wav", "gone"), cut_of(good)], sample_rate=SR)
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data"):
        clips = [ns.sample(1600, random.Random(s)) for s in range(6)]
    assert all(c.shape == (1600,) and torch.count_nonzero(c) > 0 for c in clips)
    assert any("gone.wav" in r.getMessage() for r in caplog.records)


def test_empty_noise_manifest_is_a_clear_error(tmp_path):
    empty = tmp_path / "noise.json"
    empty.write_text("")
    with pytest.raises(ValueError) as err:
        NoiseSet.from_manifest(str(empty), sample_rate=SR)
    assert str(empty) in str(err.value) and "noise_manifest" in str(err.value)
    with pytest.raises(EmptyNoiseManifestError, match="no usable entries"):
        NoiseSet.from_cuts([], sample_rate=SR)
    assert NoiseSet.from_manifest(None, sample_rate=SR) is None


def test_noise_set_with_batches_of_different_lengths(corpus, tmp_path):
    _, paths, noise = corpus
    nm = nemo_manifest(tmp_path / "noise.json", [{"audio_filepath": noise, "duration": 3.0}])
    # Cuts of 1.0 .. 2.5 s and one 4 s cut, longer than the 3 s noise file (tiled).
    long_utt = write(tmp_path / "long.flac", speechlike(4.0, seed=9))
    cuts = CutSet.from_cuts([cut_of(p) for p in paths] + [cut_of(long_utt)])
    aug = MultiSpeakerNoiseAugmentation(**{k: v for k, v in NEST_AUG.items() if k != "_target_"} | {"prob": 1.0,
                                        "noise_ratio": 1.0})
    batch = AudioNoiseDataset(sample_rate=SR, noise=nm, batch_augmentor=aug, seed=3)[cuts]
    assert len(batch) == 5
    for i, info in enumerate(batch.aug_info):
        assert info["mode"] == "noise" and info["scale"] > 0
        n = int(batch.audio_len[i])
        s, r = batch.audio[i, :n].double(), batch.noise[i, :n].double()
        assert 10 * math.log10(float(s @ s) / float(r @ r)) == pytest.approx(info["energy_ratio_db"], abs=1e-3)
    assert torch.equal(batch.noisy_audio_len, batch.audio_len)


def test_without_noise_set_speech_only_with_one_warning(corpus, caplog):
    _, paths, _ = corpus
    aug = MultiSpeakerNoiseAugmentation(prob=1.0, noise_ratio=0.5, min_mix_rate=0.5, max_mix_rate=0.5,
                                        max_num_segments=1, max_num_speakers=1)
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data"):
        ds = AudioNoiseDataset(sample_rate=SR, batch_augmentor=aug)
        batches = [ds[CutSet.from_cuts(cut_of(p, f"c{k}_{i}") for i, p in enumerate(paths))] for k in range(3)]
    warnings = [r for r in caplog.records if "speech-only" in r.getMessage()]
    assert len(warnings) == 1
    modes = [(b, i, info["mode"]) for b in batches for i, info in enumerate(b.aug_info)]
    assert {m for _, _, m in modes} == {"noise", "speech"}
    for b, i, mode in modes:
        assert (torch.count_nonzero(b.noise[i]) > 0) == (mode == "speech")


def test_per_batch_seed_epochs_and_validation(corpus):
    _, paths, _ = corpus
    cuts = CutSet.from_cuts(cut_of(p) for p in paths)
    aug = build_dataset({"batch_size": 2, "batch_augmentor": NEST_AUG}, sample_rate=SR, seed=5).batch_augmentor
    train = AudioNoiseDataset(sample_rate=SR, batch_augmentor=aug, seed=5, training=True)
    a = train[cuts]
    assert torch.equal(a.noisy_audio, train[cuts].noisy_audio)  # same seed, epoch and cuts
    train.set_epoch(1)
    assert a.aug_info != train[cuts].aug_info  # a new epoch draws new augmentation
    val = AudioNoiseDataset(sample_rate=SR, batch_augmentor=aug, seed=5, training=False)
    v0 = val[cuts]
    val.set_epoch(7)
    assert torch.equal(v0.noisy_audio, val[cuts].noisy_audio) and v0.seed == val[cuts].seed
    other_seed = AudioNoiseDataset(sample_rate=SR, batch_augmentor=aug, seed=6, training=False)
    assert other_seed[cuts].aug_info != v0.aug_info


def test_reverb_generated_and_from_rir_manifest(corpus, tmp_path):
    _, paths, _ = corpus
    cuts = CutSet.from_cuts(cut_of(p) for p in paths[:2])
    dry = AudioNoiseDataset(sample_rate=SR)[cuts]
    gen = AudioNoiseDataset(sample_rate=SR, reverb={"enabled": True, "prob": 1.0}, seed=1)
    wet = gen[cuts]
    assert wet.audio.shape == dry.audio.shape and not torch.allclose(wet.audio, dry.audio, atol=1e-3)
    assert torch.equal(wet.audio, gen[cuts].audio)  # seeded: the same room for the same batch
    t = np.arange(int(0.3 * SR)) / SR
    rir = (np.random.default_rng(0).standard_normal(t.size) * np.exp(-t / 0.05)).astype(np.float32)
    rir[0] = 1.0
    rir_path = write(tmp_path / "rir.wav", rir, subtype="FLOAT")
    rir_manifest = str(tmp_path / "rirs.jsonl.gz")
    RecordingSet.from_recordings([Recording.from_file(rir_path)]).to_file(rir_manifest)
    real = AudioNoiseDataset(sample_rate=SR, reverb={"enabled": True, "prob": 1.0, "rir_manifest": rir_manifest})
    wet2 = real[cuts]
    assert not torch.allclose(wet2.audio, dry.audio, atol=1e-3) and torch.isfinite(wet2.audio).all()
    assert torch.equal(AudioNoiseDataset(sample_rate=SR, reverb={"enabled": False, "prob": 1.0})[cuts].audio,
                       dry.audio)
    with pytest.raises(ValueError, match="unknown reverb key"):
        AudioNoiseDataset(sample_rate=SR, reverb={"enabled": True, "p": 0.5})


def _loader_batches(loader):
    return [(b.sample_id, b.noisy_audio, b.seed) for b in loader]


def test_build_dataloader_same_batches_whatever_num_workers(corpus, tmp_path):
    root, paths, noise = corpus
    entries = [{"audio_filepath": os.path.basename(p), "duration": sf.info(p).duration} for p in paths]
    more = [write(root / f"more{i}.flac", speechlike(1.0 + 0.25 * i, seed=20 + i)) for i in range(6)]
    entries += [{"audio_filepath": os.path.basename(p), "duration": sf.info(p).duration} for p in more]
    manifest = nemo_manifest(root / "train.json", entries)
    noise_manifest = nemo_manifest(root / "noise.json", [{"audio_filepath": noise, "duration": 3.0}])
    cfg = {"manifest_filepath": manifest, "noise_manifest": noise_manifest, "sample_rate": SR, "batch_size": 3,
           "shuffle": True, "num_workers": 0, "pin_memory": True, "batch_augmentor": NEST_AUG}
    loader0 = build_dataloader(cfg, sample_rate=SR, seed=11)
    loader2 = build_dataloader({**cfg, "num_workers": 2}, sample_rate=SR, seed=11)
    assert hasattr(loader0.sampler, "state_dict") and loader0.cut_sampler is loader0.sampler
    b0 = _loader_batches(loader0)
    b2 = _loader_batches(loader2)
    assert len(b0) == 4 and sum(len(ids) for ids, _, _ in b0) == 10
    for (ids0, x0, s0), (ids2, x2, s2) in zip(b0, b2, strict=True):
        assert ids0 == ids2 and s0 == s2 and torch.equal(x0, x2)
    # Validation: identical at every evaluation.
    val = build_dataloader({**cfg, "shuffle": False}, sample_rate=SR, seed=11, training=False)
    v1, v2 = _loader_batches(val), _loader_batches(val)
    assert all(torch.equal(x, y) for (_, x, _), (_, y, _) in zip(v1, v2, strict=True))


def test_batch_to_and_pin_memory(corpus):
    _, paths, _ = corpus
    batch = AudioNoiseDataset(sample_rate=SR)[CutSet.from_cuts(cut_of(p) for p in paths[:2])]
    moved = batch.to("cpu", non_blocking=True)
    assert moved.sample_id == batch.sample_id and torch.equal(moved.noisy_audio, batch.noisy_audio)
    if torch.cuda.is_available():
        assert batch.pin_memory().audio.is_pinned()
        assert batch.to("cuda").audio.is_cuda


def test_sample_rate_mismatch_in_config_is_a_clear_error():
    with pytest.raises(ValueError, match="sample_rate"):
        build_dataset({"batch_size": 2, "sample_rate": 8000}, sample_rate=SR)
