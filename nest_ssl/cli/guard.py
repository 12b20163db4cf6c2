"""The one place where user errors become a one-line message and exit code 2.

Every entry point a user runs (`nest-ssl`, `recipes/nest/train.py`, the `local/*.py` helpers of the recipes) calls
its main function through `run_guarded`. A `UserError` (a bad config value, a missing or unreadable file, a foreign
checkpoint) and an OSError from the environment (permission denied, disk full, a folder where a file belongs) print

    nest-ssl: error: <what, where, and what to do>

and exit with 2. Anything else is a bug and keeps its traceback. `--debug` (anywhere on the command line) or
`NEST_SSL_DEBUG=1` adds the traceback to user errors too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from typing import Callable, Sequence

from nest_ssl.errors import UserError, describe_os_error

PREFIX = "nest-ssl: error: "
DEBUG_FLAG = "--debug"
DEBUG_ENV = "NEST_SSL_DEBUG"
USER_ERROR_EXIT = 2

# OSErrors that describe the user's files or machine rather than a bug of ours.
_ENVIRONMENT_ERRNOS = {
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
    errno.ENAMETOOLONG, errno.ELOOP, errno.EIO, errno.EEXIST, errno.ENOTEMPTY, errno.EXDEV,
}


def debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def split_debug_flag(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """(whether --debug was given, argv without it); a literal `--` ends the options as usual."""
    out: list[str] = []
    debug = False
    for i, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg == DEBUG_FLAG:
            debug = True
        else:
            out.append(arg)
    return debug, out


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def user_message(err: BaseException) -> str | None:
    """The one-line message for a user error, or None for an exception that is a bug (keeps its traceback)."""
    if isinstance(err, UserError):
        return one_line(str(err))
    if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS:
        where = err.filename if err.filename is not None else None
        what = describe_os_error(err)
        if err.filename2 is not None:
            where = f"{err.filename} -> {err.filename2}"
        fix = {
            errno.ENOSPC: "; free space or point the output elsewhere",
            errno.EDQUOT: "; free space or point the output elsewhere",
            errno.EACCES: "; check the file's permissions",
            errno.EPERM: "; check the file's permissions",
            errno.EROFS: "; write somewhere else",
        }.get(err.errno, "")
        return one_line(f"{where}: {what}{fix}" if where else f"{what}{fix}")
    return None


def report(err: BaseException, debug: bool) -> int | None:
    """Prints a user error (with the traceback when debugging) and returns the exit code; None for a bug."""
    msg = user_message(err)
    if msg is None:
        return None
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    # One write with its newline: the ranks of a torchrun share one stderr, and print's separate write of "\n"
    # let another rank's line land in the middle.
    sys.stderr.write(PREFIX + msg + "\n")
    sys.stderr.flush()
    return USER_ERROR_EXIT


@contextlib.contextmanager
def as_user_errors(*types: type[Exception]):
    """Re-raises an exception of `types` as a UserError with the same message: for library functions that report the
    user's mistakes as ValueError or FileNotFoundError("message"). An OSError with an errno (from the OS itself) is
    left to the guard, which words it from the errno."""
    try:
        yield
    except types as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise
        raise UserError(str(err)) from err


def run_guarded(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs main(argv) (argv without --debug; default sys.argv[1:]) and turns user errors into exit code 2."""
    debug, args = split_debug_flag(sys.argv[1:] if argv is None else list(argv))
    debug = debug or debug_from_env()
    try:
        return int(main(args) or 0)
    except (UserError, OSError) as err:
        code = report(err, debug)
        if code is None:
            raise
        return code
