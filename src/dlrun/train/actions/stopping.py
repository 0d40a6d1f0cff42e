"""Ending a run early: pruning a sweep trial (Pruning), early stopping (EarlyStopping), and a
stop signal (StopSignal), each setting the Loop's `progress.stopped_early` or `stopping`."""
import logging
from pathlib import Path

from dlrun.runtime import distributed
from dlrun.sweeps import pruning
from dlrun.train.actions import Loop, evaluated

log = logging.getLogger("dlrun")


class Pruning:
    """prune.enabled=true in a sweep: dlrun's median rule against the sweep's finished trials."""

    def __init__(self, peers_dir: Path):
        self.peers_dir = peers_dir

    def __call__(self, loop: Loop) -> None:
        progress, select = loop.progress, loop.select
        if loop.setup.prune is None or progress.stopped_early is not None:
            return
        own = [(e, v) for e, _, v in evaluated(progress.history[0], select)]
        found = pruning.verdict(own, pruning.finished_trials(self.peers_dir, loop.run_dir, select),
                                loop.epoch, loop.setup.prune)
        if found is not None:
            progress.stopped_early, progress.pruned = loop.epoch, found
            log.info("pruned after epoch %d: best %s so far %.4g is worse than the median "
                     "%.4g of %d finished trial(s) at this epoch", loop.epoch, select,
                     found["value"], found["median"], found["trials"])


class EarlyStopping:
    """The early_stopping node's rule, on every copy's history; all copies must agree."""

    def __init__(self, method: str):
        self.method = method  # the option's name, for the log line

    def __call__(self, loop: Loop) -> None:
        stopper, progress = loop.setup.stopper, loop.progress
        if stopper is None or progress.stopped_early is not None:
            return
        if all(stopper(evaluated(h, loop.select)) for h in progress.history):
            progress.stopped_early = loop.epoch
            log.info("early stopping (%s) after epoch %d; restoring the parameters of the best "
                     "epoch", self.method, loop.epoch)


class StopSignal:
    """Reads the stop request (SIGINT/SIGTERM) once per epoch, the same on every process; a
    later signal waits for the next step."""

    def __call__(self, loop: Loop) -> None:
        loop.stopping = distributed.agreed(loop.stop.requested)
