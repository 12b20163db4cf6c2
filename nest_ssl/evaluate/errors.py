"""The evaluator's user error: a checkpoint, a CutSet or an option that cannot be used for the tasks asked for."""

from __future__ import annotations

from nest_ssl.errors import UserError


class EvaluationError(UserError, ValueError):
    """One line naming the file (and cut/line) and what to do; `nest-ssl evaluate` prints it and exits 2."""
