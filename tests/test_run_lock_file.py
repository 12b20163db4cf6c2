"""The run folder's lock where flock is not available (nest_ssl/train/run_lock.py, nest_ssl/train/lock_file.py):
a file created exclusively, naming host, PID and SLURM job. Real processes hold and contend for it
(NEST_SSL_LOCK_MODE=file forces the fallback here, where flock works)."""

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nest_ssl.train import run_lock
from nest_ssl.train.lock_file import ExclusiveLockFile, Holder, LockFileBusyError, process_start
from nest_ssl.train.run_lock import FILE_LOCK_NAME, LOCK_NAME, RunFolderBusyError, RunFolderLock

REPO = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()

HOLD = """
import sys, time
from nest_ssl.train.run_lock import RunFolderLock
lock = RunFolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def file_mode(monkeypatch):
    monkeypatch.setenv("NEST_SSL_LOCK_MODE", "file")
    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)


def _holder(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "NEST_SSL_LOCK_MODE": "file", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_is_refused_and_a_killed_holder_is_taken_over(file_mode, tmp_path):
    first = _holder(tmp_path)
    try:
        text = (tmp_path / FILE_LOCK_NAME).read_text()
        assert text.startswith(f"host={HOST} pid={first.pid} ")
        with pytest.raises(RunFolderBusyError) as err:
            RunFolderLock(tmp_path).acquire()
        msg = str(err.value)
        assert f"PID {first.pid} on {HOST}" in msg and str(tmp_path / FILE_LOCK_NAME) in msg
        assert "\n" not in msg and "remove that file" in msg
        assert (tmp_path / FILE_LOCK_NAME).read_text() == text  # the refused one changed nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()
    assert (tmp_path / FILE_LOCK_NAME).exists()  # SIGKILL: nobody removed the file ...
    lock = RunFolderLock(tmp_path).acquire()  # ... but its holder is gone: taken over
    assert (tmp_path / FILE_LOCK_NAME).read_text().startswith(f"host={HOST} pid={os.getpid()} ")
    assert not (tmp_path / LOCK_NAME).exists()  # file mode: no flock file
    lock.release()
    assert not (tmp_path / FILE_LOCK_NAME).exists()


def test_a_live_holder_with_a_reused_pid_is_told_apart(file_mode, tmp_path):
    """The holder line records the process start time: the same PID with another start is another process."""
    me = Holder(HOST, os.getpid(), process_start(os.getpid()), "", 0)
    (tmp_path / FILE_LOCK_NAME).write_text(me.line())
    with pytest.raises(RunFolderBusyError, match=f"PID {os.getpid()} on "):
        RunFolderLock(tmp_path).acquire()
    reused = Holder(HOST, os.getpid(), "1", "", 0)  # started at tick 1: not this process
    (tmp_path / FILE_LOCK_NAME).write_text(reused.line())
    lock = ExclusiveLockFile(tmp_path / FILE_LOCK_NAME).acquire()
    assert lock.took_over == f"PID {os.getpid()} on {HOST} (its PID belongs to another process now)"
    lock.release()


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(file_mode, tmp_path, monkeypatch):
    path = tmp_path / FILE_LOCK_NAME
    path.write_text(Holder("node17", 4242, "99", "777", 0).line())
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same run of the job, on another node: may be alive
    with pytest.raises(RunFolderBusyError, match="PID 4242 on node17, SLURM job 777"):
        RunFolderLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "778")  # another job: cannot tell from here
    with pytest.raises(RunFolderBusyError, match="PID 4242 on node17"):
        RunFolderLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: SLURM started it again only after the old run ended
    lock = ExclusiveLockFile(path).acquire()
    assert "requeued" in lock.took_over
    assert Holder.parse(path.read_text()) == Holder(HOST, os.getpid(), process_start(os.getpid()), "777", 1)
    lock.release()


def test_of_several_processes_taking_a_stale_lock_at_once_exactly_one_wins(tmp_path):
    """Four helpers (local/lock_file.py, as the recipes use it) find one stale file and race for it."""
    path = tmp_path / ".lock.excl"
    path.write_text(Holder(HOST, 2 ** 22 + 12345, "5", "", 0).line())  # a PID above pid_max's default: not running
    holder = os.getpid()  # each records this (live) test process as the holder, as a recipe records its shell
    procs = [subprocess.Popen([sys.executable, str(REPO / "local" / "lock_file.py"), "acquire", str(path),
                               "--pid", str(holder)], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [(p.wait(timeout=60), p.stdout.read().strip()) for p in procs]
    for p in procs:
        p.stdout.close()
    assert sorted(rc for rc, _ in outs) == [0, 3, 3, 3], outs
    assert all(out == f"PID {holder} on {HOST}" for rc, out in outs if rc == 3), outs
    assert Holder.parse(path.read_text()).pid == holder
    assert [p.name for p in tmp_path.iterdir()] == [".lock.excl"]  # no file set aside was left behind


def test_flock_refused_by_the_file_system_falls_back_to_the_lock_file(tmp_path, monkeypatch):
    """NEST_SSL_LOCK_MODE=auto: flock answering ENOLCK (as on Lustre without -o flock) means the lock file."""
    monkeypatch.delenv("NEST_SSL_LOCK_MODE", raising=False)

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", refuse)
    lock = RunFolderLock(tmp_path).acquire()
    assert Holder.parse((tmp_path / FILE_LOCK_NAME).read_text()).pid == os.getpid()
    with pytest.raises(RunFolderBusyError, match=f"PID {os.getpid()} on {HOST}"):
        RunFolderLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / FILE_LOCK_NAME).exists()
    monkeypatch.setenv("NEST_SSL_LOCK_MODE", "flock")  # no fallback wanted: the error says what failed
    with pytest.raises(Exception, match="cannot lock the run folder"):
        RunFolderLock(tmp_path).acquire()
    monkeypatch.setenv("NEST_SSL_LOCK_MODE", "sometimes")
    with pytest.raises(Exception, match="expected auto, flock or file"):
        RunFolderLock(tmp_path).acquire()


def test_an_unreadable_holder_line_is_busy_not_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("garbage\n")
    with pytest.raises(LockFileBusyError, match="holder unknown"):
        ExclusiveLockFile(path).acquire()
    assert path.read_text() == "garbage\n"
