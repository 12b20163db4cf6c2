"""The noise bank (nest_ssl.data.noise_bank, `nest-ssl noise bank`): the samples and draws of decoding the files.

Tolerance: the bank stores int16. Audio decoded from 16-bit files at the model's rate comes back exactly (the bank
stores k / 32768 as k); a float source peaking above 1.0 comes back within half a quantisation step (0.5 / scale).
"""

import json
import os
import pickle
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording

from nest_ssl.data.dataset import AudioNoiseDataset
from nest_ssl.data.noise import NoiseSet
from nest_ssl.data.noise_bank import (DATA_NAME, INDEX_NAME, NoiseBank, NoiseBankError, build_noise_bank,
                                      open_noise)

SR = 16000
REAL = "/work/shared/fixtures/real_audio"


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "nest_ssl.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    """16-bit noise files at 16 kHz (one of them real speech-like audio when the fixture is there), windowed cuts
    with start > 0, and a stereo file (downmixed)."""
    d = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(3)
    paths = []
    for k, seconds in enumerate([3.0, 0.4, 2.2]):
        x = (0.2 * rng.standard_normal(int(seconds * SR))).clip(-1, 0.999).astype(np.float32)
        x[: SR // 10] = 0.0  # a silent start: offsets that land in it are redrawn
        p = d / f"n{k}.{'flac' if k == 1 else 'wav'}"
        sf.write(p, x, SR, subtype="PCM_16")
        paths.append(p)
    stereo = (0.3 * rng.standard_normal((SR, 2))).clip(-1, 0.999).astype(np.float32)
    sf.write(d / "st.wav", stereo, SR, subtype="PCM_16")
    paths.append(d / "st.wav")
    if os.path.exists(f"{REAL}/2412-153948-0000.flac"):
        paths.append(f"{REAL}/2412-153948-0000.flac")
    cuts = []
    for p in paths:
        rec = Recording.from_file(str(p))
        cut = rec.to_cut()
        if rec.duration > 2.0:  # windows, as `nest-ssl prepare noise` writes them: cuts that start inside the file
            half = rec.duration / 2
            cuts += [cut.truncate(offset=0.0, duration=half, preserve_id=False),
                     cut.truncate(offset=half, duration=rec.duration - half, preserve_id=False)]
        else:
            cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(d / "noise_cuts.jsonl.gz")
    return d


@pytest.fixture(scope="module")
def bank(noise_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "bank"
    stats = build_noise_bank(str(noise_dir / "noise_cuts.jsonl.gz"), out, sample_rate=SR)
    assert stats.rejected == 0 and stats.entries == len(CutSet.from_file(noise_dir / "noise_cuts.jsonl.gz"))
    return out


def test_every_entry_is_the_decoded_cut_exactly(noise_dir, bank):
    b = NoiseBank(bank, sample_rate=SR)
    cuts = list(CutSet.from_file(noise_dir / "noise_cuts.jsonl.gz"))
    assert b.ids == [c.id for c in cuts]
    for k, cut in enumerate(cuts):
        audio = cut.load_audio()
        audio = audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
        got = b.entry(k)
        assert got.dtype == np.float32 and got.shape == audio.shape
        if cut.recording.num_channels == 1:  # 16-bit source: exact
            np.testing.assert_array_equal(got, audio.astype(np.float32))
        else:  # a downmix of two 16-bit channels has half steps: within half a quantisation step
            assert np.abs(got - audio).max() <= 0.5 / 32768 + 1e-9


@pytest.mark.parametrize("num_samples", [800, 7000, 40000])
def test_draws_equal_the_noise_sets_decoded_draws(noise_dir, bank, num_samples):
    """Same random.Random state -> the same entry, offset, silent-span retries and tiling as decoding the files."""
    files = NoiseSet.from_manifest(str(noise_dir / "noise_cuts.jsonl.gz"), sample_rate=SR)
    b = NoiseBank(bank, sample_rate=SR)
    for seed in range(25):
        r1, r2 = random.Random(seed), random.Random(seed)
        want = files.sample(num_samples, r1)
        got = b.sample(num_samples, r2)
        assert got.shape == want.shape == (num_samples,)
        assert torch.abs(got - want).max() <= 0.5 / 32768 + 1e-9, seed  # exact but for stereo downmix half steps
        assert r1.random() == r2.random()  # both consumed the same draws


def test_a_float_source_above_full_scale_is_scaled_not_clipped(tmp_path):
    x = (1.5 * np.sin(np.arange(SR) / 7.0)).astype(np.float32)
    sf.write(tmp_path / "loud.wav", x, SR, subtype="FLOAT")
    CutSet.from_cuts([Recording.from_file(str(tmp_path / "loud.wav")).to_cut()]).to_file(tmp_path / "c.jsonl.gz")
    build_noise_bank(str(tmp_path / "c.jsonl.gz"), tmp_path / "b", sample_rate=SR)
    b = NoiseBank(tmp_path / "b", sample_rate=SR)
    scale = float(b.scales[0])
    assert scale < 32768
    assert np.abs(b.entry(0) - x).max() <= 0.5 / scale + 1e-7


def test_unreadable_entries_are_listed_and_skipped(noise_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    good = Recording.from_file(str(noise_dir / "n0.wav")).to_cut()
    broken = good.with_id("broken")
    broken.recording = Recording(id="broken", sources=[type(good.recording.sources[0])(type="file", channels=[0],
                                                                                       source=str(bad))],
                                 sampling_rate=SR, num_samples=SR, duration=1.0)
    CutSet.from_cuts([broken, good]).to_file(tmp_path / "c.jsonl.gz")
    stats = build_noise_bank(str(tmp_path / "c.jsonl.gz"), tmp_path / "b", sample_rate=SR)
    assert (stats.entries, stats.rejected) == (1, 1)
    rejects = (tmp_path / "b" / "rejects_noise_bank.tsv").read_text().splitlines()
    assert len(rejects) == 1 and rejects[0].startswith("broken\t") and "bad.wav" in rejects[0]


def test_an_interrupted_build_resumes_to_the_same_bank(noise_dir, bank, tmp_path):
    """The state a kill leaves: samples written past the last committed entry and half a progress line."""
    index = json.loads((bank / INDEX_NAME).read_text())
    out = tmp_path / "resumed"
    out.mkdir()
    keep = 3
    committed = index["offsets"][keep - 1] + index["lengths"][keep - 1]
    pcm = (bank / DATA_NAME).read_bytes()
    (out / (DATA_NAME + ".partial")).write_bytes(pcm[: 2 * committed] + b"\x01\x02" * 500)
    lines = [json.dumps({"id": index["ids"][k], "offset": index["offsets"][k], "length": index["lengths"][k],
                         "start": index["starts"][k], "duration": index["durations"][k], "scale": index["scales"][k]})
             for k in range(keep)]
    (out / "noise_bank.partial.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:17])
    stats = build_noise_bank(str(noise_dir / "noise_cuts.jsonl.gz"), out, sample_rate=SR)
    assert stats.resumed_from == keep
    assert (out / DATA_NAME).read_bytes() == pcm
    assert json.loads((out / INDEX_NAME).read_text()) == index
    assert not (out / "noise_bank.partial.jsonl").exists()


def test_pickles_without_the_mapping_and_feeds_the_dataset_like_the_files(noise_dir, bank):
    b = open_noise(str(bank), sample_rate=SR)
    assert isinstance(b, NoiseBank)
    b.sample(1000, random.Random(0))  # maps the file
    assert b._pcm is not None
    clone = pickle.loads(pickle.dumps(b))
    assert clone._pcm is None and len(pickle.dumps(b)) < 100_000
    # The dataset with the bank builds the batches it builds from the files (all 16-bit, mono, 16 kHz sources).
    cuts = CutSet.from_file(noise_dir / "noise_cuts.jsonl.gz")
    mono = [c for c in cuts if c.recording.num_channels == 1]
    from nest_ssl.data.augment import MultiSpeakerNoiseAugmentation

    aug = MultiSpeakerNoiseAugmentation(prob=1.0, noise_ratio=1.0, min_mix_rate=0.5, max_mix_rate=0.5)
    mono_manifest = noise_dir / "mono.jsonl.gz"
    CutSet.from_cuts(mono).to_file(mono_manifest)
    mono_bank = noise_dir / "mono_bank"
    if not mono_bank.exists():
        build_noise_bank(str(mono_manifest), mono_bank, sample_rate=SR)
    speech = CutSet.from_cuts(mono[:3])
    a = AudioNoiseDataset(sample_rate=SR, noise=str(mono_manifest), batch_augmentor=aug, seed=5)[speech]
    c = AudioNoiseDataset(sample_rate=SR, noise=str(mono_bank), batch_augmentor=aug, seed=5)[speech]
    assert a.aug_info == c.aug_info
    torch.testing.assert_close(c.noisy_audio, a.noisy_audio, rtol=0, atol=1e-6)


def test_cli_builds_a_bank_and_refuses_bad_input(noise_dir, tmp_path):
    p = _cli("noise", "bank", noise_dir / "noise_cuts.jsonl.gz", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    assert "entries" in p.stdout and "MB int16" in p.stdout
    assert NoiseBank(tmp_path / "b", sample_rate=SR).ids
    again = _cli("noise", "bank", noise_dir / "noise_cuts.jsonl.gz", tmp_path / "b")
    assert again.returncode == 2 and "already holds a noise bank" in again.stderr and "Traceback" not in again.stderr
    missing = _cli("noise", "bank", tmp_path / "nope.jsonl.gz", tmp_path / "c")
    assert missing.returncode == 2 and "nope.jsonl.gz" in missing.stderr and "Traceback" not in missing.stderr
    with pytest.raises(NoiseBankError, match="rebuild it with `nest-ssl noise bank ... --sample-rate 8000`"):
        NoiseBank(tmp_path / "b", sample_rate=8000)
    shutil.copy(tmp_path / "b" / INDEX_NAME, tmp_path / INDEX_NAME)
    with pytest.raises(NoiseBankError, match="bytes, its index expects"):
        NoiseBank(tmp_path, sample_rate=SR)  # an index without its data


def test_preflight_accepts_a_bank_and_refuses_one_at_another_rate(noise_dir, bank):
    from nest_ssl.train.preflight import check_dataset

    ds = {"manifest_filepath": str(noise_dir / "noise_cuts.jsonl.gz"), "batch_size": 2, "noise_manifest": str(bank)}
    assert check_dataset("model.train_ds", ds, model_sample_rate=SR, training=True).noise_manifest == str(bank)
    with pytest.raises(NoiseBankError, match=r"model.train_ds.noise_manifest: the noise bank .* is at 16000 Hz"):
        check_dataset("model.train_ds", ds, model_sample_rate=8000, training=True)
