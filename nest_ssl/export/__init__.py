"""nest_ssl.export."""
