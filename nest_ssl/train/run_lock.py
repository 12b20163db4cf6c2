"""One training run per run folder: `RunFolderLock`, an exclusive `fcntl.flock` on `<run folder>/.nest_ssl.lock`.

Two runs writing one folder (the same command started twice with `resume_if_exists`, which has no version folder)
would overwrite each other's checkpoints and logs. The lock lives as long as the process holding it: released at
exit, and by the kernel when the process is killed (SIGKILL included), so a stale lock never has to be removed by
hand. The file holds the PID of the holder, for the message of the run that is refused. Only global rank 0 takes it:
the processes of one run share the folder.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from nest_ssl.errors import UserError, describe_os_error

LOCK_NAME = ".nest_ssl.lock"


class RunFolderBusyError(UserError, RuntimeError):
    """Another process is training in this run folder."""


class RunFolderLock:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunFolderLock":
        """Takes the lock or raises RunFolderBusyError naming the folder and the PID that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create the run folder's lock file: {describe_os_error(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{self.path}: cannot lock the run folder: {describe_os_error(err)}") from None
            who = f"PID {holder}" if holder else "another process"
            raise RunFolderBusyError(
                f"run folder {self.folder} is in use by another training run ({who} holds {self.path}); wait for it "
                "to end or stop it, or give this run another folder (exp_manager.exp_dir, exp_manager.name or "
                "exp_manager.explicit_log_dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drops the lock (the file stays: removing it would race with a run that has just opened it)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
