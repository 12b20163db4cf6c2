"""Models: NESTModel (NeMo's EncDecDenoiseMaskedTokenPredModel)."""

from nest_ssl.models.nest import NESTModel, StepOutput

__all__ = ["NESTModel", "StepOutput"]
