"""Reliability tests: soak, faults under load, fuzzing, the TLS surface, fd exhaustion."""
