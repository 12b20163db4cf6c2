"""The ASR package's user error: one line naming the file (and line) or option, and what to do."""

from nest_ssl.errors import UserError


class ASRError(UserError, ValueError):
    """A problem with an ASR input the user can fix: a transcript, a tokenizer folder, a model, a test set."""
