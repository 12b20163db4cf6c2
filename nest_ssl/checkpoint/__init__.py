"""Checkpoints: our .ckpt format (nest_ssl.checkpoint.format), .nemo archives (.nemo), which files a run keeps
(.manager), which one it resumes from (.resume) and a model from any of them (.model).

A low package: it imports only nest_ssl.errors and nest_ssl.config (and nest_ssl.models inside the functions that
build a model), so that training, export and evaluation all use it without importing each other.
"""

from nest_ssl.checkpoint.format import (
    FORMAT_VERSION,
    LIGHTNING_VERSION,
    PREV_SUFFIX,
    TMP_PREFIX,
    CheckpointError,
    CorruptCheckpointError,
    PickledCheckpointError,
    atomic_write,
    check_checkpoint_file,
    digest,
    is_resumable,
    load_checkpoint,
    save_checkpoint,
)
from nest_ssl.checkpoint.manager import CheckpointManager, format_checkpoint_name
from nest_ssl.checkpoint.nemo import load_checkpoint_any, read_nemo, write_nemo
from nest_ssl.checkpoint.resume import Found, cleanup_temporaries, find_resume_checkpoint, resume_candidates

__all__ = [
    "FORMAT_VERSION", "LIGHTNING_VERSION", "PREV_SUFFIX", "TMP_PREFIX", "CheckpointError", "CorruptCheckpointError",
    "PickledCheckpointError", "atomic_write", "check_checkpoint_file", "digest", "is_resumable", "load_checkpoint",
    "save_checkpoint", "CheckpointManager", "format_checkpoint_name", "load_checkpoint_any", "read_nemo",
    "write_nemo", "Found", "cleanup_temporaries", "find_resume_checkpoint", "resume_candidates",
]
