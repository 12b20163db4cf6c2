"""A run stopped by its time limit writes a checkpoint named and ranked by a validation at the step it stopped
at, not by the previous validation's value, and exits with EXIT_RESUMABLE; and the resume after it takes the newest intact checkpoint of any
kind when the newest one is truncated (real subprocess runs of the tiny config on CPU)."""

import subprocess
import sys

import pytest

import test_train_run as ttr  # the training-run helpers (module import: its tests are not collected twice)
from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.train.exit_codes import EXIT_RESUMABLE
from nest_ssl.train.loggers import read_metrics, series
from nest_ssl.train.run_status import read_status


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The documented dummy data, small: 8 train cuts (2 batches of 4 per epoch), 4 validation cuts."""
    d = tmp_path_factory.mktemp("stop")
    subprocess.run([sys.executable, str(ttr.MAKE_DATA), "--num-train", "8", "--num-val", "4", "--min-seconds", "1.5",
                    "--max-seconds", "2"], cwd=d, check=True, env=ttr.ENV, capture_output=True)
    return d


@pytest.mark.slow  # a full time-limited run (tens of seconds on 2 cores): `make test-slow`
def test_time_limit_checkpoint_is_named_by_a_validation_at_its_step(workdir):
    common = ["exp_manager.exp_dir=stop", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1",
              "trainer.check_val_every_n_epoch=null", *ttr.QUIET]
    first = ttr.run(ttr.train_cmd(*common, "trainer.max_steps=2", "trainer.val_check_interval=2"), workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = workdir / "stop" / ttr.RUN_NAME
    assert read_status(run_dir)["status"] == "finished"
    assert sorted(series(read_metrics(run_dir), "val_loss")) == [2]

    # Resumed with a time limit already spent: it stops after its first step (3), long before its next scheduled
    # validation (val_check_interval=50).
    second = ttr.run(ttr.train_cmd(*common, "trainer.max_steps=50", "trainer.val_check_interval=50",
                                   "+exp_manager.max_time_per_run=0.001"), workdir)
    assert second.returncode == EXIT_RESUMABLE, second.stderr[-3000:]  # stopped, not finished: continue me
    assert "max_time_per_run" in second.stderr
    assert read_status(run_dir) == {"status": "resumable", "stop_reason": "max_time_per_run",
                                    "exit_code": EXIT_RESUMABLE, "global_step": 3, "epoch": 1}
    val = series(read_metrics(run_dir), "val_loss")
    assert sorted(val) == [2, 3] and val[3] != val[2]  # validated at the stop step

    ckdir = run_dir / "checkpoints"
    lasts = list(ckdir.glob("*-last.ckpt"))
    assert [p.name for p in lasts] == [f"{ttr.RUN_NAME}--val_loss={val[3]:.3f}-step=3-last.ckpt"]
    ck = load_checkpoint(lasts[0])
    assert ck["global_step"] == 3 and ck["nest_ssl"]["loop"]["last_val_step"] == 3
    assert ck["nest_ssl"]["last_metrics"]["val_loss"] == val[3]
    # ranked by that value too: save_top_k=1 keeps the better of the two validations
    best = min(val, key=val.get)
    topk = sorted(p.name for p in ckdir.glob("*.ckpt") if not p.name.endswith("-last.ckpt"))
    assert topk == [f"{ttr.RUN_NAME}--val_loss={val[best]:.3f}-step={best}.ckpt"]
    callback = next(iter(ck["callbacks"].values()))
    assert callback["best_model_score"] == val[best]

    # The newest checkpoint truncated (a full disk, a killed copy): the resume reports it and takes the newest
    # intact one, whatever its kind.
    data = lasts[0].read_bytes()
    lasts[0].write_bytes(data[: len(data) // 2])
    third = ttr.run(ttr.train_cmd(*common, "trainer.max_steps=4", "trainer.val_check_interval=4"), workdir)
    assert third.returncode == 0, third.stderr[-3000:]
    assert read_status(run_dir)["stop_reason"] == "max_steps"
    skipped = [line for line in third.stderr.splitlines() if f"{lasts[0].name} was skipped" in line]
    assert skipped and "truncated" in skipped[0], third.stderr[-3000:]
    assert "resuming from the newest intact checkpoint instead" in third.stderr
    resumed = [line for line in third.stderr.splitlines() if "resumed from" in line]
    assert resumed and ("step=3.ckpt" in resumed[0] or "step=2-last.ckpt.prev" in resumed[0]), resumed
