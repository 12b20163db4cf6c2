"""The ASR package's user error: one line naming the file (and line) or option, and what to do."""

from nest_ssl.errors import UserError


class ASRError(UserError, ValueError):
    """A problem with an ASR input the user can fix: a transcript, a tokenizer folder, a model, a test set."""


def import_asr_dependency(module: str):
    """`module` (sentencepiece, torchaudio's decoder or resampler), imported where it is needed: these come with
    the `asr` extra (`pip install 'nest-ssl[asr]'`; `make install` has them), so a plain install still trains."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ASRError(f"{module} cannot be imported ({err}); the ASR commands need the asr extra: "
                       "pip install 'nest-ssl[asr]'") from None
