"""nest_ssl.models."""
