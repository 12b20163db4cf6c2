"""A truncated .jsonl.gz manifest (an interrupted copy or write) is found when it is opened, not when an epoch
reaches its end: real gzip files, real lhotse, `nest-ssl train` as a subprocess."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from nest_ssl.data.manifests import ManifestError, check_gzip_complete, open_cutset

SR = 16000


@pytest.fixture
def manifests(tmp_path):
    """A NeMo manifest of 400 lines over 4 real wav files as one gzip file, as concatenated gzip members (what the
    LibriLight preparation writes), and a copy cut off in the middle."""
    rng = np.random.default_rng(0)
    for i in range(4):
        sf.write(str(tmp_path / f"u{i}.wav"), (rng.standard_normal(int(1.5 * SR)) * 0.1).astype(np.float32), SR)
    # Random text in each line so that the compressed file is long enough to cut in its middle.
    lines = [json.dumps({"audio_filepath": f"u{i % 4}.wav", "duration": 1.5, "text": rng.bytes(40).hex()}) + "\n"
             for i in range(400)]
    whole = tmp_path / "train.json.gz"
    with gzip.open(whole, "wt") as f:
        f.writelines(lines)
    members = tmp_path / "members.json.gz"
    with open(members, "wb") as f:
        for k in range(0, 400, 100):
            f.write(gzip.compress("".join(lines[k:k + 100]).encode()))
    data = whole.read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    return whole, members, cut


def test_complete_files_pass_and_a_truncated_one_is_named_when_opened(manifests):
    whole, members, cut = manifests
    assert len(list(open_cutset(str(whole)))) == 400
    assert len(list(open_cutset(str(members)))) == 400  # concatenated members are one valid stream
    with pytest.raises(ManifestError) as err:
        open_cutset(f"{whole},{cut}")  # nothing iterated yet
    msg = str(err.value)
    assert str(cut) in msg and "truncated" in msg and "re-copy" in msg
    corrupt = whole.parent / "corrupt.json.gz"
    data = bytearray(whole.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"corrupt\.json\.gz: the gzip data is corrupt"):
        check_gzip_complete(str(corrupt), "train_ds.manifest_filepath")


def test_a_file_truncated_after_it_was_opened_stops_the_pass_before_its_first_cut(manifests):
    whole, _, cut = manifests
    cuts = open_cutset(str(whole))
    assert len(list(cuts)) == 400  # epoch 1
    os.replace(cut, whole)  # the file is overwritten by a truncated copy during the run
    seen = []
    with pytest.raises(ManifestError, match="truncated"):
        for c in cuts:  # epoch 2
            seen.append(c)
    assert seen == []


def test_train_command_names_a_truncated_manifest_before_the_run_starts(tmp_path, manifests):
    whole, _, cut = manifests
    exp = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NEST_SSL_DEBUG", None)
    p = subprocess.run(
        [sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
         f"model.train_ds.manifest_filepath={cut}", f"model.validation_ds.manifest_filepath={whole}",
         f"exp_manager.exp_dir={exp}", "trainer.max_steps=1", "trainer.enable_progress_bar=false"],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("nest-ssl: error: ")]
    assert len(errors) == 1 and p.stderr.rstrip().splitlines()[-1] == errors[0], p.stderr[-2000:]
    assert f"model.train_ds.manifest_filepath: {cut}" in errors[0] and "truncated" in errors[0]
    assert not exp.exists()  # found by the preflight: no run folder, no model
