"""nest_ssl.train: the trainer (Lightning's trainer.* and NeMo's exp_manager.* keys), checkpoints, DDP.

`nest_ssl.train.run(cfg)` trains from a full config; see docs/training.md.
"""

# Imported eagerly: the function must win over the submodule of the same name as the package attribute.
from nest_ssl.train.run import RunResult, run  # noqa: E402

__all__ = ["RunResult", "run"]
