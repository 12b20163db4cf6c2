"""One training run per run folder: `RunFolderLock`, an exclusive `fcntl.flock` on `<run folder>/.nest_ssl.lock`.

Two runs writing one folder (the same command started twice with `resume_if_exists`, which has no version folder)
would overwrite each other's checkpoints and logs. The lock lives as long as the process holding it: released at
exit, and by the kernel when the process is killed (SIGKILL included), so a stale lock never has to be removed by
hand. The file holds the PID of the holder, for the message of the run that is refused. Only global rank 0 takes it:
the processes of one run share the folder.

Where the file system refuses flock (ENOLCK, EOPNOTSUPP, ENOSYS: Lustre without `-o flock`, some NFS setups), the
lock is a file created exclusively instead, `<run folder>/.nest_ssl.lock.excl` holding host, PID and SLURM job
(nest_ssl/train/lock_file.py), removed at the end; one left by a killed run is taken over when its holder is
provably gone. NEST_SSL_LOCK_MODE=file uses the lock file everywhere (also a test seam), =flock never falls back.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from nest_ssl.errors import UserError, describe_os_error
from nest_ssl.train.lock_file import ExclusiveLockFile, LockFileBusyError

log = logging.getLogger(__name__)

LOCK_NAME = ".nest_ssl.lock"
FILE_LOCK_NAME = ".nest_ssl.lock.excl"
LOCK_MODE_ENV = "NEST_SSL_LOCK_MODE"  # auto (default): flock, a lock file where flock is refused | flock | file
# flock's answers on a file system that does not support it
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class RunFolderBusyError(UserError, RuntimeError):
    """Another process is training in this run folder."""


class RunFolderLock:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._file: ExclusiveLockFile | None = None

    def acquire(self) -> "RunFolderLock":
        """Takes the lock or raises RunFolderBusyError naming the folder and the process that holds it."""
        mode = os.environ.get(LOCK_MODE_ENV, "auto").strip().lower() or "auto"
        if mode not in ("auto", "flock", "file"):
            raise UserError(f"{LOCK_MODE_ENV}={mode!r}: expected auto, flock or file")
        if mode == "file":
            return self._acquire_file()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create the run folder's lock file: {describe_os_error(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno in _NO_FLOCK and mode == "auto":
                log.info("%s: the file system refuses flock (%s); locking the run folder with %s instead",
                         self.path, describe_os_error(err), FILE_LOCK_NAME)
                return self._acquire_file()
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

    def _acquire_file(self) -> "RunFolderLock":
        lock = ExclusiveLockFile(self.folder / FILE_LOCK_NAME)
        try:
            lock.acquire()
        except LockFileBusyError as err:
            raise RunFolderBusyError(
                f"run folder {self.folder} is in use by another training run ({err} holds the lock file "
                f"{lock.path}); wait for it to end or stop it (if it is gone, remove that file), or give this run "
                "another folder (exp_manager.exp_dir, exp_manager.name or exp_manager.explicit_log_dir)"
            ) from None
        if lock.took_over:
            log.warning("%s: took over the lock file of a run that is gone (%s)", self.folder, lock.took_over)
        self._file = lock
        return self

    def release(self) -> None:
        """Drops the lock (the flock file stays: removing it would race with a run that has just opened it; the
        exclusive lock file goes)."""
        if self._file is not None:
            self._file.release()
            self._file = None
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
