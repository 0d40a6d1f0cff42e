"""Writing each epoch's records: metrics.jsonl and the history (MetricsFile), the loggers and the
progress display (Trackers), the console line (Console), and the best epoch (BestEpoch)."""
import logging

from dlrun.runs import tracking
from dlrun.runs.console import format_record
from dlrun.runs.writer import RunWriter
from dlrun.train.actions import Loop
from dlrun.train.state import copy_of, saved_params, set_copy

log = logging.getLogger("dlrun")


class MetricsFile:
    """Appends each copy's record to its history and to its run directory's metrics.jsonl."""

    def __init__(self, writers: list[RunWriter]):
        self.writers = writers

    def __call__(self, loop: Loop) -> None:
        for i, record in enumerate(loop.records):
            loop.progress.history[i].append(record)
            self.writers[i].append_metrics(record)


class Trackers:
    """Sends each record to the selected loggers (logger=[...]) and the progress display."""

    def __init__(self, sinks: tracking.RunSinks):
        self.sinks = sinks

    def __call__(self, loop: Loop) -> None:
        for i, record in enumerate(loop.records):
            self.sinks.record(i, record)


class Console:
    """The per-epoch line (and a warning when steps were skipped under nan_policy=skip)."""

    def __call__(self, loop: Loop) -> None:
        seeds, epochs = loop.setup.seeds, loop.setup.train.epochs
        for i, record in enumerate(loop.records):
            log.info(("" if len(seeds) == 1 else f"[seed {seeds[i]}] ") + format_record(record, epochs))
            if record["nonfinite_steps"]:
                log.warning("warning: %d training steps had a non-finite loss or parameters and "
                            "were skipped (train.nan_policy=skip); try a lower optim.lr",
                            record["nonfinite_steps"])


class BestEpoch:
    """Keeps each copy's best record (lowest selected metric) and its parameters."""

    def __call__(self, loop: Loop) -> None:
        n, select = loop.setup.copies, loop.select
        for i, record in enumerate(loop.records):
            best = loop.progress.best[i]
            if record.get(select) is not None and (best is None or record[select] < best[select]):
                loop.progress.best[i] = record
                loop.best_params = set_copy(loop.best_params, i, n, copy_of(saved_params(loop.state), i, n))
