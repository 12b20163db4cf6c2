"""nest_ssl.prepare."""
