"""Two nodes on one machine through egs/librilight/run.sh stage 6 (`--nnodes 2 --node-rank N --master-addr
127.0.0.1`): one torchrun per node, one gloo process each. They train and checkpoint (node 0 writes; node 1 writes
nothing in the shared run folder but its own text log, seen through a Python audit hook); node 1's torchrun is
killed with SIGKILL mid-training, both nodes stop (node 1's training process too), and rerunning both continues
from the last checkpoint to max_steps.
"""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.train.loggers import read_metrics, series
from dummy_data import make_prepared_data

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "egs" / "librilight" / "run.sh"
RUN_NAME = "nest_tiny"  # run.sh: exp_manager.name = the config name
MAX_STEPS = 12

# Installed only into node 1's processes (PYTHONPATH): every file a Python process of node 1 opens for writing,
# renames or removes is appended to $AUDIT_DIR/<pid>.txt.
SITECUSTOMIZE = r'''
import os, sys
_dir = os.environ.get("NEST_TEST_AUDIT_DIR")
if _dir:
    _fd = os.open(os.path.join(_dir, f"{os.getpid()}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _busy = [False]

    def _hook(event, args):
        if _busy[0]:
            return
        path = None
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            path = os.fspath(args[0]) if writing else None
        elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "shutil.rmtree", "os.mkdir"):
            path = os.fspath(args[0]) if args and isinstance(args[0], (str, bytes, os.PathLike)) else None
        if path is not None:
            _busy[0] = True
            try:
                p = path.decode() if isinstance(path, bytes) else path
                os.write(_fd, (event + "\t" + os.path.abspath(p) + "\n").encode())
            finally:
                _busy[0] = False

    sys.addaudithook(_hook)
'''


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """What stages 0-5 leave for stage 6: data/cuts/{train,val}.jsonl.gz and data/bucket_bins.txt."""
    d = tmp_path_factory.mktemp("multinode")
    make_prepared_data(d, num_train=32, num_val=4)
    audit = d / "sitecustomize"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_cmd(d: Path, node_rank: int, port: int) -> list:
    opts = " ".join([
        f"trainer.max_steps={MAX_STEPS}", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "+trainer.deterministic=true",
        "model.train_ds.batch_size=4", "++exp_manager.checkpoint_callback_params.every_n_train_steps=2",
    ])
    return [str(RECIPE), "--stage", "6", "--stop-stage", "6", "--musan-dir", "",
            "--data-dir", str(d / "data"), "--exp-dir", str(d / "exp"), "--config-name", "nest_tiny",
            "--ngpus", "0", "--nnodes", "2", "--node-rank", str(node_rank), "--master-addr", "127.0.0.1",
            "--master-port", str(port), "--train-opts", opts]


