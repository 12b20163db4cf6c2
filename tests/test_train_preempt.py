"""Preemption that lands (real subprocesses, the tiny config on CPU, gloo between processes).

On SIGTERM or SIGUSR1 a run writes its last checkpoint first, without validating, then validates, ranks and
writes the .nemo only while the time left before `nest_trainer.preemption.save_deadline_s` covers it, and exits
with EXIT_RESUMABLE; rank 0 records how the run ended in the run folder (train_status.json). The signal may reach
the ranks at different times: they agree to stop at one step through the step's all-reduce.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.train.exit_codes import EXIT_RESUMABLE
from nest_ssl.train.loggers import read_metrics, series
from nest_ssl.train.run_status import read_status
from dummy_data import make_dummy_data

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "recipes" / "nest" / "train.py"
RUN_NAME = "SSL-NEST-FastConformer-Tiny"
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
              "TORCHELASTIC_RUN_ID")
KILL_MARGIN_S = 30.0  # the launcher's SIGKILL comes this long after the deadline (torchrun: 30 s after its SIGTERM)

# No scheduled validation within the run and a checkpoint only at its last step (every_n_train_steps=max_steps, so
# that the preflight sees one): the only ones before it are those of the stop.
COMMON = [
    "--config-name", "nest_tiny",
    "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
    "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
    "trainer.val_check_interval=1000", "trainer.check_val_every_n_epoch=null", "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1", "+trainer.deterministic=true", "trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("preempt")
    make_dummy_data(d, num_train=32, num_val=16)
    return d


def _save_at(step: int) -> str:
    return f"++exp_manager.checkpoint_callback_params.every_n_train_steps={step}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(trace: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NEST_SSL_TRACE_DIR": str(trace)}
    for var in LAUNCH_ENV:
        env.pop(var, None)
    return env


def _start_ranks(d: Path, tag: str, overrides: list) -> list:
    """Two training processes with torchrun's environment (as torchrun or srun starts them), on 127.0.0.1."""
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**_env(d / f"trace-{tag}"), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(d / f"{tag}-rank{rank}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, str(TRAIN), *COMMON, "trainer.devices=2", "trainer.accelerator=cpu",
             "trainer.strategy=ddp", *overrides], cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs: list, timeout: float) -> list:
    end = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()  # what the launcher does when the grace period is over
            p.wait()
    return [p.returncode for p in procs]


def _steps_done(trace: Path) -> int:
    """The last optimizer step rank 0 finished (the trace's weight digest after each step)."""
    path = trace / "rank0.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"weights"' in line)


def _signal_after_step(procs: list, trace: Path, step: int, signals: list, timeout: float = 240) -> float:
    """Sends signals[i] to procs[i] (in that order, 0.1 s apart: the ranks learn of it at different times) once
    rank 0 has finished `step` optimizer steps; returns when the first one was sent."""
    end = time.time() + timeout
    while _steps_done(trace) < step:
        for p in procs:
            assert p.poll() is None, f"a rank ended before step {step}"
        assert time.time() < end, f"no step {step} in {timeout} s"
        time.sleep(0.05)
    sent = time.time()
    for p, sig in signals:
        if sig is not None:
            p.send_signal(sig)
            time.sleep(0.1)
    return sent


def _lasts(ckdir: Path) -> list:
    return sorted(ckdir.glob("*-last.ckpt"))


def _step_of(path: Path) -> int:
    return int(path.name.split("step=")[1].split("-")[0].split(".")[0])


