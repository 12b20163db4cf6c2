"""A resumed iterable (Shar) stream gives exactly the batches of the uninterrupted one (cut ids, audio, stream tags),
and its cost is bounded by one window of shards: the shards of earlier windows are not opened at all (their files
are overwritten with garbage before the resume and it still works), deep into a second pass too."""

from itertools import islice

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording

from nest_ssl.config import ConfigError
from nest_ssl.data import build_dataloader
from nest_ssl.data.manifests import ManifestError
from nest_ssl.prepare.shar import export_shar

SR = 8000


@pytest.fixture(scope="module")
def shar_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shar_resume_data")
    rng = np.random.default_rng(0)
    cuts = []
    for i in range(48):
        path = str(d / f"u{i}.wav")
        sf.write(path, (rng.standard_normal(int((0.5 + 0.02 * i) * SR)) * 0.1).astype(np.float32), SR)
        cuts.append(Recording.from_file(path, recording_id=f"u{i:02d}").to_cut())
    CutSet.from_cuts(cuts).to_file(d / "cuts.jsonl.gz")
    export_shar(d / "cuts.jsonl.gz", d / "shar", shard_size=4, seed=0)  # 12 shards of 4 cuts
    return d / "shar"


def _cfg(shar, bucketing):
    cfg = {"manifest_filepath": str(shar), "sample_rate": SR, "batch_size": 3, "num_workers": 0,
           "stream_window_shards": 2, "shuffle_buffer_size": 5}
    if bucketing:
        cfg.update(use_bucketing=True, bucket_duration_bins=[0.8, 1.2], batch_size=None, batch_duration=3.0)
    return cfg


@pytest.mark.parametrize("bucketing", [False, True])
def test_resume_skips_earlier_windows_unread_and_continues_exactly(tmp_path, shar_dir, bucketing, caplog):
    import shutil

    shar = tmp_path / "shar"
    shutil.copytree(shar_dir, shar)
    cfg = _cfg(shar, bucketing)
    ref = list(islice(iter(build_dataloader(cfg, sample_rate=SR, seed=1)), 40))  # 48 cuts a pass: into pass 2
    windows = [b.stream["window"] for b in ref]
    assert windows == sorted(windows) and len(set(windows)) > 8
    # Checkpoints: mid-window in pass 0, at a window's last batch, and mid-window in pass 1.
    last_of_window = next(i for i in range(1, 40) if windows[i] != windows[i - 1] and windows[i - 1] >= 2) - 1
    for n in (7, last_of_window + 1, 33):
        at = ref[n - 1].stream
        loader = build_dataloader(cfg, sample_rate=SR, seed=1)
        source = loader.cut_sampler.source
        source.start()
        earlier = {p.path: p for k in range(at["window"]) for p in source.window_at(k).parts}
        # (in a later pass the same shards come back: keep those of this window and the next one, which the first
        # batch after the resume may come from)
        kept = {q.path for k in (at["window"], at["window"] + 1) for q in source.window_at(k).parts}
        earlier = [p for path, p in earlier.items() if path not in kept]
        assert earlier
        for part in earlier:  # shards of earlier windows only: any read of them would fail
            for path in [part.path] + [v for _, v in part.fields]:
                with open(path, "wb") as f:
                    f.write(b"garbage, not a shard")
        loader.dataset.resume = {"offset": 0, "skip": {0: at["batches"]}, "at": {0: [at["window"], at["in_window"]]}}
        caplog.clear()
        with caplog.at_level("INFO", logger="nest_ssl.data"):
            it = iter(loader)
            got = [next(it)]  # the resume: jump, replay, first batch
        # The rest of the stream comes back to those shards in the next pass: give them back.
        shutil.rmtree(shar)
        shutil.copytree(shar_dir, shar)
        got += list(islice(it, len(ref) - n - 1))
        assert f"resumed in window {at['window']} of its stream" in caplog.text and "no audio read" in caplog.text
        assert len(got) == len(ref) - n
        for a, b in zip(ref[n:], got):
            assert a.sample_id == b.sample_id and a.stream == b.stream
            assert torch.equal(a.audio, b.audio) and torch.equal(a.noisy_audio, b.noisy_audio)


def test_stream_window_shards_is_checked(shar_dir):
    with pytest.raises(ConfigError, match="stream_window_shards"):
        build_dataloader(dict(_cfg(shar_dir, False), stream_window_shards=-1), sample_rate=SR)
