"""SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send before a kill).

The first signal asks the training loop to stop at the next safe point: after the current step
(loop=step) or epoch (loop=scan, one compiled call), with a checkpoint and the metrics written;
the run then exits with 128 + the signal number. A second signal exits at once.

Python runs signal handlers only between bytecodes of the main thread, which may be inside a
long XLA call. So the signals are read from a wakeup pipe by a watcher thread instead: it sees
them at once, prints the notice, and for a second signal ends the process with os._exit
(every file dlrun writes is written atomically, so nothing half-written is left behind).
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """`requested` turns true at the first SIGINT/SIGTERM once `install`ed (a context manager
    that restores the previous handlers on exit)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict = {}
        self._wakeup_fd = -1
        self._pipe: tuple[int, int] | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only; nothing to install
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        for sig in SIGNALS:  # a Python-level handler is needed for the wakeup fd to be written
            self._previous[sig] = signal.signal(sig, lambda *_: None)
        self._wakeup_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(r,), name="dlrun-signals", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._wakeup_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._pipe[1])  # ends the watcher (EOF)
        self._pipe = None

    def _watch(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                os.close(fd)
                return
            for signum in data:
                if signum not in SIGNALS:
                    continue
                name = signal.Signals(signum).name
                if self.signum is None:
                    self.signum = signum
                    _say(f"\ndlrun: {name} received: stopping after the current step with a "
                         f"checkpoint; send it again (Ctrl-C) to quit at once\n")
                else:
                    _say(f"dlrun: second {name}: quitting at once; the run directory keeps its "
                         f"last complete checkpoint\n")
                    os._exit(128 + signum)


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass
