"""nest_ssl.data."""
