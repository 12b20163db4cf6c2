"""A lock that is a file: created with O_CREAT|O_EXCL, removed on release; for file systems without `flock`.

Some shared file systems refuse flock (Lustre mounted without `-o flock`, some NFS setups: ENOLCK, EOPNOTSUPP,
ENOSYS). Creating a file exclusively works on all of them, but the file outlives a killed holder, so the file names
its holder and a later run decides whether that holder is gone:

- same host: the PID is not running, or runs a different process (another start time: the PID was reused);
- a SLURM job requeued after preemption or a node failure: the same SLURM_JOB_ID with a lower
  SLURM_RESTART_COUNT, from any host (SLURM starts a requeued job only once its previous run has ended).

Such a stale file is taken over (renamed aside first, and checked to be the one that was read, so two runs that
find it stale at once do not both win). A live holder, or one on another host that cannot be checked, is named in
the error; the user removes the file once sure it is gone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from nest_ssl.errors import UserError, describe_os_error


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    start: str  # the process's start time in clock ticks since boot (/proc/PID/stat field 22); "" where unknown
    job: str  # SLURM_JOB_ID, "" outside SLURM
    restart: int  # SLURM_RESTART_COUNT

    def line(self) -> str:
        return f"host={self.host} pid={self.pid} start={self.start} job={self.job} restart={self.restart}\n"

    def describe(self) -> str:
        job = f", SLURM job {self.job}" if self.job else ""
        return f"PID {self.pid} on {self.host}{job}"

    @classmethod
    def parse(cls, text: str) -> "Holder | None":
        fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
        try:
            return cls(fields["host"], int(fields["pid"]), fields.get("start", ""), fields.get("job", ""),
                       int(fields.get("restart") or 0))
        except (KeyError, ValueError):
            return None


def process_start(pid: int) -> str:
    """The start time of process `pid` (clock ticks since boot), "" where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else ""  # field 22 overall; fields[0] is field 3 (the state)


def this_process(pid: int | None = None) -> Holder:
    """This process (or `pid`, e.g. the shell script that holds a lock a helper took for it) as a holder."""
    pid = os.getpid() if pid is None else pid
    return Holder(socket.gethostname(), pid, process_start(pid), os.environ.get("SLURM_JOB_ID", ""),
                  int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_reason(holder: Holder, me: Holder) -> str | None:
    """Why the holder is gone, or None when it may still run."""
    if holder.job and holder.job == me.job and holder.restart < me.restart:
        return f"its SLURM job was requeued since: restart {holder.restart} -> {me.restart}"
    if holder.host != me.host:
        return None
    if not _running(holder.pid):
        return "it is not running"
    if holder.start and process_start(holder.pid) not in ("", holder.start):
        return "its PID belongs to another process now"
    return None


class LockFileBusyError(Exception):
    def __init__(self, holder: Holder | None):
        super().__init__(holder.describe() if holder else "holder unknown")
        self.holder = holder


class ExclusiveLockFile:
    """acquire() creates `path` holding this process's Holder line, or raises LockFileBusyError; release() removes
    it (if it is still this process's)."""

    def __init__(self, path: str | Path, pid: int | None = None):
        self.path = Path(path)
        self.pid = pid  # the holder to record: this process by default
        self._line: str | None = None
        self.took_over: str | None = None  # why a stale file was taken over, for the caller's log

    def acquire(self) -> "ExclusiveLockFile":
        me = this_process(self.pid)
        for _ in range(5):  # a few rounds: a stale file taken over by another run in between
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                text = self._read()
                if text is None:
                    continue  # removed in between: try again
                holder = Holder.parse(text)
                why = stale_reason(holder, me) if holder else None
                if why is None:
                    raise LockFileBusyError(holder) from None
                if self._remove_if_unchanged(text):
                    self.took_over = f"{holder.describe()} ({why})"
                continue
            except OSError as err:
                raise UserError(f"{self.path}: cannot create the lock file: {describe_os_error(err)}") from None
            try:
                os.write(fd, me.line().encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._line = me.line()
            return self
        raise LockFileBusyError(Holder.parse(self._read() or ""))

    def _read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def _remove_if_unchanged(self, text: str) -> bool:
        """Removes the stale file whose content was `text`. Renamed aside first: if it turns out to be another file
        (a run that took it over in between), it is put back and False is returned."""
        aside = self.path.with_name(f"{self.path.name}.stale-{socket.gethostname()}-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if aside.read_text(encoding="utf-8", errors="replace") == text:
            aside.unlink()
            return True
        try:
            os.link(aside, self.path)  # put the live holder's file back (fails if yet another one exists)
        except FileExistsError:
            pass
        aside.unlink()
        return False

    def release(self) -> None:
        if self._line is None:
            return
        if self._read() == self._line:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self._line = None
