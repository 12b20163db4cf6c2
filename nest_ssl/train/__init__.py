"""nest_ssl.train."""
