"""Exit statuses of a training run that a job script acts on.

EXIT_RESUMABLE: the run stopped before its end on purpose (preempted by SIGTERM, or trainer.max_time_per_run
reached) after checkpointing; running the same command again continues it. 75 is sysexits.h's EX_TEMPFAIL
("try again later"), which no other failure of the trainer uses (user errors exit 2, a non-finite loss 3,
Ctrl-C 130). A SLURM job script requeues itself on it (egs/librilight/README.md).
"""

EXIT_RESUMABLE = 75

__all__ = ["EXIT_RESUMABLE"]
