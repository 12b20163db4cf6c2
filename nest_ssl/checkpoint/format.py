"""Checkpoint files: Lightning-style dicts, written atomically and verified on load.

A checkpoint is what Lightning writes (`epoch`, `global_step`, `state_dict` with NeMo's key names,
`optimizer_states`, `lr_schedulers`, `callbacks`, `hyper_parameters`) plus a `nest_ssl` section with what exact
resume needs (sampler state, every RNG state, batch counters, the resolved config) and a digest of the whole
content. torch.load notices a truncated file but not flipped bytes inside one, so the digest is how a corrupt
checkpoint is told apart from a good one.

Writing: the bytes go to a hidden temporary file in the same folder, are fsync'ed, and replace the target with
os.replace, so a reader sees either the old file or the new one, never half of one. Which files a run keeps is
nest_ssl.checkpoint.manager; which one a run resumes from is nest_ssl.checkpoint.resume.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

from nest_ssl.errors import UserError, check_readable_file, describe_os_error

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LIGHTNING_VERSION = "2.4.0"  # the Lightning checkpoint layout these dicts follow
PREV_SUFFIX = ".prev"
TMP_PREFIX = ".tmp-"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used: the message says why (unreadable, a folder, foreign, damaged)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint that cannot be read, or whose content does not match its digest."""


class PickledCheckpointError(CorruptCheckpointError):
    """A checkpoint holding pickled Python objects (NeMo's own Lightning checkpoints), which weights-only loading
    refuses; `nest_ssl.checkpoint.nemo.load_checkpoint_any` falls back to a full unpickling for those."""


# ----------------------------------------------------------------------------------------------------------------
# Digest


def _feed(h: Any, obj: Any) -> Any:
    """Feeds a canonical traversal of a checkpoint to a running CRC (type tags, keys in order, tensor bytes)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        h = zlib.crc32(f"T{t.dtype}{tuple(obj.shape)}".encode(), h)
        if t.numel():
            h = zlib.crc32(memoryview(t.view(torch.uint8).numpy()), h)
        return h
    if isinstance(obj, dict):
        h = zlib.crc32(f"D{len(obj)}".encode(), h)
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            h = zlib.crc32(f"K{k!r}".encode(), h)
            h = _feed(h, obj[k])
        return h
    if isinstance(obj, (list, tuple)):
        h = zlib.crc32(f"L{type(obj).__name__}{len(obj)}".encode(), h)
        for v in obj:
            h = _feed(h, v)
        return h
    return zlib.crc32(f"V{type(obj).__name__}:{obj!r}".encode(), h)


def digest(ckpt: dict) -> str:
    """CRC32 (hex) of everything in the checkpoint except the digest field itself."""
    nest = ckpt.get("nest_ssl", {})
    saved = nest.pop("digest", None) if isinstance(nest, dict) else None
    try:
        return f"{_feed(0, ckpt):08x}"
    finally:
        if saved is not None:
            nest["digest"] = saved


# ----------------------------------------------------------------------------------------------------------------
# Atomic write / verified read


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write_fn) -> Path:
    """Calls write_fn(tmp_path) and moves the finished, fsync'ed file over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give a file name to write (e.g. {path / 'model.ckpt'})")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path}: exists and is not a regular file; give another output file name")
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=str(path.parent))
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            # A failed write() names no file; name the one being written (a full disk reads "no space left ...").
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    fsync_dir(path.parent)
    return path


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Adds the digest and writes the checkpoint atomically."""
    ckpt.setdefault("nest_ssl", {})
    ckpt["nest_ssl"]["format_version"] = FORMAT_VERSION
    ckpt["nest_ssl"]["digest"] = digest(ckpt)
    return atomic_write(path, lambda tmp: torch_save(ckpt, tmp))


def torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through a Python file, so that a full disk raises OSError(ENOSPC) rather than torch's opaque
    "unexpected pos" RuntimeError. Python's buffered writer can swallow the failed write, in which case torch's zip
    writer only sees a short count: that RuntimeError on a file system with no room left is the full disk too."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as err:
        if "unexpected pos" in str(err) and _nearly_full(Path(path).parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise


def _nearly_full(folder: Path, room: int = 1 << 20) -> bool:
    """Less than `room` bytes left to an unprivileged writer in `folder`'s file system."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < room


