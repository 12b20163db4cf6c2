"""Will a run write a checkpoint before it ends? `schedule_problem(settings, ...)` answers from the config alone.

The checkpoint callback (exp_manager.checkpoint_callback_params, Lightning's ModelCheckpoint semantics) writes
`last` (and the top-k files, ranked by the last known `monitor` value) on three triggers:

* every `every_n_train_steps` optimizer steps, whether or not a validation ran;
* after a validation, in epochs where `(epoch + 1) % every_n_epochs == 0` (the default: every validation);
* at the end of such an epoch when `save_on_train_epoch_end` is set.

Validation runs every `trainer.val_check_interval` training batches: of the current epoch while
`check_val_every_n_epoch` is set (and only in every n-th epoch), of the whole run when it is null; a float (1.0)
validates at the end of each epoch. So a run whose epochs are shorter than `val_check_interval` batches per process
never validates and, with validation-based checkpointing only, never checkpoints until it ends: days of training lost
to a crash, and no val_loss and no best checkpoint at all. That is refused before anything starts.

A trigger counts as firing when its first occasion is within the run (at its last step included: a tiny test run
validating once at its end is fine). The verdict errs towards running: a trigger whose timing depends on what is not
known up front counts as firing. The epoch length is asked for (`epoch_batches`) only when the verdict hinges on it
and only up to the number of batches that decides it; the caller counts it for map-style manifests and answers None
where it cannot know (Lhotse Shar / iterable input, whose epochs the trainer checks when the first one ends).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from nest_ssl.train.trainer_config import RunSettings

CKPT = "exp_manager.checkpoint_callback_params"
FIX_STEPS = f"set {CKPT}.every_n_train_steps=N to write the last checkpoint every N optimizer steps (e.g. 1000)"

# cap -> the number of batches one process gets in an epoch when that is below cap; None when it is cap or more, or
# cannot be known without reading the data in full
EpochBatches = Callable[[int], Optional[int]]


def _run_batches(settings: RunSettings) -> float:
    """Training batches of the whole run as bounded by max_steps (inf: no bound)."""
    t = settings.trainer
    return math.inf if t.max_steps == -1 else t.max_steps * t.accumulate_grad_batches


def _max_epochs(settings: RunSettings) -> float:
    return math.inf if settings.trainer.max_epochs == -1 else settings.trainer.max_epochs


def _step_trigger_fires(settings: RunSettings) -> bool:
    n = settings.exp_manager.checkpoint.every_n_train_steps or 0
    return n > 0 and (settings.trainer.max_steps == -1 or n <= settings.trainer.max_steps)


def _validation_never_reason(settings: RunSettings, epoch_batches: EpochBatches | None) -> str | None:
    """Why no validation that writes a checkpoint happens within the run, or None if one may."""
    t = settings.trainer
    every = settings.exp_manager.checkpoint.every_n_epochs or 0
    vci = t.val_check_interval
    per_epoch = t.check_val_every_n_epoch
    # The first epoch that both validates and checkpoints afterwards.
    first_epoch = math.lcm(per_epoch or 1, every)
    if first_epoch > _max_epochs(settings):
        return (f"trainer.max_epochs={t.max_epochs} ends the run before epoch {first_epoch}, the first whose validation "
                f"is followed by a checkpoint (trainer.check_val_every_n_epoch={per_epoch}, {CKPT}.every_n_epochs="
                f"{every}); raise trainer.max_epochs")
    if isinstance(vci, float):
        return None  # at the end of that epoch: its length decides whether max_steps comes first (not known here)
    if vci > _run_batches(settings):
        acc = t.accumulate_grad_batches
        batches = f" ({t.max_steps * acc} batches with accumulate_grad_batches={acc})" if acc > 1 else ""
        return (f"trainer.val_check_interval={vci} training batches is more than trainer.max_steps={t.max_steps}"
                f"{batches}, so validation never runs; lower trainer.val_check_interval")
    limit = t.limit_train_batches if isinstance(t.limit_train_batches, int) else None
    if per_epoch is not None:
        if limit is not None and limit < vci:
            return (f"trainer.val_check_interval={vci} counts the batches of one epoch (trainer.check_val_every_n_epoch"
                    f"={per_epoch}) and trainer.limit_train_batches={limit} ends every epoch before that, so validation "
                    "never runs; set trainer.check_val_every_n_epoch=null to count batches across epochs")
        n = epoch_batches(vci) if epoch_batches is not None else None
        if n is not None and n < vci:
            return (f"trainer.val_check_interval={vci} counts the batches of one epoch (trainer.check_val_every_n_epoch"
                    f"={per_epoch}) and an epoch of model.train_ds has only {n} batch(es) per process, so validation "
                    "never runs; set trainer.check_val_every_n_epoch=null to count batches across epochs")
        return None
    # Counted across epochs: the run's batches are also bounded by max_epochs x the epoch length.
    epochs = _max_epochs(settings)
    if math.isinf(epochs):
        return None
    per = limit
    if epoch_batches is not None:
        counted = epoch_batches(math.ceil(vci / epochs))
        if counted is not None:
            per = counted if per is None else min(per, counted)
    if per is not None and per * epochs < vci:
        return (f"trainer.val_check_interval={vci} batches is more than the run has: trainer.max_epochs={t.max_epochs} "
                f"epoch(s) of {per} batch(es) per process, so validation never runs; lower "
                "trainer.val_check_interval or raise trainer.max_epochs")
    return None


def schedule_problem(settings: RunSettings, *, has_validation: bool,
                     epoch_batches: EpochBatches | None = None) -> str | None:
    """None when some checkpoint trigger fires within the run (or none is asked for: create_checkpoint_callback
    false); otherwise one line naming the keys and what to set."""
    e = settings.exp_manager
    if not e.create_checkpoint_callback or _step_trigger_fires(settings):
        return None
    c = e.checkpoint
    every = c.every_n_epochs or 0
    steps = c.every_n_train_steps or 0
    t = settings.trainer
    if steps > 0:
        why_steps = f"{CKPT}.every_n_train_steps={steps} is more than trainer.max_steps={t.max_steps}"
    else:
        why_steps = f"{CKPT}.every_n_train_steps is not set"
    if every == 0:
        why = f"{CKPT}.every_n_epochs={c.every_n_epochs} turns off the checkpoints after validation and epochs"
    elif c.save_on_train_epoch_end:
        if every <= _max_epochs(settings):
            return None  # at the end of epoch `every`, if max_steps does not come first (not known here)
        why = (f"{CKPT}.save_on_train_epoch_end writes at the end of every {every}-th epoch and trainer.max_epochs="
               f"{t.max_epochs} ends the run before that")
    elif not has_validation:
        why = (f"checkpoints are written after validation ({CKPT}.every_n_epochs={every}) and this run has none "
               "(model.validation_ds.manifest_filepath is not set or trainer.limit_val_batches=0)")
    else:
        reason = _validation_never_reason(settings, epoch_batches)
        if reason is None:
            return None
        why = f"checkpoints are written after validation ({CKPT}.every_n_epochs={every}) and {reason}"
    return f"this run would write no checkpoint before it ends: {why_steps}, {why}; or {FIX_STEPS}"


# ----------------------------------------------------------------------------------------------------------------
# At the end of an epoch: what the preflight could not know (iterable input)


def epoch_too_short_to_validate(settings: RunSettings, batches: int) -> bool:
    """An epoch of `batches` training batches ended before a per-epoch val_check_interval: no epoch this long ever
    validates (the trainer warns once)."""
    t = settings.trainer
    vci = t.val_check_interval
    return isinstance(vci, int) and t.check_val_every_n_epoch is not None and batches < vci


def save_at_short_epoch_end(settings: RunSettings, batches: int) -> bool:
    """Whether the trainer writes the last checkpoint at the end of this epoch because nothing else would: the
    epoch was too short to validate and no every_n_train_steps is set, so without it the run (whose epoch length
    was not known up front) would have no checkpoint before its end."""
    e = settings.exp_manager
    return (e.create_checkpoint_callback and not (e.checkpoint.every_n_train_steps or 0) > 0
            and epoch_too_short_to_validate(settings, batches))
