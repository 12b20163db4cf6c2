"""egs/librilight as a real subprocess: stage 0 on a missing corpus, stages 0-1 on a corpus with broken files, and
stages 0-6 on a small corpus with checkpoints and validation by optimizer step."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "egs", "librilight", "run.sh")
ENV = dict(os.environ, PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""))


def _lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_stage_0_says_where_to_download_and_downloads_nothing(tmp_path):
    (tmp_path / "musan").mkdir()
    before = sorted(p for p in tmp_path.rglob("*"))
    r = subprocess.run([RECIPE, "--corpus-dir", tmp_path / "librilight", "--musan-dir", tmp_path / "musan",
                        "--subsets", "small,large", "--data-dir", tmp_path / "data", "--exp-dir", tmp_path / "exp"],
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 1
    err = r.stderr
    assert "https://dl.fbaipublicfiles.com/librilight/data/small.tar" in err and "35 GB" in err
    assert "https://dl.fbaipublicfiles.com/librilight/data/large.tar" in err and "3.05 TB" in err
    assert "https://www.openslr.org/resources/17/musan.tar.gz" in err and "11 GB" in err
    assert "nothing was downloaded" in err and "Stage 1" not in err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no download, no data folder, nothing


def _write_flac(path, seconds, sr=16000):
    x = (0.1 * np.sin(np.arange(int(seconds * sr)) / 7.0)).astype(np.float32)
    sf.write(path, x, sr, subtype="PCM_16", format="FLAC")


def _json(path, vad, speaker="77", raw=None):
    with open(path, "w") as f:
        if raw is not None:
            f.write(raw)
        else:
            json.dump({"speaker": speaker, "snr": 12.5, "book_meta": {"id": "1", "title": "T"},
                       "voice_activity": vad}, f)


def test_broken_files_are_listed_with_their_reason_and_never_stop_the_run(tmp_path):
    """Stages 0-1 of egs/librilight with two worker processes (one file per chunk: 12 chunks, more than the 4 that
    start a pool): every file ends up in the manifests or in the rejects file, with its reason; the run goes on."""
    root = tmp_path / "corpus"
    book = root / "small" / "77" / "a_book_librivox_64kb_mp3"
    book.mkdir(parents=True)
    cases = {}

    def case(name, expect_kept, reason_part):
        cases[f"small/77/a_book_librivox_64kb_mp3/{name}"] = (expect_kept, reason_part)
        return book / name

    p = case("good", True, None)
    _write_flac(f"{p}.flac", 3.0)
    _json(f"{p}.json", [[0.2, 1.0], [1.5, 2.8]])
    p = case("garbage_audio", False, "unreadable audio")
    (book / "garbage_audio.flac").write_bytes(b"this is not a flac file at all" * 100)
    _json(f"{p}.json", [[0.0, 1.0]])
    p = case("truncated", False, "unreadable audio")
    _write_flac(f"{p}.flac", 20.0)
    data = (book / "truncated.flac").read_bytes()
    (book / "truncated.flac").write_bytes(data[: len(data) // 2])  # a download or extraction cut short
    _json(f"{p}.json", [[0.0, 1.0]])
    p = case("unknown_length", False, "unreadable audio")
    _write_flac(f"{p}.flac", 1.0)
    head = bytearray((book / "unknown_length.flac").read_bytes())
    head[21] &= 0xF0  # STREAMINFO total samples = 0, "unknown" in FLAC: libsndfile cannot tell the length
    head[22:26] = b"\0\0\0\0"
    (book / "unknown_length.flac").write_bytes(bytes(head))
    _json(f"{p}.json", [[0.0, 1.0]])
    p = case("empty_wav", False, "empty audio")
    sf.write(f"{p}.flac", np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16", format="WAV")
    _json(f"{p}.json", [[0.0, 1.0]])
    p = case("zero_bytes", False, "empty audio")
    (book / "zero_bytes.flac").write_bytes(b"")
    _json(f"{p}.json", [[0.0, 1.0]])
    p = case("no_json", False, "missing JSON")
    _write_flac(f"{p}.flac", 2.0)
    p = case("bad_json", False, "invalid JSON")
    _write_flac(f"{p}.flac", 2.0)
    _json(f"{p}.json", None, raw='{"speaker": "77", "voice_activity": [[0.0, 1.0]')
    p = case("json_without_vad", False, "invalid JSON")
    _write_flac(f"{p}.flac", 2.0)
    _json(f"{p}.json", None, raw='{"speaker": "77", "snr": 3.0}')
    p = case("vad_past_end", True, "VAD beyond the end")
    _write_flac(f"{p}.flac", 2.0)
    _json(f"{p}.json", [[0.1, 1.0], [1.5, 2.6], [3.0, 4.0]])
    p = case("all_vad_past_end", False, "no usable voice activity")
    _write_flac(f"{p}.flac", 2.0)
    _json(f"{p}.json", [[5.0, 6.0]])
    p = case("no_speech", False, "no usable voice activity")
    _write_flac(f"{p}.flac", 2.0)
    _json(f"{p}.json", [])

    r = subprocess.run([RECIPE, "--corpus-dir", root, "--musan-dir", "", "--subsets", "small", "--data-dir",
                        tmp_path / "data", "--exp-dir", tmp_path / "exp", "--stop-stage", "1", "--nj", "2",
                        "--prepare-chunk-size", "1"], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "data" / "manifests"
    assert "10 of 12 files rejected" in r.stdout and "1 kept with notes" in r.stdout

    kept = {x["id"] for x in _lines(out / "librilight_recordings_small.jsonl.gz")}
    with open(out / "rejects_small.tsv", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f]
    rejected = {row["recording_id"] for row in rows if row["status"] == "rejected"}
    assert kept | rejected == set(cases) and not kept & rejected
    for rid, (expect_kept, reason_part) in cases.items():
        assert (rid in kept) == expect_kept, rid
        reasons = [row["reason"] for row in rows if row["recording_id"] == rid]
        if reason_part is None:
            assert reasons == []
        else:
            assert reasons and all(reason_part in x or "dropped" in x for x in reasons), (rid, reasons)
            assert any(reason_part in x for x in reasons), (rid, reasons)
    # The file with VAD past its end is kept with the interval clipped to the audio, the one after it dropped.
    sups = [s for s in _lines(out / "librilight_supervisions_small.jsonl.gz") if s["recording_id"].endswith("past_end")]
    assert [(s["id"].rsplit("_", 1)[1], s["start"], s["duration"]) for s in sups] == [("0", 0.1, 0.9),
                                                                                       ("1", 1.5, 0.5)]
    notes = [row for row in rows if row["recording_id"].endswith("/vad_past_end")]
    assert [row["status"] for row in notes] == ["kept", "kept"]
    assert "clipped" in notes[0]["reason"] and "dropped" in notes[1]["reason"]


def test_download_scripts_explain_themselves_and_refuse_bad_arguments(tmp_path):
    """local/download_librilight.sh and local/download_musan.sh (called by stage 0 with --download true; the
    downloads themselves need the network): --help, and argument mistakes with exit 2 before anything is written."""
    local = os.path.join(REPO, "local")
    for script, usage in (("download_librilight.sh", "CORPUS_DIR SUBSET..."), ("download_musan.sh", "TARGET_DIR")):
        r = subprocess.run([os.path.join(local, script), "--help"], capture_output=True, text=True, timeout=60, env=ENV)
        assert r.returncode == 0 and usage in r.stderr, r.stderr
        r = subprocess.run([os.path.join(local, script)], capture_output=True, text=True, timeout=60, env=ENV)
        assert r.returncode == 2 and "need" in r.stderr and usage in r.stderr, r.stderr
    r = subprocess.run([os.path.join(local, "download_librilight.sh"), tmp_path / "corpus", "small", "tiny"],
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and "unknown subset 'tiny' (choose from small, medium, large)" in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_training_checkpoints_by_steps_and_validates_across_epochs(tmp_path):
    """Stages 0-6 on a small LibriLight tree whose epochs are shorter than the config's val_check_interval, with the
    README's options (--ngpus 0 --config-name nest_tiny for a CPU, --save-every-steps, --val-every-steps): `last` is
    written at step 2, before any validation, and validation runs at global step 3, in a later epoch. Without the
    two options the config itself (val_check_interval counted per epoch, checkpoints only after validation) is
    refused up front, naming the keys."""
    root = tmp_path / "corpus"
    for spk in ("101", "102", "103"):
        book = root / "small" / spk / "a_book_librivox_64kb_mp3"
        book.mkdir(parents=True)
        for i in range(2):
            _write_flac(book / f"f{i}.flac", 4.0)
            _json(book / f"f{i}.json", [[0.1, 3.9]], speaker=spk)
    data, exp = tmp_path / "data", tmp_path / "exp"
    r = subprocess.run([RECIPE, "--corpus-dir", root, "--musan-dir", "", "--subsets", "small", "--data-dir", data,
                        "--exp-dir", exp, "--stop-stage", "6", "--nj", "1", "--val-speakers", "1", "--num-buckets", "2",
                        "--ngpus", "0", "--config-name", "nest_tiny", "--save-every-steps", "2", "--val-every-steps", "3",
                        "--train-opts", "trainer.max_steps=3 trainer.enable_progress_bar=false"],
                       capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    run_dir = exp / "nest_tiny"
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    val = [(row["step"], row["epoch"]) for row in rows if "val_loss" in row]
    assert [step for step, _ in val] == [3] and val[0][1] >= 1  # by global step, across epochs
    # The previous last checkpoint (kept as .prev beside the newest) is step 2's: written before any validation.
    ckdir = run_dir / "checkpoints"
    prev = sorted(ckdir.glob("*-last.ckpt.prev"))
    assert [p.name for p in prev] == ["SSL-NEST-FastConformer-Tiny--val_loss=0.000-step=2-last.ckpt.prev"], \
        sorted(p.name for p in ckdir.iterdir())
    import torch

    ck = torch.load(prev[0], map_location="cpu", weights_only=False)
    assert ck["global_step"] == 2 and ck["nest_ssl"]["loop"]["last_val_step"] == -1
    assert ck["epoch"] >= 1  # an epoch is shorter than 2 batches here: steps count across epochs
    # The config's own schedule on the same data: refused before a process starts, with the keys to set.
    p = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
                        f"model.train_ds.manifest_filepath={data / 'cuts' / 'train.jsonl.gz'}",
                        f"model.validation_ds.manifest_filepath={data / 'cuts' / 'val.jsonl.gz'}",
                        f"exp_manager.exp_dir={tmp_path / 'never'}", "trainer.max_steps=1000"],
                       capture_output=True, text=True, timeout=240, env=ENV, cwd=tmp_path)
    errors = [line for line in p.stderr.splitlines() if line.startswith("nest-ssl: error: ")]
    assert p.returncode == 2 and len(errors) == 1, p.stderr[-3000:]
    for needle in ("no checkpoint before it ends", "trainer.val_check_interval=20",
                   "trainer.check_val_every_n_epoch=null", "exp_manager.checkpoint_callback_params.every_n_train_steps"):
        assert needle in errors[0], errors[0]
    assert not (tmp_path / "never").exists()
