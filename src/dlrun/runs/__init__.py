"""Run directories: their layout, atomic writes, checkpoints, logs, tracking and pictures."""
