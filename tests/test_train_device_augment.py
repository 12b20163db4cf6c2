"""`nest-ssl train` with model.train_ds.augment_on=device and a noise bank trains on the batches that worker-side
mixing gives: the same logged losses (real subprocesses, the tiny config on the CPU; the "device" is the CPU)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from test_train_run import ENV, MAKE_DATA, QUIET, RUN_NAME, train_cmd

from nest_ssl.train.loggers import read_metrics, series


@pytest.mark.slow
def test_device_mixing_trains_like_worker_mixing(tmp_path):
    subprocess.run([sys.executable, str(MAKE_DATA), "--num-train", "16", "--num-val", "4", "--min-seconds", "1.5",
                    "--max-seconds", "3"], cwd=tmp_path, check=True, env=ENV, capture_output=True)
    rng = np.random.default_rng(0)
    lines = []
    for k in range(3):
        path = tmp_path / f"noise{k}.wav"
        sf.write(path, (0.2 * rng.standard_normal(3 * 16000)).clip(-1, 0.99).astype(np.float32), 16000,
                 subtype="PCM_16")
        lines.append(json.dumps({"audio_filepath": str(path), "duration": 3.0}))
    (tmp_path / "noise.json").write_text("\n".join(lines) + "\n")
    p = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "noise", "bank", "noise.json", "bank"], cwd=tmp_path,
                       env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

    losses = {}
    for where in ("worker", "device"):
        cmd = train_cmd(*QUIET, "trainer.max_steps=4", "trainer.log_every_n_steps=1", "trainer.val_check_interval=4",
                        "trainer.num_sanity_val_steps=0", f"exp_manager.exp_dir=exp_{where}",
                        "model.train_ds.noise_manifest=bank", "model.validation_ds.noise_manifest=bank",
                        "model.train_ds.batch_augmentor.prob=1.0", "model.validation_ds.batch_augmentor.prob=1.0",
                        f"++model.train_ds.augment_on={where}", f"++model.validation_ds.augment_on={where}")
        p = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        rows = read_metrics(tmp_path / f"exp_{where}" / RUN_NAME)
        losses[where] = (series(rows, "train_loss"), series(rows, "val_loss"))
    (w_train, w_val), (d_train, d_val) = losses["worker"], losses["device"]
    assert sorted(w_train) == sorted(d_train) == [1, 2, 3, 4] and sorted(w_val) == sorted(d_val) == [4]
    for step in w_train:
        assert d_train[step] == pytest.approx(w_train[step], rel=1e-4, abs=1e-4), (step, w_train, d_train)
    assert d_val[4] == pytest.approx(w_val[4], rel=1e-4, abs=1e-4)
