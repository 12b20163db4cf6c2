"""The stop on a preemption signal: the last checkpoint first, the rest only while the deadline allows.

A launcher stops a job with a signal and kills it a grace period later (torchrun: SIGTERM, SIGKILL 30 s after;
SLURM: SIGTERM at the time limit, or SIGUSR1 with --signal, then SIGKILL after KillWait). Validating a large model
on a real validation set and writing top-k, last and .nemo can take longer than that, so when the ranks have agreed
to stop for a signal (the step's all-reduce, nest_ssl.train.signals), every rank, at the same step:

1. writes the last checkpoint, without validating (named by the previous validation's value; the top-k ranking
   does not change);
2. only while the time left before `nest_trainer.preemption.save_deadline_s` (counted from the signal on each
   rank) covers it: validates the step, cut short at the deadline less the time the remaining saves are expected
   to take (estimated from the first save, rank 0's), then writes the top-k file, the last checkpoint again (named
   by that validation) and the .nemo (always_save_nemo).

Each decision is taken by all ranks together (`all_ranks_have`), since the saves are collectives.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from nest_ssl.train.distributed import all_ranks_have, broadcast_object

if TYPE_CHECKING:
    from nest_ssl.train.trainer import Trainer

log = logging.getLogger("nest_ssl.train")

_NO_TIME = ("no time left before the deadline for %s (%.1f s left; the saves need about %.1f s): the last "
            "checkpoint is what the same command continues from")


def stop_for_preemption(tr: "Trainer") -> None:
    st, info, stops = tr.state, tr.info, tr.stop_requests
    budget = tr.s.nest_trainer.preemption.save_deadline_s
    deadline = stops.deadline(budget)
    started = time.monotonic()
    log.warning("%s: stopping at step %d; writing the last checkpoint first (%.1f s since the signal, "
                "nest_trainer.preemption.save_deadline_s=%g)", stops.signal_name or "a signal on another rank",
                st.global_step, started - stops.stop_time, budget)
    if st.last_saved_step != st.global_step:
        tr.save_last_checkpoint()
    # Rank 0's time for one save (every rank waits here for its write): what each remaining save should take.
    save_s = float(broadcast_object(info, time.monotonic() - started))
    reserve = save_s * (2 + int(tr.s.exp_manager.checkpoint.always_save_nemo))  # top-k, last again, .nemo
    log.info("last checkpoint of step %d written in %.2f s; %.1f s left before the deadline", st.global_step,
             save_s, deadline - time.monotonic())
    if tr.validation_enabled() and st.last_val_step != st.global_step:
        until = deadline - reserve
        if not all_ranks_have(info, time.monotonic() < until):
            log.warning(_NO_TIME, "validation, top-k and .nemo", deadline - time.monotonic(), reserve)
            return
        if not tr.run_validation(stale_if_none=True, until=until, stop_on_signal=False):
            log.warning("validation of step %d stopped at the deadline (less the saves' time): no top-k or .nemo; "
                        "the last checkpoint is what the same command continues from", st.global_step)
            return
    if not all_ranks_have(info, time.monotonic() + reserve <= deadline):
        log.warning(_NO_TIME, "top-k and .nemo", deadline - time.monotonic(), reserve)
        return
    tr.save_checkpoint(again=True)
    log.info("the stop saved everything %.1f s after the signal", time.monotonic() - stops.stop_time)