def unreadable_error(path: Path, err: Exception) -> CheckpointError:
    """Says what is true about a file torch.load could not read: permission, damage, or not a checkpoint."""
    # torch reports a damaged zip as OSError(EINVAL): only access errors are about the file rather than its bytes
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.EIO, errno.ENOENT):
        return CheckpointError(f"{path}: cannot be read: {describe_os_error(err)}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head[:2] == b"PK" or head[:1] == b"\x80"):  # neither torch's zip format nor its legacy pickle format
        return CorruptCheckpointError(f"{path}: cannot be read: not a PyTorch checkpoint (it starts with {head!r}); "
                                      "give a .ckpt written by nest-ssl, NeMo or Lightning")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Unsupported global" in str(err):  # weights-only loading refusing a class: NeMo's pickled OmegaConf objects
        detail = next((line for line in lines if "Unsupported global" in line), lines[0])[:200]
        return PickledCheckpointError(f"{path}: cannot be read with weights_only=True (it holds pickled Python "
                                      f"objects: {detail})")
    text = lines[0][:200] if lines else type(err).__name__
    return CorruptCheckpointError(f"{path}: cannot be read: the file is damaged or truncated "
                                  f"({type(err).__name__}: {text}); use another checkpoint or copy it again")


def check_checkpoint_file(path: str | Path, what: str = "checkpoint") -> Path:
    """`path` if it names an existing, readable file; otherwise a CheckpointError saying which of those it is not."""
    p = check_readable_file(path, what, CheckpointError)
    if p.stat().st_size == 0:
        raise CheckpointError(f"{what}={p}: is empty (0 bytes; an interrupted copy?); use another checkpoint")
    return p


def _torch_load(path: Path, map_location: Any, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)
        except FileNotFoundError:
            raise
        except Exception:
            # files in torch's legacy (non-zip) format and file systems that cannot map files: a plain read works,
            # or says what is wrong with the file
            pass
    return torch.load(str(path), map_location=map_location, weights_only=True)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", verify: bool = True, mmap: bool = True) -> dict:
    """Reads a checkpoint; raises CorruptCheckpointError when it is unreadable or fails its digest.

    With `mmap` (the default) the CPU tensors are mapped from the file rather than read into memory the process
    owns: what is read lives in the page cache, once per machine however many ranks map the same file, and is
    dropped when the tensors are. The mapping is private (a write to such a tensor copies the page) and stays
    valid when the file is replaced or removed, as the checkpoint writer does (atomic replace, no write in place).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        ckpt = _torch_load(path, map_location, mmap)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise unreadable_error(path, err) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        held = f"a dict with keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CorruptCheckpointError(f"{path}: not a model checkpoint (a torch file holding {held}, no state_dict); "
                                     "give a .ckpt written by nest-ssl, NeMo or Lightning")
    if verify:
        saved = ckpt.get("nest_ssl", {}).get("digest")
        if saved is None:
            log.warning("%s has no nest-ssl digest (written by another tool?); its content is not verified", path)
        else:
            actual = digest(ckpt)
            if actual != saved:
                raise CorruptCheckpointError(f"{path}: content does not match its digest ({actual} != {saved})")
    return ckpt


def is_resumable(ckpt: dict) -> bool:
    """A full training checkpoint (not a weights-only one) that nest-ssl wrote."""
    return bool(ckpt.get("optimizer_states")) and "nest_ssl" in ckpt and "loop" in ckpt["nest_ssl"]
