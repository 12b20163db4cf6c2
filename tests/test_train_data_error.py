"""A manifest truncated while a run trains on it: the next pass over it stops the run with one line naming the file
(exit 2), after the progress so far is checkpointed, so that the rerun after the fix resumes at that step."""

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from dummy_data import make_dummy_data

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NEST_SSL_DEBUG": ""}


def _newest_checkpoint_step(ckpt_dir: Path) -> int:
    steps = [torch.load(p, map_location="cpu", weights_only=False)["global_step"] for p in ckpt_dir.glob("*.ckpt")]
    return max(steps) if steps else 0


def test_manifest_truncated_during_the_run_keeps_the_progress(tmp_path):
    make_dummy_data(tmp_path, num_train=8, num_val=2)
    d = tmp_path / "data" / "dummy_ssl"
    for name in ("train", "val"):
        subprocess.run([sys.executable, "-m", "nest_ssl.cli", "manifest", "from-nemo", str(d / f"{name}_manifest.json"),
                        str(d / f"{name}.jsonl.gz")], check=True, capture_output=True, env=ENV, timeout=120)
    train = d / "train.jsonl.gz"
    exp = tmp_path / "exp"
    # Two batches an epoch; every epoch reopens the manifest. No periodic checkpoint: only the progress save writes one.
    cmd = [sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
           f"model.train_ds.manifest_filepath={train}", f"model.validation_ds.manifest_filepath={d / 'val.jsonl.gz'}",
           "model.train_ds.batch_size=4", f"exp_manager.exp_dir={exp}", "trainer.max_steps=100000",
           "trainer.max_epochs=-1", "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=1000",
           "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
           "+exp_manager.checkpoint_callback_params.every_n_epochs=1000"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = list(exp.glob("*/metrics.jsonl"))
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            metrics = list(exp.glob("*/metrics.jsonl"))
            if metrics and metrics[0].read_text().count('"step"') >= 3:
                break
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-3000:]
        data = train.read_bytes()
        train.write_bytes(data[: len(data) // 2])  # an interrupted copy over the file the run reads
        out, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("nest-ssl: error: ")]
    assert len(errors) == 1 and "train.jsonl.gz" in errors[0], err[-3000:]
    with gzip.open(train, "rt") as f:  # the file really is truncated (not a message about something else)
        try:
            f.read()
            raise AssertionError("the truncated file read to its end")
        except EOFError:
            pass
    run_dir = next(exp.glob("*"))
    saved = _newest_checkpoint_step(run_dir / "checkpoints")
    assert saved > 0, "no checkpoint of the progress"
    assert "saved the progress" in err
