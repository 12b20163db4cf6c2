"""Shared data, private runs, and stage 6 under srun, through egs/librilight/run.sh on a tiny prepared data folder
(what stages 0-5 leave: data/cuts/{train,val}.jsonl.gz, data/bucket_bins.txt).

- Two experiments train from one data folder at once: run A is held mid-training (a test-only audit hook blocks
  it at its first metrics write until a gate file appears) while run B trains and finishes, and a third run into
  A's run folder is refused by A's lock (the lock-file fallback, NEST_SSL_LOCK_MODE=file).
- `--launcher srun`: stage 6 under a stand-in srun that starts 2 nodes x 1 task with the variables srun sets (no
  SLURM here); the tasks form one gloo group from them. Its exit status reaches the job script.
"""

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.train.exit_codes import EXIT_RESUMABLE
from nest_ssl.train.loggers import read_metrics, series
from nest_ssl.train.run_lock import FILE_LOCK_NAME
from nest_ssl.train.slurm import master_port_for_job
from dummy_data import make_prepared_data

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "egs" / "librilight" / "run.sh"
TRAIN_OPTS = " ".join([
    "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false", "model.train_ds.batch_size=4",
])

# Installed into run A only (PYTHONPATH): its first write of metrics.jsonl waits for $NEST_TEST_GATE to exist.
SITECUSTOMIZE = r'''
import os, sys, time
_gate = os.environ.get("NEST_TEST_GATE")
if _gate:
    _held = [False]

    def _hook(event, args):
        if event == "open" and not _held[0] and args and str(args[0]).endswith("metrics.jsonl"):
            _held[0] = True
            open(_gate + ".waiting", "w").close()
            deadline = time.time() + 300
            while not os.path.exists(_gate) and time.time() < deadline:
                time.sleep(0.05)

    sys.addaudithook(_hook)
'''

# Stands in for SLURM's srun on one machine: `srun --nodes N --ntasks-per-node G CMD...` starts N x G copies of CMD
# with the variables srun gives its tasks (the job's own, SLURM_JOB_ID and SLURM_JOB_NODELIST, come from the
# caller, as in a job script), and exits with the highest exit status, as srun does.
FAKE_SRUN = r'''#!PYTHON
import os, subprocess, sys
args = sys.argv[1:]
nodes = per_node = 1
while args and args[0].startswith("--"):
    opt = args.pop(0)
    if opt == "--nodes":
        nodes = int(args.pop(0))
    elif opt == "--ntasks-per-node":
        per_node = int(args.pop(0))
    else:
        sys.exit("fake srun: unexpected option " + opt)
if os.environ.get("FAKE_SRUN_EXIT"):
    sys.exit(int(os.environ["FAKE_SRUN_EXIT"]))
n = nodes * per_node
nodelist = os.environ["SLURM_JOB_NODELIST"]
procs = []
for rank in range(n):
    env = dict(os.environ, SLURM_STEP_ID="0", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
               SLURM_NODEID=str(rank // per_node), SLURM_NTASKS=str(n), SLURM_NNODES=str(nodes),
               SLURM_STEP_NUM_TASKS=str(n), SLURM_STEP_NUM_NODES=str(nodes),
               SLURM_STEP_TASKS_PER_NODE="%d(x%d)" % (per_node, nodes), SLURM_STEP_NODELIST=nodelist)
    procs.append(subprocess.Popen(args, env=env))
sys.exit(max(p.wait() for p in procs))
'''

CLEAN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
         "NEST_SSL_FROM_SLURM")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("shared")
    make_prepared_data(d, num_train=16, num_val=4)
    (d / "hook").mkdir()
    (d / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (d / "bin").mkdir()
    srun = d / "bin" / "srun"
    srun.write_text(FAKE_SRUN.replace("PYTHON", sys.executable))
    srun.chmod(srun.stat().st_mode | stat.S_IXUSR)
    return d


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PATH=str(REPO / ".venv" / "bin") + os.pathsep + env.get("PATH", ""), **extra)
    return env


def _stage6(d: Path, exp_name: str, steps: int, *extra: str) -> list:
    return [str(RECIPE), "--stage", "6", "--stop-stage", "6", "--musan-dir", "", "--data-dir", str(d / "data"),
            "--exp-dir", str(d / "exp"), "--config-name", "nest_tiny", "--exp-name", exp_name, "--ngpus", "0",
            *extra, "--train-opts", f"{TRAIN_OPTS} trainer.max_steps={steps}"]


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, bound: float = 240) -> None:
    deadline = time.monotonic() + bound  # a bound on a hang, not a timing assertion
    while not path.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow  # three runs of the tiny model: about 30 s on 2 quiet cores (much more on busy ones)
