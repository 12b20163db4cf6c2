"""nest-ssl: NEST self-supervised pretraining of speech encoders, Lhotse-first and NeMo-compatible."""

__version__ = "0.1.0"
