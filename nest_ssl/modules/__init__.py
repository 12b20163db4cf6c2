"""Neural modules of the NEST model, one concept per file, each with NeMo's constructor arguments.

Imports are lazy so that `import nest_ssl.modules` stays cheap and a module file can be read on its own.
"""

import importlib

_WHERE = {
    "AudioToMelSpectrogramPreprocessor": "preprocessor",
    "FilterbankFeatures": "preprocessor",
    "SpectrogramAugmentation": "preprocessor",
    "RandomProjectionVectorQuantizer": "quantizer",
    "RandomBlockMasking": "masking",
    "ConvSubsampling": "subsampling",
    "ConformerEncoder": "conformer",
    "ConformerLayer": "conformer",
    "RelPositionalEncoding": "conformer",
    "RelPositionMultiHeadAttention": "conformer",
    "MultiSoftmaxDecoder": "decoder",
    "MLMLoss": "loss",
    "MultiMLMLoss": "loss",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'nest_ssl.modules' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nest_ssl.modules.{_WHERE[name]}"), name)
