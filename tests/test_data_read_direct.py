"""Plain mono cuts are read with soundfile directly (nest_ssl.data.dataset._read_direct): the samples lhotse's reader
gives, exactly; everything else goes through lhotse."""

import numpy as np
import soundfile as sf
from lhotse import CutSet, Recording

from nest_ssl.data.dataset import _read_direct, load_cut_audio
from nest_ssl.prepare.shar import export_shar

SR = 16000


def _lhotse(cut):
    a = cut.load_audio()
    return a.mean(axis=0) if a.shape[0] > 1 else a[0]


def test_file_and_shar_cuts_read_directly_equal_lhotse(tmp_path):
    rng = np.random.default_rng(0)
    cuts = []
    for k, (fmt, sub) in enumerate([("wav", "PCM_16"), ("flac", "PCM_16"), ("wav", "FLOAT"), ("flac", "PCM_24")]):
        p = tmp_path / f"a{k}.{fmt}"
        sf.write(p, (0.3 * rng.standard_normal(SR + 123 * k)).clip(-1, 0.99).astype(np.float32), SR, subtype=sub)
        whole = Recording.from_file(str(p)).to_cut()
        cuts += [whole, whole.truncate(offset=0.3217, duration=0.41, preserve_id=False)]  # a span inside the file
    shar = tmp_path / "shar"
    CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl.gz")
    export_shar(str(tmp_path / "cuts.jsonl.gz"), shar, shard_size=3, shuffle=False, audio_format="flac")
    shar_cuts = list(CutSet.from_shar(in_dir=str(shar)))
    assert shar_cuts[0].recording.sources[0].type == "memory"
    for cut in cuts + shar_cuts:
        direct = _read_direct(cut, SR)
        assert direct is not None, cut
        np.testing.assert_array_equal(direct, _lhotse(cut).astype(np.float32))
        np.testing.assert_array_equal(load_cut_audio(cut, SR), direct)


def test_other_cuts_take_lhotses_reader(tmp_path):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "st.wav", (0.3 * rng.standard_normal((SR, 2))).astype(np.float32), SR, subtype="PCM_16")
    sf.write(tmp_path / "lo.wav", (0.3 * rng.standard_normal(8000)).astype(np.float32), 8000, subtype="PCM_16")
    sf.write(tmp_path / "short.wav", (0.3 * rng.standard_normal(SR)).astype(np.float32), SR, subtype="PCM_16")
    stereo = Recording.from_file(str(tmp_path / "st.wav")).to_cut()  # a MultiCut: downmixed by lhotse's reader
    low = Recording.from_file(str(tmp_path / "lo.wav")).to_cut()  # 8 kHz: resampled by lhotse
    short = Recording.from_file(str(tmp_path / "short.wav"))
    longer = Recording(id="x", sources=short.sources, sampling_rate=SR, num_samples=SR + 100,
                       duration=(SR + 100) / SR).to_cut()  # declares more samples than the file has
    for cut in (stereo, low, longer):
        assert _read_direct(cut, SR) is None
    np.testing.assert_allclose(load_cut_audio(stereo, SR), _lhotse(stereo), atol=1e-7)
    assert load_cut_audio(low, SR).shape == (SR,)
    assert load_cut_audio(longer, SR).shape == (SR + 100,)  # lhotse pads a mismatch under its tolerance


def test_batch_rows_skip_rejected_cuts_and_stay_zero_padded(tmp_path):
    from nest_ssl.data.dataset import AudioNoiseDataset

    rng = np.random.default_rng(2)
    cuts = []
    for k, n in enumerate([SR // 2, SR, 3 * SR // 4]):
        p = tmp_path / f"c{k}.flac"
        sf.write(p, (0.3 * rng.standard_normal(n)).clip(-1, 0.99).astype(np.float32), SR, subtype="PCM_16")
        cuts.append(Recording.from_file(str(p)).to_cut())
    (tmp_path / "c1.flac").write_bytes(b"fLaC but broken")  # the longest one cannot be read
    lo = tmp_path / "lo.wav"  # an 8 kHz file: resampled by lhotse's reader, not read directly
    sf.write(lo, (0.3 * rng.standard_normal(4000)).astype(np.float32), 8000, subtype="PCM_16")
    cuts.append(Recording.from_file(str(lo)).to_cut())
    batch = AudioNoiseDataset(sample_rate=SR)[CutSet.from_cuts(cuts)]
    assert batch.sample_id == [cuts[0].id, cuts[2].id, cuts[3].id]
    assert [r[0] for r in batch.rejected] == [cuts[1].id]
    assert batch.audio.shape == (3, 3 * SR // 4) and batch.audio.is_contiguous()
    assert batch.audio_len.tolist() == [SR // 2, 3 * SR // 4, SR // 2]
    for row, cut in zip(range(2), (cuts[0], cuts[2])):
        n = int(batch.audio_len[row])
        np.testing.assert_array_equal(batch.audio[row, :n].numpy(), _lhotse(cut))
        assert not batch.audio[row, n:].any()
    np.testing.assert_allclose(batch.audio[2, : SR // 2].numpy(), load_cut_audio(cuts[3], SR))
