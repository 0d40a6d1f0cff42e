"""Sweeps: the report, pruning, resume and the launch environment of parallel jobs."""