def test_two_experiments_train_from_one_data_folder_at_once(prepared):
    d = prepared
    gate = d / "gate"
    log_a = d / "a.log"
    env_a = _env(NEST_SSL_LOCK_MODE="file", NEST_TEST_GATE=str(gate),
                 PYTHONPATH=str(d / "hook") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_a, "w") as out:
        a = subprocess.Popen(_stage6(d, "a", 4), cwd=d, env=env_a, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        _wait_for(Path(str(gate) + ".waiting"), a, log_a)  # A trains: its run folder is locked, its data open
        assert (d / "exp" / "a" / FILE_LOCK_NAME).exists()
        # B: another experiment on the same data folder, while A is in the middle of its training
        b = subprocess.run(_stage6(d, "b", 2), cwd=d, env=_env(NEST_SSL_LOCK_MODE="file"), capture_output=True,
                           text=True, timeout=300)
        assert b.returncode == 0, b.stderr[-4000:]
        assert "done: global step 2" in b.stderr and "Stage 6: done" in b.stderr
        # C: `nest-ssl train` into A's run folder while A holds it: refused, one line naming A's process
        c = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
                            f"model.train_ds.manifest_filepath={d / 'data/cuts/train.jsonl.gz'}",
                            f"model.validation_ds.manifest_filepath={d / 'data/cuts/val.jsonl.gz'}",
                            "trainer.accelerator=cpu", "trainer.devices=1", f"exp_manager.exp_dir={d / 'exp'}",
                            "exp_manager.name=a", "trainer.max_steps=4",
                            "++exp_manager.checkpoint_callback_params.every_n_train_steps=2"], cwd=d, env=_env(NEST_SSL_LOCK_MODE="file"), capture_output=True,
                           text=True, timeout=300)
        assert c.returncode == 2, c.stderr[-3000:]
        (refusal,) = c.stderr.strip().splitlines()[-1:]
        assert "is in use by another training run (PID" in refusal, c.stderr[-3000:]
        assert f"holds the lock file {d / 'exp' / 'a' / FILE_LOCK_NAME})" in refusal
        assert a.poll() is None  # A was held all along
        gate.touch()
        assert a.wait(timeout=300) == 0, log_a.read_text()[-4000:]
    finally:
        if a.poll() is None:
            os.killpg(a.pid, 9)
            a.wait()
    for name, steps in (("a", 4), ("b", 2)):
        run_dir = d / "exp" / name
        assert sorted(series(read_metrics(run_dir), "train_loss")) == list(range(1, steps + 1))
        assert (run_dir / ".done" / "stage6.done").exists()
        assert not (run_dir / FILE_LOCK_NAME).exists()  # released at the end
    assert not (d / "data" / ".lock").exists() and not (d / "data" / ".lock.excl").exists()  # --stage 6: no data lock


def _free_derived_port_job() -> str:
    for job in range(int(time.time()) % 100000, 10 ** 7, 7919):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", master_port_for_job(str(job), "0")))
            except OSError:
                continue
        return str(job)
    raise AssertionError("no free port in the derived range")


@pytest.mark.slow  # two training processes through the recipe: 20-60 s on 2 cores
def test_stage6_with_the_srun_launcher_trains_two_tasks_as_one_run(prepared):
    d = prepared
    job = _free_derived_port_job()
    env = _env(SLURM_JOB_ID=job, SLURM_JOB_NODELIST="localhost,127.0.0.2", SLURM_JOB_NUM_NODES="2")
    env["PATH"] = str(d / "bin") + os.pathsep + env["PATH"]
    r = subprocess.run(_stage6(d, "srun2", 4, "--nnodes", "2", "--launcher", "srun"), cwd=d, env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    run_dir = d / "exp" / "srun2"
    port = master_port_for_job(job, "0")
    assert f"srun task 0 of 2 (node 0): rendezvous at localhost:{port}" in r.stderr
    assert f"srun task 1 of 2 (node 1): rendezvous at localhost:{port}" in (
        run_dir / "nemo_log_globalrank-1_localrank-0.txt").read_text()
    ck = load_checkpoint(next((run_dir / "checkpoints").glob("*-last.ckpt")))
    assert ck["global_step"] == 4 and ck["nest_ssl"]["world_size"] == 2
    marker = json.loads((run_dir / ".done" / "stage6.done").read_text())
    assert marker["stage"] == "6"


def test_the_srun_launcher_passes_the_resumable_exit_status_on(prepared):
    """A run that stopped to be continued (EXIT_RESUMABLE) leaves stage 6 unfinished and run.sh exits with that
    status, which the sbatch script in egs/librilight/README.md requeues on."""
    d = prepared
    env = _env(SLURM_JOB_ID="5", SLURM_JOB_NODELIST="localhost", FAKE_SRUN_EXIT=str(EXIT_RESUMABLE))
    env["PATH"] = str(d / "bin") + os.pathsep + env["PATH"]
    r = subprocess.run(_stage6(d, "requeued", 2, "--launcher", "srun"), cwd=d, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == EXIT_RESUMABLE, r.stderr[-3000:]
    assert not (d / "exp" / "requeued" / ".done" / "stage6.done").exists()


def test_the_srun_launcher_outside_a_slurm_job_is_one_message(prepared):
    d = prepared
    r = subprocess.run(_stage6(d, "nojob", 2, "--launcher", "srun"), cwd=d, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "--launcher srun runs inside a SLURM job" in r.stderr, r.stderr[-3000:]
    bad = subprocess.run(_stage6(d, "nojob", 2, "--launcher", "mpirun"), cwd=d, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"{RECIPE}: option --launcher expects one of: torchrun srun; got 'mpirun'"
