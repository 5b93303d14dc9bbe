"""send stage."""
