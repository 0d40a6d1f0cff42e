"""The end of a sweep: after `dlrun -m ...`, the sweep report (dlrun.sweeps.report) of its jobs.

`SweepReport` is the Hydra callback (registered in conf/config.yaml) that notes each sweep's
directory when it starts and writes report.md, report.csv, runs.csv and report.png into it when
it ends; `dlrun-report PATH` writes the same at any time, also while a sweep runs or after it
crashed.
"""
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dlrun.runs import guard
from dlrun.errors import DlrunError
from dlrun.sweeps.report import write_report

log = logging.getLogger("dlrun")
STARTED_SWEEPS: set[Path] = set()  # sweep dirs this process started (the CLI removes empty ones)


class SweepReport(Callback):
    """Hydra callback: note each sweep's directory when it starts, write its report at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        STARTED_SWEEPS.add(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not guard.holds_runs(sweep_dir):  # no job started: the CLI removes the sweep
            return
        try:
            rows = write_report(sweep_dir)
        except (OSError, DlrunError) as exc:  # the runs themselves are complete and saved
            log.warning("warning: could not write the sweep report into %s: %s", sweep_dir, exc)
            return
        log.info("sweep report (%d configuration(s); best: %s): %s", len(rows), rows[0]["config"],
                 (sweep_dir / "report.md").resolve())
