"""The recipes' training stage after a resumable stop (egs/librilight/run.sh stages 5-6 on a tiny tree, real
subprocesses: torchrun, the tiny config on CPU): a run stopped by exp_manager.max_time_per_run makes run.sh exit
with EXIT_RESUMABLE and leaves stage 6 to be run again; the same command then continues the run to its end, marks
the stage done, and the next one skips it."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nest_ssl.train.exit_codes import EXIT_RESUMABLE
from dummy_data import BUCKET_BINS_LINE, make_prepared_data

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "egs" / "librilight" / "run.sh"


@pytest.fixture()
def data_dir(tmp_path):
    """What stages 0-3 leave for stage 5: data/cuts/{train,val}.jsonl.gz."""
    make_prepared_data(tmp_path, num_train=16, num_val=4, bucket_bins=False)
    return tmp_path


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": str(REPO / ".venv" / "bin") + os.pathsep + os.environ.get("PATH", ""), **extra}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _run(d: Path) -> subprocess.CompletedProcess:
    # max_time_per_run is spent before the first step ends: every run stops after one step, until max_steps.
    opts = ("trainer.max_steps=2 trainer.val_check_interval=1000 trainer.check_val_every_n_epoch=null "
            "++exp_manager.checkpoint_callback_params.every_n_train_steps=2 "
            "trainer.num_sanity_val_steps=0 trainer.enable_progress_bar=false +trainer.enable_model_summary=false "
            "+exp_manager.max_time_per_run=0.001")
    cmd = [str(RECIPE), "--stage", "5", "--stop-stage", "6", "--musan-dir", "", "--data-dir", str(d / "data"),
           "--exp-dir", str(d / "exp"), "--config-name", "nest_tiny", "--ngpus", "0", "--num-buckets", "2",
           "--train-opts", opts]
    return subprocess.run(cmd, cwd=d, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_time_limit_stop_leaves_stage_6_to_run_again(data_dir):
    d = data_dir
    done = d / "exp" / "nest_tiny" / ".done"
    first = _run(d)
    assert first.returncode == EXIT_RESUMABLE, first.stderr[-4000:]
    assert "Stage 6: training stopped at step 1 (max_time_per_run)" in first.stderr, first.stderr[-3000:]
    assert not (done / "stage6.done").exists() and (done / "stage6.pending").exists()

    second = _run(d)  # the same command: the stage runs again and the run continues from step 1 to max_steps
    assert second.returncode == 0, second.stderr[-4000:]
    assert "an earlier run did not finish; continuing it" in second.stderr
    assert "global step 1," in next(line for line in second.stderr.splitlines() if "resumed from" in line)
    assert (done / "stage6.done").exists() and not (done / "stage6.pending").exists()
    assert list((d / "exp" / "nest_tiny" / "checkpoints").glob("*step=2-last.ckpt"))

    third = _run(d)
    assert third.returncode == 0, third.stderr[-4000:]
    assert "Stage 6: training (nest_tiny" in third.stderr and "skipped, up to date" in third.stderr.split("Stage 6")[-1]


@pytest.mark.slow
def test_sigusr1_to_run_sh_alone_reaches_training_and_leaves_stage_6_pending(data_dir):
    """SLURM's --signal=B:USR1@T signals the job's shell only: run.sh passes it on to the training processes (torchrun
    itself ignores it, instead of dying of it) and exits with EXIT_RESUMABLE once they have saved."""
    d = data_dir
    (d / "data" / "bucket_bins.txt").write_text(BUCKET_BINS_LINE)
    trace = d / "trace"
    opts = ("trainer.max_steps=40 trainer.val_check_interval=1000 trainer.check_val_every_n_epoch=null "
            "++exp_manager.checkpoint_callback_params.every_n_train_steps=40 "
            "trainer.num_sanity_val_steps=0 trainer.enable_progress_bar=false +trainer.enable_model_summary=false "
            "+nest_trainer.preemption.save_deadline_s=0")
    cmd = [str(RECIPE), "--stage", "6", "--stop-stage", "6", "--musan-dir", "", "--data-dir", str(d / "data"),
           "--exp-dir", str(d / "exp"), "--config-name", "nest_tiny", "--ngpus", "0", "--train-opts", opts]
    with open(d / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=d, env=_env(NEST_SSL_TRACE_DIR=str(trace)), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            end = time.time() + 240
            while not (trace / "rank0.jsonl").exists() or (trace / "rank0.jsonl").read_text().count('"weights"') < 2:
                assert proc.poll() is None, (d / "run.log").read_text()[-3000:]
                assert time.time() < end, "no step 2 in time"
                time.sleep(0.05)
            proc.send_signal(signal.SIGUSR1)  # to run.sh only, not to its process group
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = (d / "run.log").read_text()
    assert rc == EXIT_RESUMABLE, text[-4000:]
    assert "SIGUSR1: stopping at step" in text and "(preempted, SIGUSR1)" in text, text[-4000:]
    done = d / "exp" / "nest_tiny" / ".done"
    assert not (done / "stage6.done").exists() and (done / "stage6.pending").exists()
    lasts = list((d / "exp" / "nest_tiny" / "checkpoints").glob("*-last.ckpt"))
    assert len(lasts) == 1 and "step=40" not in lasts[0].name
