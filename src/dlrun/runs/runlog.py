"""The run's log file (dlrun.log, Hydra's job_logging file handler) from the CLI's side:
held back while a job is checked (`HeldLogs`), taken off for processes that do not write the
run (`console_only`), and written to directly for the lines main() prints on stderr
(`log_to_file`: a stop line, a kept run's error line)."""
from __future__ import annotations

import logging


class HeldLogs(logging.Handler):
    """The run's log file handlers, taken off the root logger while the job is checked: the
    console shows every line at once; the files get them (in order, with their own times) once
    the job may write where it is (`let_through`; not named `release`, which is
    logging.Handler's lock), or never (`drop`: a refused job writes no log, and adds nothing
    to an earlier run's)."""

    def __init__(self):
        super().__init__()
        self.files = console_only()
        self.records: list[logging.LogRecord] = []
        logging.getLogger().addHandler(self)

    def paths(self) -> list[str]:
        return [h.baseFilename for h in self.files]

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def let_through(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        for handler in self.files:
            root.addHandler(handler)
            for record in self.records:
                if record.levelno >= handler.level:
                    handler.handle(record)
        self.files, self.records = [], []

    def drop(self) -> None:
        logging.getLogger().removeHandler(self)
        close_handlers(self.files)
        self.files, self.records = [], []


def console_only() -> list[logging.Handler]:
    """Stop writing this process's log lines into the run's dlrun.log (another process of a
    multi-process run: under submitit all of them share the run directory); returns the file
    handlers taken off, unclosed."""
    root = logging.getLogger()
    taken = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    for handler in taken:
        root.removeHandler(handler)
    return taken


def close_handlers(handlers: list[logging.Handler]) -> None:
    # a closed FileHandler reopens its file on the next record: they are off the logger first
    for handler in handlers:
        handler.close()


def log_to_file(message: str) -> None:
    """`message` into the run's log file only (the console gets it from main() on stderr)."""
    record = logging.LogRecord("dlrun", logging.WARNING, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