@pytest.mark.slow
def test_two_ranks_save_last_first_on_sigterm_and_the_rerun_continues_exactly(workdir):
    d = workdir
    max_steps = 8
    # A deadline shorter than any validation: only the last checkpoint fits; validation, top-k and .nemo do not.
    run = [f"trainer.max_steps={max_steps}", "exp_manager.exp_dir=stopped", _save_at(max_steps),
           "+nest_trainer.preemption.save_deadline_s=0"]
    procs = _start_ranks(d, "first", run)
    try:
        # The signal reaches rank 1 first, rank 0 0.1 s later (torchrun and SLURM signal every process).
        sent = _signal_after_step(procs, d / "trace-first", 2,
                                  [(procs[1], signal.SIGTERM), (procs[0], signal.SIGTERM)])
        rcs = _wait(procs, timeout=max(1.0, sent + KILL_MARGIN_S - time.time()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    log0 = (d / "first-rank0.log").read_text()
    assert rcs == [EXIT_RESUMABLE, EXIT_RESUMABLE], (rcs, log0[-3000:], (d / "first-rank1.log").read_text()[-2000:])

    run_dir = d / "stopped" / RUN_NAME
    lasts = _lasts(run_dir / "checkpoints")
    assert len(lasts) == 1, lasts
    stopped = _step_of(lasts[0])
    assert 2 <= stopped < max_steps, stopped
    ck = load_checkpoint(lasts[0])
    assert ck["global_step"] == stopped and ck["nest_ssl"]["loop"]["last_val_step"] != stopped  # not validated
    assert not [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p not in lasts]  # no top-k: no time
    assert stopped not in series(read_metrics(run_dir), "val_loss")
    # rank 0's reason is SIGTERM, or "a signal on another rank" when the step ended before its own signal came
    assert f"stopping at step {stopped}; writing the last checkpoint first" in log0, log0[-3000:]
    assert "no time left before the deadline" in log0, log0[-3000:]
    status = read_status(run_dir)
    assert status == {"status": "resumable", "stop_reason": "preempted", "exit_code": EXIT_RESUMABLE,
                      "global_step": stopped, "epoch": status["epoch"]}

    # The same command again: it resumes at the stop step and ends at max_steps (exit 0, the status says so).
    rcs = _wait(_start_ranks(d, "rerun", run), timeout=300)
    log0 = (d / "rerun-rank0.log").read_text()
    assert rcs == [0, 0], (rcs, log0[-3000:])
    assert f"global step {stopped}," in next(line for line in log0.splitlines() if "resumed from" in line)
    assert read_status(run_dir)["status"] == "finished"

    # An uninterrupted run logs the same loss at every step.
    rcs = _wait(_start_ranks(d, "whole", [f"trainer.max_steps={max_steps}", "exp_manager.exp_dir=whole",
                                          _save_at(max_steps)]), 300)
    assert rcs == [0, 0], (d / "whole-rank0.log").read_text()[-3000:]
    resumed = series(read_metrics(run_dir), "train_loss")
    whole = series(read_metrics(d / "whole" / RUN_NAME), "train_loss")
    assert sorted(whole) == list(range(1, max_steps + 1))
    assert resumed == whole


@pytest.mark.slow
def test_devices_2_without_torchrun_pass_the_signal_on_to_their_processes(workdir):
    """trainer.devices=2 without a launcher: the first process started the two training processes; a signal sent
    to it reaches them, and its exit status is theirs (read from the run folder's status file)."""
    d = workdir
    trace = d / "trace-spawned"
    cmd = [sys.executable, str(TRAIN), *COMMON, "trainer.devices=2", "trainer.accelerator=cpu",
           "trainer.strategy=ddp", "trainer.max_steps=40", "exp_manager.exp_dir=spawned", _save_at(40),
           "+nest_trainer.preemption.save_deadline_s=0"]
    with open(d / "spawned.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=d, env=_env(trace), stdout=log, stderr=subprocess.STDOUT)
        try:
            sent = _signal_after_step([proc], trace, 2, [(proc, signal.SIGTERM)])
            rc = _wait([proc], timeout=max(1.0, sent + KILL_MARGIN_S - time.time()))[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (d / "spawned.log").read_text()
    assert rc == EXIT_RESUMABLE, text[-3000:]
    run_dir = d / "spawned" / RUN_NAME
    lasts = _lasts(run_dir / "checkpoints")
    assert len(lasts) == 1 and 2 <= _step_of(lasts[0]) < 40
    assert read_status(run_dir)["stop_reason"] == "preempted"


@pytest.mark.slow
def test_sigusr1_with_time_left_saves_last_then_validates_ranks_and_exports(workdir):
    d = workdir
    trace = d / "trace-usr1"
    cmd = [sys.executable, str(TRAIN), *COMMON, "trainer.devices=1", "trainer.max_steps=40", _save_at(40),
           "exp_manager.exp_dir=usr1", "+nest_trainer.preemption.save_deadline_s=600"]
    with open(d / "usr1.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=d, env=_env(trace), stdout=log, stderr=subprocess.STDOUT)
        try:
            sent = _signal_after_step([proc], trace, 2, [(proc, signal.SIGUSR1)])
            rc = _wait([proc], timeout=max(1.0, sent + 600 + KILL_MARGIN_S - time.time()))[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (d / "usr1.log").read_text()
    assert rc == EXIT_RESUMABLE, text[-3000:]
    run_dir = d / "usr1" / RUN_NAME
    ckdir = run_dir / "checkpoints"
    lasts = _lasts(ckdir)
    assert len(lasts) == 1
    stopped = _step_of(lasts[0])
    assert 2 <= stopped < 40
    # The last checkpoint was written first, then the validation of its step, then the top-k file and the last
    # again (named by that validation) and the .nemo (always_save_nemo).
    assert text.index("the last checkpoint first") < text.index(f"step {stopped}: val_loss="), text[-3000:]
    val = series(read_metrics(run_dir), "val_loss")
    assert list(val) == [stopped]
    ck = load_checkpoint(lasts[0])
    assert ck["global_step"] == stopped and ck["nest_ssl"]["loop"]["last_val_step"] == stopped
    assert lasts[0].name == f"{RUN_NAME}--val_loss={val[stopped]:.3f}-step={stopped}-last.ckpt"
    assert (ckdir / f"{RUN_NAME}--val_loss={val[stopped]:.3f}-step={stopped}.ckpt").exists()
    assert (ckdir / f"{RUN_NAME}.nemo").exists()
    assert read_status(run_dir)["stop_reason"] == "preempted"


def test_stop_requests_catch_sigterm_and_sigusr1_and_put_the_handlers_back():
    from nest_ssl.train.signals import StopRequests

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        stops = StopRequests(handle_signals=True, max_time_per_run=None)
        stops.install()
        try:
            assert not stops.requested() and stops.stop_time is None
            os.kill(os.getpid(), sig)
            end = time.time() + 10
            while not stops.preempted and time.time() < end:  # the handler runs between bytecodes
                time.sleep(0.01)
            assert stops.requested() and stops.signal_name == sig.name and stops.stop_time is not None
            assert stops.deadline(20.0) == stops.stop_time + 20.0  # counted from the signal
        finally:
            stops.uninstall()
        assert {s: signal.getsignal(s) for s in before} == before
    # a rank that learns of the stop from the others counts from then; without handling, nothing is caught
    other = StopRequests(handle_signals=False, max_time_per_run=None)
    other.install()
    assert signal.getsignal(signal.SIGUSR1) == before[signal.SIGUSR1]
    t0 = time.monotonic()
    assert other.deadline(5.0) >= t0 + 5.0 and not other.preempted
    assert StopRequests(handle_signals=False, max_time_per_run=0.0).requested()


def test_validation_is_cut_short_at_its_deadline_or_by_a_signal(workdir, tmp_path):
    from nest_ssl.config import load_config
    from nest_ssl.train.distributed import DistInfo
    from nest_ssl.train.run import build_trainer
    from nest_ssl.train.trainer_config import parse_run_config

    data = workdir / "data" / "dummy_ssl"
    cfg = load_config(None, "nest_tiny", [f"model.train_ds.manifest_filepath={data / 'train_manifest.json'}",
                                          f"model.validation_ds.manifest_filepath={data / 'val_manifest.json'}",
                                          f"exp_manager.exp_dir={tmp_path}"])
    settings = parse_run_config(cfg)
    trainer = build_trainer(cfg, settings, DistInfo(), log_dir=tmp_path, ckpt_dir=tmp_path / "checkpoints")
    try:
        full = trainer.validate()
        assert full is not None and trainer.validation_cut is None
        assert trainer.validate(until=time.monotonic() - 1.0) is None and trainer.validation_cut == "deadline"
        trainer.stop_requests.preempted = True  # as the signal handler leaves it
        assert trainer.validate() is None and trainer.validation_cut == "signal"
        # the stop's own validation is not cut by the signal that caused it; it is seeded per batch
        assert trainer.validate(stop_on_signal=False, until=time.monotonic() + 600) == full
    finally:
        trainer.close()
