#!/usr/bin/env python3
"""The lock-file fallback of recipe_lock (local/common.sh) where flock(1) is missing or the file system refuses
flock: nest_ssl/train/lock_file.py's ExclusiveLockFile on behalf of the recipe's shell (its PID is recorded, so the
lock is stale once the recipe is gone).

    lock_file.py acquire FILE --pid PID   # exit 0: taken; 3: busy (stdout: the holder); 4: cannot create it (stdout: why)
    lock_file.py release FILE --pid PID   # removes FILE if PID's lock is the one in it

Stdout of acquire on success: "took over: WHY" when a stale file of a run that is gone was taken over, else nothing.
Loaded from its file, not as nest_ssl.train.lock_file: the package nest_ssl.train imports torch, which a lock does
not need.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _lock_module():
    spec = importlib.util.spec_from_file_location("nest_ssl_lock_file", REPO / "nest_ssl" / "train" / "lock_file.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lock_file.py")
    ap.add_argument("command", choices=["acquire", "release"])
    ap.add_argument("file")
    ap.add_argument("--pid", type=int, required=True)
    args = ap.parse_args(argv)
    mod = _lock_module()
    if args.command == "release":
        holder = mod.Holder.parse(Path(args.file).read_text() if Path(args.file).exists() else "")
        if holder is not None and holder.pid == args.pid and holder.host == mod.this_process(args.pid).host:
            Path(args.file).unlink(missing_ok=True)
        return 0
    lock = mod.ExclusiveLockFile(args.file, pid=args.pid)
    try:
        lock.acquire()
    except mod.LockFileBusyError as err:
        print(err)
        return 3
    except Exception as err:  # noqa: BLE001 - one line for the recipe's message
        print(err)
        return 4
    if lock.took_over:
        print(f"took over: {lock.took_over}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