def _start(d: Path, node_rank: int, port: int, tag: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": str(REPO / ".venv" / "bin") + os.pathsep + os.environ.get("PATH", "")}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if node_rank == 1:
        audit = d / f"audit-{tag}"
        audit.mkdir()
        env["NEST_TEST_AUDIT_DIR"] = str(audit)
        env["PYTHONPATH"] = str(d / "sitecustomize") + os.pathsep + env.get("PYTHONPATH", "")
    log = open(d / f"node{node_rank}-{tag}.log", "w")
    return subprocess.Popen(_node_cmd(d, node_rank, port), cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _descendants(pid: int) -> list[int]:
    out = []
    for c in _children(pid):
        out += [c] + _descendants(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_all(procs: list, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        pytest.fail("a node did not finish in time (a hang in the rendezvous or a collective)")
    return [p.returncode for p in procs]


def _steps_saved(ckdir: Path) -> list[int]:
    steps = []
    for p in list(ckdir.glob("*-last.ckpt")):
        steps.append(int(p.name.split("step=")[1].split("-")[0]))
    return steps


@pytest.mark.slow  # a whole recipe or several processes: minutes on 2 cores
def test_two_nodes_train_checkpoint_and_resume_after_a_node_is_killed(data_dir):
    d = data_dir
    run_dir = d / "exp" / RUN_NAME
    ckdir = run_dir / "checkpoints"
    port = _free_port()
    nodes = [_start(d, 0, port, "first"), _start(d, 1, port, "first")]
    killed_step = None
    try:
        deadline = time.time() + 240
        while not any(s >= 4 for s in _steps_saved(ckdir)):
            for i, p in enumerate(nodes):
                assert p.poll() is None, f"node {i} ended before the kill:\n" + (d / f"node{i}-first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint of step 4 in time"
            time.sleep(0.1)
        # Node 1's launcher: run.sh -> torchrun -> train.py (the training process).
        tree = _descendants(nodes[1].pid)
        torchrun = [p for p in tree if "torch.distributed.run" in _cmdline(p)]
        workers = [p for p in tree if "train.py" in _cmdline(p) and "torch.distributed.run" not in _cmdline(p)]
        assert len(torchrun) == 1 and len(workers) == 1, [(p, _cmdline(p)) for p in tree]
        killed_step = max(_steps_saved(ckdir))
        os.kill(torchrun[0], signal.SIGKILL)
        rcs = _wait_all(nodes, timeout=120)
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    log0 = (d / "node0-first.log").read_text()
    assert rcs[0] != 0 and rcs[1] != 0, (rcs, log0[-3000:])  # both nodes stop
    deadline = time.time() + 30
    while _alive(workers[0]) and time.time() < deadline:  # the orphaned training process exits by itself
        time.sleep(0.2)
    assert not _alive(workers[0]), "node 1's training process outlived its torchrun"
    saved = max(_steps_saved(ckdir))
    assert killed_step <= saved < MAX_STEPS, (killed_step, saved)

    # Both nodes again, the same commands: the run continues from the last checkpoint to max_steps.
    port = _free_port()
    nodes = [_start(d, 0, port, "rerun"), _start(d, 1, port, "rerun")]
    rcs = _wait_all(nodes, timeout=300)
    logs = [(d / f"node{i}-rerun.log").read_text() for i in (0, 1)]
    assert rcs == [0, 0], (rcs, logs[0][-3000:], logs[1][-3000:])
    assert "resumed from" in logs[0] and f"global step {saved}" in logs[0], logs[0][-3000:]
    assert f"done: global step {MAX_STEPS}" in logs[0]
    assert "Stage 6: done (node 0 writes the marker)" in logs[1]
    ck = load_checkpoint(next(ckdir.glob("*-last.ckpt")))
    assert ck["global_step"] == MAX_STEPS and ck["nest_ssl"]["world_size"] == 2
    rows = read_metrics(run_dir)
    assert sorted(series(rows, "train_loss")) == list(range(1, MAX_STEPS + 1))
    assert series(rows, "val_loss")  # validation (a collective over both nodes) ran too
    marker = json.loads((run_dir / ".done" / "stage6.done").read_text())  # node 0's marker of the finished stage
    assert marker["stage"] == "6" and "finished" in marker

    # Node 1 wrote nothing in the shared run folder but its own log file, in either run.
    own_log = str((run_dir / "nemo_log_globalrank-1_localrank-0.txt").resolve())
    writes = []
    for tag in ("first", "rerun"):
        for f in (d / f"audit-{tag}").iterdir():
            writes += [line.split("\t", 1) for line in f.read_text().splitlines()]
    assert any(path == own_log for _, path in writes)  # the hook did see node 1's writes
    root = str(run_dir.resolve())
    # (every rank makes sure the run folder exists before it opens its log file there: a mkdir, not a write)
    foreign = [(e, p) for e, p in writes if (p == root or p.startswith(root + os.sep)) and p != own_log
               and not (e == "os.mkdir" and p == root)]
    assert not foreign, foreign[:10]
