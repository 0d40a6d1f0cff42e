"""Checkpoints of the whole training state: after every checkpoint.every_epochs epochs, every
checkpoint.every_minutes (also mid-epoch with loop=step), when stopping and at the end."""
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from dlrun.errors import Interrupted
from dlrun.runs.checkpoints import Checkpoints
from dlrun.runtime import distributed
from dlrun.train.actions import Loop
from dlrun.train.step import epoch_acc, sums_to_array


class Checkpointing:
    def __init__(self, checkpoints: Checkpoints, started_at: float, elapsed_before: float):
        self.checkpoints = checkpoints
        self.started_at = started_at  # perf_counter at the start of this session of the run
        self.elapsed_before = elapsed_before  # seconds the run trained in earlier sessions
        self.last_save = time.monotonic()

    def time_due(self, loop: Loop) -> bool:
        minutes = loop.setup.checkpoint.every_minutes
        return minutes > 0 and time.monotonic() - self.last_save >= 60 * minutes

    def __call__(self, loop: Loop) -> None:
        every = loop.setup.checkpoint.every_epochs
        if (every and loop.epoch % every == 0) or self.time_due(loop) or loop.stopping or loop.ends:
            errors = [r.get(loop.select) for r in loop.records]
            self.save(loop, None, None if None in errors else float(np.mean(errors)))

    def save(self, loop: Loop, acc, error: Optional[float] = None) -> None:
        """Checkpoint the state, the partial epoch's sums (acc; None at an epoch end), the
        train key and the best parameters; process 0 writes (the others' state is the same)."""
        n, progress = loop.setup.copies, loop.progress
        step = int(np.asarray(loop.state.step).reshape(-1)[0])
        progress.elapsed_seconds = self.elapsed_before + time.perf_counter() - self.started_at
        tree = {"state": loop.state,
                "acc": sums_to_array(loop.setup, epoch_acc(loop.setup, n if n > 1 else None) if acc is None else acc),
                "rng": jax.random.key_data(loop.train_key), "best_params": loop.best_params}
        if distributed.is_primary():
            self.checkpoints.save(step, tree, progress.to_meta(loop.config, step), error)
        progress.elapsed_seconds = self.elapsed_before
        self.last_save = time.monotonic()


def interrupted(loop: Loop, epoch: int, done: int, hint_dir: Path) -> Interrupted:
    """The error that ends a stopped run: where it stopped and how to resume it."""
    stop = loop.stop
    where = (f"after epoch {epoch - 1}" if done == 0 else
             f"in epoch {epoch} after step {done} of {loop.setup.steps_per_epoch}")
    if not distributed.is_primary():  # (multi-process) process 0 wrote the checkpoint
        return Interrupted(f"dlrun: process {jax.process_index()} stopped with the others "
                           f"({stop.name or 'a signal to another process'}) {where}; process "
                           f"0 wrote the checkpoint", 128 + (stop.signum or 15))
    return Interrupted(f"dlrun: stopped by {stop.name} {where}; checkpoint and metrics "
                       f"written. Resume with: dlrun resume={hint_dir.resolve()}",
                       128 + (stop.signum or 0))
