"""SLURM as the launcher (nest_ssl/train/slurm.py): node lists, tasks per node, the rendezvous port, and two real
`nest-ssl train` processes started with the environment srun gives the tasks of 2 nodes x 1 task (no torchrun
variables), gloo on 127.0.0.1. No SLURM runs here: the variables are set as srun sets them.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.config import ConfigError
from nest_ssl.train.loggers import read_metrics, series
from nest_ssl.train.slurm import (
    PORT_BASE,
    PORT_SPAN,
    adopt_slurm_env,
    expand_nodelist,
    expand_tasks_per_node,
    master_port_for_job,
    slurm_launch_env,
)
from dummy_data import make_dummy_data

REPO = Path(__file__).resolve().parent.parent
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID", "NEST_SSL_FROM_SLURM", "NEST_SSL_SPAWNED")


@pytest.mark.parametrize("text,hosts", [
    ("localhost", ["localhost"]),
    ("node[01-04,7]", ["node01", "node02", "node03", "node04", "node7"]),
    ("node[08-11]", ["node08", "node09", "node10", "node11"]),
    ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("gpu-a100-[1,3],cpu05", ["gpu-a100-1", "gpu-a100-3", "cpu05"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("127.0.0.[1-2]", ["127.0.0.1", "127.0.0.2"]),
    ("n[7]", ["n7"]),
])
def test_node_lists_expand_as_slurm_writes_them(text, hosts):
    assert expand_nodelist(text) == hosts


@pytest.mark.parametrize("text,why", [
    ("node[01-04", "'[' without ']'"), ("node01]", "']' without '['"), ("node[a-b]", "not a number"),
    ("node[5-2]", "runs backwards"), ("a,,b", "empty host name"), ("", "empty"), ("n[[1]]", "nested"),
])
def test_a_bad_node_list_is_named(text, why):
    with pytest.raises(ConfigError, match=re.escape(why)):
        expand_nodelist(text)


def test_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(ConfigError, match="not N or N"):
        expand_tasks_per_node("2x3")


def test_the_port_is_a_function_of_the_job_and_step():
    p = master_port_for_job("4242", "0")
    assert p == master_port_for_job("4242", "0") and PORT_BASE <= p < PORT_BASE + PORT_SPAN
    assert master_port_for_job("4242", "1") != p  # two steps of one job at once
    assert master_port_for_job("4243", "0") != p
    assert master_port_for_job("4242_7") == master_port_for_job("42427")  # array job ids
    with pytest.raises(ConfigError, match="set MASTER_PORT"):
        master_port_for_job("abc")


def _srun_env(rank: int, nodes: int = 2, per_node: int = 1, job: str = "4242", nodelist: str = "node[01-02]"):
    """What srun sets in the environment of task `rank` of `srun --nodes=N --ntasks-per-node=G` (the subset read)."""
    n = nodes * per_node
    return {
        "SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node),
        "SLURM_NODEID": str(rank // per_node), "SLURM_NTASKS": str(n), "SLURM_NNODES": str(nodes),
        "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_STEP_NUM_TASKS": str(n), "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})", "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist,
    }


def test_srun_tasks_get_torchrun_variables():
    env = _srun_env(5, nodes=2, per_node=4)
    got = slurm_launch_env(env)
    assert got == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
                   "MASTER_ADDR": "node01", "MASTER_PORT": str(master_port_for_job("4242", "0"))}
    # Uneven tasks per node: each node's own count.
    env.update(SLURM_STEP_TASKS_PER_NODE="3,1", SLURM_PROCID="3", SLURM_LOCALID="0", SLURM_NODEID="1",
               SLURM_STEP_NUM_TASKS="4")
    assert slurm_launch_env(env)["LOCAL_WORLD_SIZE"] == "1"


def test_torchrun_and_the_job_script_win():
    env = {**_srun_env(1), "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29400"}
    assert adopt_slurm_env(env)
    assert (env["RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("1", "10.0.0.9", "29400")
    # torchrun started by srun on each node: its workers keep torchrun's variables.
    worker = {**_srun_env(1), "RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3"}
    assert not adopt_slurm_env(worker)
    assert (worker["RANK"], worker["WORLD_SIZE"], "MASTER_ADDR" in worker) == ("3", "16", False)


def test_the_batch_script_is_not_an_srun_task():
    """sbatch's own shell has SLURM_PROCID=0 and SLURM_NTASKS=N but is one process: it must not wait for N-1
    others. It is no srun task (no job step), so nothing is set."""
    env = {k: v for k, v in _srun_env(0).items() if not k.startswith("SLURM_STEP_")}
    before = dict(env)
    assert not adopt_slurm_env(env) and env == before


def test_a_one_task_step_starts_its_own_processes():
    """`srun -n1 nest-ssl train trainer.devices=8` (or a shell of `srun --pty bash`): one task, which starts the
    device processes itself, as outside SLURM; nothing is set."""
    env = _srun_env(0, nodes=1, per_node=1)
    before = dict(env)
    assert not adopt_slurm_env(env) and env == before


# ----------------------------------------------------------------------------------------------------------------
# Two srun tasks of `nest-ssl train` on one machine


def _free_derived_port_job() -> str:
    """A job id whose derived rendezvous port is free here now (the port comes from the job id, as on a cluster)."""
    for job in range(int(time.time()) % 100000, 10 ** 7, 7919):
        port = master_port_for_job(str(job), "0")
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return str(job)
    raise AssertionError("no free port in the derived range")


@pytest.mark.slow  # two processes of the tiny model: about 20 s on 2 busy cores
def test_two_srun_tasks_train_together(tmp_path):
    make_dummy_data(tmp_path, num_train=16, num_val=4)
    job = _free_derived_port_job()
    exp = tmp_path / "exp"
    args = [sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
            "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
            "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
            "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", "trainer.sync_batchnorm=true",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false", "+trainer.deterministic=true", "model.train_ds.batch_size=4",
            f"exp_manager.exp_dir={exp}"]
    procs, logs = [], []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and not k.startswith("SLURM_")}
        env.update(_srun_env(rank, job=job, nodelist="localhost,127.0.0.2"), OMP_NUM_THREADS="1",
                   NEST_SSL_TRACE_DIR=str(tmp_path / "trace"))
        log = open(tmp_path / f"task{rank}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    try:
        rcs = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    text = [(tmp_path / f"task{r}.log").read_text() for r in (0, 1)]
    assert rcs == [0, 0], (rcs, text[0][-3000:], text[1][-3000:])
    port = master_port_for_job(job, "0")
    run_dir = exp / "SSL-NEST-FastConformer-Tiny"  # resume_if_exists (nest_tiny): no version folder
    rank1_log = (run_dir / "nemo_log_globalrank-1_localrank-0.txt").read_text()
    assert f"srun task 0 of 2 (node 0): rendezvous at localhost:{port}" in text[0], text[0][-3000:]
    assert f"srun task 1 of 2 (node 1): rendezvous at localhost:{port}" in rank1_log, rank1_log[-3000:]
    ck = load_checkpoint(next(run_dir.glob("checkpoints/*-last.ckpt")))
    assert ck["global_step"] == 4 and ck["nest_ssl"]["world_size"] == 2
    # The two ranks took the same steps and hold identical weights after each (one DDP group, not two runs).
    weights = []
    for rank in (0, 1):
        rows = [json.loads(line) for line in (tmp_path / "trace" / f"rank{rank}.jsonl").read_text().splitlines()]
        weights.append({r["step"]: r["weights"] for r in rows if "weights" in r})
    assert sorted(weights[0]) == [1, 2, 3, 4] and weights[0] == weights[1]
    assert len(set(weights[0].values())) == 4  # and they changed every step
    assert sorted(series(read_metrics(run_dir), "train_loss")) == [1, 2, 3, 4]
