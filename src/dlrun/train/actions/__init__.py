"""The loop's periodic actions: everything the training loop does besides training.

Each action is a callable `action(loop)` run after every epoch, in the order the loop lists
them (dlrun.train.loop.epoch_actions); it reads the `Loop` and may change it (a record's
fields, the best epoch, `progress.stopped_early`, `stopping`). Each decides for itself whether
it is due (evaluation every train.eval_every epochs, a checkpoint every checkpoint.every_epochs
or every_minutes, ...). One module per action, one test each (tests/test_actions.py).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from dlrun.runs.checkpoints import Progress
from dlrun.runtime.signals import StopRequest
from dlrun.train.setup import Setup


@dataclass
class Loop:
    """The training loop's state, as its actions see it."""

    setup: Setup
    config: dict  # the resolved config (run.json's)
    run_dir: Path
    splits: dict  # name -> dlrun.data.splits.Split
    progress: Progress  # epochs done, history, best records, early stop (dlrun.runs.checkpoints)
    state: Any  # dlrun.train.state.TrainState (a leading copy axis with num_seeds > 1)
    best_params: Any  # host numpy tree of the best epoch's parameters, per copy
    train_key: Any
    stop: StopRequest
    select: str  # the record key that picks the best epoch (val_error, else test_error, ...)
    epoch: int = 0
    records: list = field(default_factory=list)  # this epoch's, one per copy
    stopping: bool = False  # a stop was requested (the same answer on every process)

    @property
    def ends(self) -> bool:
        """The last epoch: train.epochs reached, or stopped early (early stopping, pruning)."""
        return self.epoch == self.setup.train.epochs or self.progress.stopped_early is not None


Action = Callable[[Loop], None]


def evaluated(history: list[dict], select: str) -> list[tuple[int, int, float]]:
    """(epoch, step, value) of each record of `history` that has the selected metric."""
    return [(r["epoch"], r["step"], r[select]) for r in history if r.get(select) is not None]


__all__ = ["Action", "Loop", "evaluated", "Optional"]
