"""augment_on: device (nest_ssl.data.device_augment) against the worker-side mixing (nest_ssl.data.dataset).

Checked: for a batch seed both paths make the same decisions and the same mix (float32 rounding); over many batches
the distributions of skips, modes, segment counts, mix rates and energy ratios agree with each other and with the
configured ones (tolerances: 4 standard errors); each path is deterministic for a seed; the loader with real worker
processes gives the same batches either way. "device" is the CPU here (no GPU on the test machine).
"""

import json
import math
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording

from nest_ssl.config import ConfigError
from nest_ssl.data import DeviceAugment, batch_to_device, build_dataloader
from nest_ssl.data.augment import MultiSpeakerNoiseAugmentation
from nest_ssl.data.dataset import AudioNoiseDataset
from nest_ssl.data.noise_bank import build_noise_bank

SR = 16000
AUG = dict(prob=0.5, noise_ratio=0.5, min_r_speech=-5.0, max_r_speech=5.0, min_r_noise=-5.0, max_r_noise=20.0,
           min_mix_rate=0.2, max_mix_rate=0.6, min_num_segments=1, max_num_segments=4, min_num_speakers=1,
           max_num_speakers=3)


def _speechlike(n, rng):
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 220)
    x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) ** 2
    return (0.1 * x * env + 0.005 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("dev_aug")
    rng = np.random.default_rng(1)
    cuts = []
    for k in range(24):
        p = d / f"u{k:02d}.wav"
        sf.write(p, _speechlike(int(rng.uniform(0.3, 1.5) * SR), rng), SR, subtype="PCM_16")
        cuts.append(Recording.from_file(str(p)).to_cut())
    CutSet.from_cuts(cuts).to_file(d / "speech.jsonl.gz")
    noise = []
    for k in range(3):
        p = d / f"noise{k}.wav"
        sf.write(p, (0.2 * rng.standard_normal(2 * SR)).clip(-1, 0.99).astype(np.float32), SR, subtype="PCM_16")
        noise.append(Recording.from_file(str(p)).to_cut())
    CutSet.from_cuts(noise).to_file(d / "noise.jsonl.gz")
    build_noise_bank(str(d / "noise.jsonl.gz"), d / "bank", sample_rate=SR)
    return d, CutSet.from_cuts(cuts)


def _datasets(d, seed=0, noise="bank", **aug):
    augmentor = MultiSpeakerNoiseAugmentation(**{**AUG, **aug})
    noise = str(d / noise) if noise == "bank" else str(d / "noise.jsonl.gz")
    worker = AudioNoiseDataset(sample_rate=SR, noise=noise, batch_augmentor=augmentor, seed=seed)
    device = AudioNoiseDataset(sample_rate=SR, noise=noise, batch_augmentor=augmentor, seed=seed, augment_on="device")
    return worker, device, DeviceAugment(augmentor, device.noise)


def _no_scale(info):
    return [None if x is None else {k: v for k, v in x.items() if k != "scale"} for x in info]


@pytest.mark.parametrize("noise", ["bank", "files"])
def test_same_decisions_and_mix_as_the_workers_for_a_seed(corpus, noise):
    d, cuts = corpus
    cut_list = list(cuts)
    for seed in range(12):
        worker, device, transform = _datasets(d, seed=seed, noise=noise)
        batch_cuts = CutSet.from_cuts(random.Random(seed).sample(cut_list, 6))
        w = worker[batch_cuts]
        clean = device[batch_cuts]
        assert clean.noise is None and clean.noisy_audio is None  # the workers only decode and cut
        v = transform(clean, "cpu")
        assert v.seed == w.seed and v.sample_id == w.sample_id
        assert _no_scale(w.aug_info) == v.aug_info
        torch.testing.assert_close(v.noise, w.noise, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v.noisy_audio, v.audio + v.noise, rtol=0, atol=0)
        assert torch.equal(v.noise_len, v.audio_len) and torch.equal(v.noisy_audio_len, v.audio_len)
        # The drawn energy ratio is the measured one (over the utterance length).
        for i, info in enumerate(v.aug_info):
            if info is None:
                assert torch.count_nonzero(v.noise[i]) == 0  # skipped utterances stay clean
                continue
            n = int(v.audio_len[i])
            ps = v.audio[i, :n].double().square().mean()
            pn = v.noise[i, :n].double().square().mean()
            assert abs(10 * math.log10(ps / pn) - info["energy_ratio_db"]) < 1e-3


def _stats(infos):
    """Per utterance: skipped, mode, segment count, mix rate, energy ratio; from aug_info and the lengths."""
    skipped, modes, nseg, rates, r_noise, r_speech = 0, [], [], [], [], []
    total = 0
    for info, lens in infos:
        for x, n in zip(info, lens):
            total += 1
            if x is None:
                skipped += 1
                continue
            modes.append(x["mode"])
            nseg.append(len(x["segments"]))
            rates.append(x["mix_len"] / n)
            (r_noise if x["mode"] == "noise" else r_speech).append(x["energy_ratio_db"])
    return {"skip": skipped / total, "noise": modes.count("noise") / len(modes),
            "nseg": np.bincount(nseg, minlength=5)[1:] / len(nseg), "rate": float(np.mean(rates)),
            "r_noise": float(np.mean(r_noise)), "r_speech": float(np.mean(r_speech)), "n": total, "aug": len(modes),
            "rates_range": (min(rates), max(rates)), "r_noise_range": (min(r_noise), max(r_noise)),
            "r_speech_range": (min(r_speech), max(r_speech))}


def test_same_statistics_over_many_batches(corpus):
    """Worker-side over seeds 0..149, device-side over seeds 1000..1149: the distributions agree with each other
    and with the configuration within 4 standard errors."""
    d, cuts = corpus
    cut_list = list(cuts)
    rng = random.Random(7)
    batches = [CutSet.from_cuts(rng.sample(cut_list, 8)) for _ in range(150)]
    worker, device, transform = _datasets(d)
    w_infos, v_infos = [], []
    for k, b in enumerate(batches):
        worker.seed = k
        out = worker[b]
        w_infos.append((out.aug_info, out.audio_len.tolist()))
        device.seed = 1000 + k
        out = transform(device[b], "cpu")
        v_infos.append((out.aug_info, out.audio_len.tolist()))
    sw, sv = _stats(w_infos), _stats(v_infos)
    n = sw["n"]
    se_p = math.sqrt(0.25 / n)  # a proportion near 0.5
    for s in (sw, sv):
        assert abs(s["skip"] - (1 - AUG["prob"])) < 4 * se_p
        assert abs(s["noise"] - AUG["noise_ratio"]) < 4 * math.sqrt(0.25 / s["aug"])
        # segment counts uniform over 1..4 (a multinomial split drops an empty segment only for tiny mix lengths)
        assert np.all(np.abs(s["nseg"] - 0.25) < 4 * math.sqrt(0.25 * 0.75 / s["aug"]))
        # mix rate U(0.2, 0.6): mean 0.4, sd 0.115; int() truncation of mix_len costs < 1/4800
        assert abs(s["rate"] - 0.4) < 4 * 0.1155 / math.sqrt(s["aug"]) and 0.2 - 1e-3 < s["rates_range"][0]
        assert s["rates_range"][1] <= 0.6
        assert abs(s["r_noise"] - 7.5) < 4 * 25 / math.sqrt(12) / math.sqrt(s["aug"] / 2) * 1.2
        assert abs(s["r_speech"]) < 4 * 10 / math.sqrt(12) / math.sqrt(s["aug"] / 2) * 1.2
        assert -5 <= s["r_noise_range"][0] and s["r_noise_range"][1] <= 20
        assert -5 <= s["r_speech_range"][0] and s["r_speech_range"][1] <= 5
    # the two paths against each other (difference of two independent estimates: sqrt(2) x the standard error)
    assert abs(sw["skip"] - sv["skip"]) < 4 * math.sqrt(2) * se_p
    assert abs(sw["noise"] - sv["noise"]) < 4 * math.sqrt(2) * math.sqrt(0.25 / min(sw["aug"], sv["aug"]))
    assert np.all(np.abs(sw["nseg"] - sv["nseg"]) < 4 * math.sqrt(2) * math.sqrt(0.1875 / min(sw["aug"], sv["aug"])))
    assert abs(sw["rate"] - sv["rate"]) < 4 * math.sqrt(2) * 0.1155 / math.sqrt(min(sw["aug"], sv["aug"]))


def test_each_path_is_deterministic_for_a_seed(corpus):
    d, cuts = corpus
    b = CutSet.from_cuts(list(cuts)[:8])
    worker, device, transform = _datasets(d, seed=3, prob=1.0)
    first, again = transform(device[b], "cpu"), transform(device[b], "cpu")
    assert torch.equal(first.noisy_audio, again.noisy_audio) and first.aug_info == again.aug_info
    assert torch.equal(worker[b].noisy_audio, worker[b].noisy_audio)
    device.set_epoch(1)
    other = transform(device[b], "cpu")
    assert other.seed != first.seed and not torch.equal(other.noisy_audio, first.noisy_audio)
    assert torch.count_nonzero(first.noise) > 0


def test_loader_with_workers_same_batches_either_way(corpus):
    """build_dataloader with augment_on: device (a real worker process) + batch_to_device == augment_on: worker."""
    d, _ = corpus
    base = {"manifest_filepath": str(d / "speech.jsonl.gz"), "batch_size": 5, "shuffle": True, "num_workers": 1,
            "noise_manifest": str(d / "bank"), "batch_augmentor": {**AUG, "prob": 0.8}}
    on_worker = build_dataloader({**base}, sample_rate=SR, seed=11)
    on_device = build_dataloader({**base, "augment_on": "device"}, sample_rate=SR, seed=11)
    assert on_worker.batch_transform is None and isinstance(on_device.batch_transform, DeviceAugment)
    n = 0
    for w, v in zip(on_worker, on_device):
        assert v.noise is None
        w = batch_to_device(on_worker, w, "cpu")
        v = batch_to_device(on_device, v, "cpu")
        assert w.sample_id == v.sample_id and _no_scale(w.aug_info) == v.aug_info
        torch.testing.assert_close(v.noisy_audio, w.noisy_audio, rtol=1e-5, atol=1e-6)
        n += 1
    assert n == 5  # 24 cuts in batches of 5


def test_config_errors(corpus):
    d, _ = corpus
    base = {"manifest_filepath": str(d / "speech.jsonl.gz"), "batch_size": 4}
    with pytest.raises(ConfigError, match=r"train_ds.augment_on='gpu': must be 'worker'"):
        build_dataloader({**base, "augment_on": "gpu"}, sample_rate=SR)
    with pytest.raises(ConfigError, match="augment_on=device mixes with NEST's MultiSpeakerNoiseAugmentation"):
        build_dataloader({**base, "augment_on": "device"}, sample_rate=SR)


def test_preflight_refuses_device_mixing_without_nests_augmentor(corpus):
    from nest_ssl.train.preflight import check_dataset

    d, _ = corpus
    ds = {"manifest_filepath": str(d / "speech.jsonl.gz"), "batch_size": 4, "augment_on": "device"}
    with pytest.raises(ConfigError, match="model.train_ds.augment_on=device mixes with NEST's"):
        check_dataset("model.train_ds", ds, model_sample_rate=SR, training=True)
    check_dataset("model.train_ds", {**ds, "batch_augmentor": AUG}, model_sample_rate=SR, training=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mixing_equals_cpu_mixing(corpus):
    """On a GPU (bench/gpu_check.sh): the batch mixed on CUDA (pinned noise clips, asynchronous copies) is the batch
    mixed on the CPU."""
    d, cuts = corpus
    cut_list = list(cuts)
    _, device, transform = _datasets(d, prob=1.0)
    for seed in range(6):
        device.seed = seed
        clean = device[CutSet.from_cuts(random.Random(seed).sample(cut_list, 8))]
        cpu = transform(clean, "cpu")
        gpu = transform(clean, "cuda")
        assert gpu.noisy_audio.is_cuda and gpu.aug_info == cpu.aug_info
        torch.testing.assert_close(gpu.noise.cpu(), cpu.noise, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gpu.noisy_audio.cpu(), cpu.noisy_audio, rtol=1e-5, atol=1e-6)
