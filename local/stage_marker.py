#!/usr/bin/env python3
"""Done markers for recipe stages (used by stage_begin/stage_end in local/common.sh).

A marker records what a stage was run with: its options, a fingerprint of each input and, once it finished,
a fingerprint of each output. A later run skips the stage only when all three still match, so a stage reruns
when its options or inputs changed, or when someone deleted or edited its outputs.

  stage_marker.py begin DONE_DIR N NAME [--opt K=V]... [--in PATH]... [--out PATH]... [--force WHY]
      exit 0 and print "run: <why>" (the stage must run; writes DONE_DIR/stageN.pending and removes the
      old marker, so a killed stage never looks finished), or exit 1 and print "skip: <why>".
  stage_marker.py end DONE_DIR N
      fingerprints the outputs named at begin and writes DONE_DIR/stageN.done (atomically).
  stage_marker.py check DONE_DIR N NAME [...same as begin...]
      begin's decision (exit 0 "run: ...", exit 1 "skip: ...") without writing anything: the other nodes of a
      multi-node stage read the marker that node 0 keeps (the nodes share the folder).

Fingerprints: a small file (<= 16 MiB) by its content, so rewriting identical bytes does not invalidate
later stages; a big file by size and mtime; a directory by the sizes and mtimes of every file beneath it
(contents would mean reading a whole corpus). Names starting with "." are left out of directory fingerprints:
that is where markers, part files and temporary files live.

Standard library only: it runs at every stage boundary and must start fast.
"""

import hashlib
import json
import os
import socket
import sys
import time

CONTENT_HASH_LIMIT = 16 * 1024 * 1024


def fingerprint(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    if os.path.isdir(path):
        h = hashlib.sha1()
        count = total = 0
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                full = os.path.join(root, name)
                try:
                    s = os.stat(full)
                except FileNotFoundError:
                    continue
                rel = os.path.relpath(full, path)
                h.update(f"{rel}\0{s.st_size}\0{s.st_mtime_ns}\n".encode())
                count += 1
                total += s.st_size
        return f"dir:{count}:{total}:{h.hexdigest()}"
    if st.st_size <= CONTENT_HASH_LIMIT:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"sha1:{h.hexdigest()}"
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def _parse(args):
    opts, ins, outs, force = {}, [], [], None
    it = iter(args)
    for a in it:
        if a == "--opt":
            k, sep, v = next(it).partition("=")
            if not sep:
                raise SystemExit(f"stage_marker: --opt needs KEY=VALUE, got {k!r}")
            opts[k] = v
        elif a == "--in":
            ins.append(next(it))
        elif a == "--out":
            outs.append(next(it))
        elif a == "--force":
            force = next(it)
        else:
            raise SystemExit(f"stage_marker: unknown argument {a!r}")
    return opts, ins, outs, force


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _write_json(path, obj):
    tmp = f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"  # nodes of a multi-node run share the folder
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _why_stale(old, opts, ins_fp, outs):
    """Return None when the stage is up to date, else the first reason it is not."""
    if old is None:
        return "not done yet"
    for k in sorted(set(old.get("options", {})) | set(opts)):
        a, b = old.get("options", {}).get(k), opts.get(k)
        if a != b:
            return f"option {k} changed: {a!r} -> {b!r}"
    if set(old.get("inputs", {})) != set(ins_fp):
        return "the set of inputs changed"
    for p, fp in ins_fp.items():
        if old["inputs"][p] != fp:
            return f"input {p} changed"
    if set(old.get("outputs", {})) != set(outs):
        return "the set of outputs changed"
    for p in outs:
        now = fingerprint(p)
        if now == "missing":
            return f"output {p} is missing"
        if old["outputs"][p] != now:
            return f"output {p} changed since the stage finished"
    return None


def begin(done_dir, stage, name, rest, write=True) -> int:
    opts, ins, outs, force = _parse(rest)
    missing = [p for p in ins if not os.path.exists(p)]
    if missing:
        print(f"error: input {missing[0]} does not exist (run the stage that makes it first)")
        return 2
    ins_fp = {p: fingerprint(p) for p in ins}
    marker = os.path.join(done_dir, f"stage{stage}.done")
    pending = os.path.join(done_dir, f"stage{stage}.pending")
    old = _load(marker)
    interrupted = old is None and os.path.exists(pending)
    if force:
        why = force + ("; an earlier run did not finish; continuing it" if interrupted else "")
    else:
        why = _why_stale(old, opts, ins_fp, outs)
        if why is None:
            print(f"skip: up to date (finished {old.get('finished', '?')}; marker {marker})")
            return 1
        if interrupted:
            why = "an earlier run did not finish; continuing it"
    if not write:
        print(f"run: {why} (the marker is node 0's)")
        return 0
    os.makedirs(done_dir, exist_ok=True)
    if os.path.exists(marker):
        os.remove(marker)
    _write_json(pending, {"stage": stage, "name": name, "options": opts, "inputs": ins_fp, "outputs": outs,
                          "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"run: {why}")
    return 0


def end(done_dir, stage) -> int:
    marker = os.path.join(done_dir, f"stage{stage}.done")
    pending = os.path.join(done_dir, f"stage{stage}.pending")
    p = _load(pending)
    if p is None:
        print(f"error: {pending} not found: stage_end without stage_begin?")
        return 2
    outs = {}
    for path in p["outputs"]:
        fp = fingerprint(path)
        if fp == "missing":
            print(f"error: stage {stage} finished without writing {path}")
            return 2
        outs[path] = fp
    p["outputs"] = outs
    p["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_json(marker, p)
    os.remove(pending)
    return 0


def main(argv) -> int:
    if len(argv) >= 3 and argv[0] == "begin" and len(argv) >= 4:
        return begin(argv[1], argv[2], argv[3], argv[4:])
    if argv and argv[0] == "check" and len(argv) >= 4:
        return begin(argv[1], argv[2], argv[3], argv[4:], write=False)
    if len(argv) == 3 and argv[0] == "end":
        return end(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "fingerprint":
        print(fingerprint(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
