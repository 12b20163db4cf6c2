"""User errors: one family of exceptions for mistakes the user can fix (a bad config value, a missing manifest, a
foreign checkpoint). The command line turns any of them into one line, `nest-ssl: error: <message>`, and exit code 2;
anything else is a bug of ours and keeps its traceback.

A message names the key or file (and line), the value found and what to do. `describe_os_error` words an OSError by
what actually happened, so that permission denied is not reported as "corrupt" and a folder not as "not found".
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class UserError(Exception):
    """A mistake in the input (config, command line, files) that the message tells the user how to fix."""


def missing_extra(module: str, extra: str, what: str) -> UserError:
    """The error for an optional package that is not installed: `what` needs `module`, which the `extra` of the
    nest-ssl package brings (pyproject.toml's optional-dependencies)."""
    return UserError(f"{what} needs {module}, which is not installed: pip install 'nest-ssl[{extra}]' "
                     f"(or pip install {module})")


# errno -> what it means for a file the user gave us; the rest fall back to the OS's own wording
_OS_REASONS = {
    errno.ENOENT: "does not exist",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error (a failing disk or network file system?)",
}


def describe_os_error(err: OSError) -> str:
    """What happened, in words, without the path (the caller names it): 'permission denied', 'no space left ...'."""
    if err.errno in _OS_REASONS:
        return _OS_REASONS[err.errno]
    return err.strerror or str(err)


def check_readable_file(path: str | Path, what: str, error: type[UserError] = UserError) -> Path:
    """`path` as a Path if it is a readable regular file, else `error` naming `what` (a key or argument) and saying
    which of those it is not: a folder, missing (or a broken link), not a regular file, unreadable (and why)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{what}={p}: is a directory, not a file; give the file inside it")
    if not p.exists():
        hint = " (a broken symbolic link)" if p.is_symlink() else ""
        raise error(f"{what}={p}: does not exist{hint}; check the path")
    if not p.is_file():
        raise error(f"{what}={p}: is not a regular file")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as err:
        raise error(f"{what}={p}: cannot be read: {describe_os_error(err)}") from None
    return p


def check_output_file(path: str | Path, what: str) -> Path:
    """`path` as a Path if a file can be written there (its folder may not exist yet), else a UserError saying why:
    an existing folder or non-regular file in its place, a file on the way that is not a folder, no write
    permission."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what}={p}: is a directory; give a file name (e.g. {p / 'model.ckpt'})")
    if p.exists() and not p.is_file():
        raise UserError(f"{what}={p}: exists and is not a regular file; give another file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what}={p}: {parent} is a file, not a directory; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what}={p}: permission denied: cannot write into {parent}; choose another output path")
    return p
