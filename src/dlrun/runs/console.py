"""The live progress display of a training run (`progress: true`, rich.progress).

A transient bar on the terminal: steps done of the run's total, the last epoch's training loss,
examples per second and the time left. It appears only when stdout and stderr are both
terminals and the CI environment variable is unset (or empty), never with `progress=false`;
otherwise the run prints exactly what it printed without it, one plain line per epoch.

The display draws on stderr. While it is shown, the console's log handler writes through
rich (lines appear above the bar, which stays at the bottom); the log file's handler is never
touched, so <run dir>/dlrun.log gets plain lines only. With train.loop=step the bar advances
after every step (a host-side count: no device sync); with loop=scan, after every epoch.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional


def wanted(setting: bool) -> bool:
    """Whether to show the live display: progress=true, a terminal on stdout and stderr, no CI."""
    if not setting or os.environ.get("CI"):
        return False
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class NoDisplay:
    """progress off: every call does nothing."""

    def step(self, n: int = 1) -> None:
        pass

    def epoch_done(self, epoch: int, record: Optional[dict]) -> None:
        pass

    def close(self) -> None:
        pass


class Lines:
    """A text stream that prints each complete line above the live display, as it is (no
    markup, no highlighting, not re-wrapped)."""

    def __init__(self, console):
        self.console, self.buffer = console, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        if self.buffer:
            self.write("\n")


class Display(NoDisplay):
    """The rich display of one training run (see the module docstring)."""

    def __init__(self, epochs: int, steps_per_epoch: int, batch_size: int, epoch: int = 0,
                 step_in_epoch: int = 0):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                                   TextColumn, TimeRemainingColumn)
        from rich.text import Text

        class Examples(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                return Text("- ex/s" if speed is None else f"{speed * batch_size:,.0f} ex/s")

        self.steps, self.epochs = steps_per_epoch, epochs
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/" + str(epochs)), BarColumn(),
            MofNCompleteColumn(), TextColumn("steps  loss {task.fields[loss]}"), Examples(),
            TimeRemainingColumn(), TextColumn("left"),
            console=Console(file=sys.stderr), transient=True, speed_estimate_period=3600.0)
        self.task = self.progress.add_task(
            "train", total=epochs * steps_per_epoch,
            completed=epoch * steps_per_epoch + step_in_epoch, epoch=min(epoch + 1, epochs),
            loss="-")
        terminals = (sys.stdout, sys.stderr)
        self.progress.start()
        # the console's log handlers write above the display while it is shown (never the file's)
        self.swapped: list[tuple[logging.StreamHandler, object]] = []
        lines = Lines(self.progress.console)
        for handler in logging.getLogger().handlers + logging.getLogger("dlrun").handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                    handler, logging.FileHandler) and handler.stream in terminals:
                self.swapped.append((handler, handler.setStream(lines)))

    def step(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def epoch_done(self, epoch: int, record: Optional[dict]) -> None:
        loss = (record or {}).get("train_loss")
        self.progress.update(self.task, completed=epoch * self.steps,
                             epoch=min(epoch + 1, self.epochs),
                             loss="-" if loss is None else f"{loss:.4g}")
        self.progress.refresh()  # so that the epoch's line is followed by the new state

    def close(self) -> None:
        for handler, stream in self.swapped:
            handler.setStream(stream)
        self.swapped = []
        self.progress.stop()


def display(setting: bool, epochs: int, steps_per_epoch: int, batch_size: int, epoch: int = 0,
            step_in_epoch: int = 0) -> NoDisplay:
    """A started Display when `wanted(setting)`, else a NoDisplay; close() it in any case."""
    if not wanted(setting):
        return NoDisplay()
    return Display(epochs, steps_per_epoch, batch_size, epoch, step_in_epoch)
def format_record(r: dict, epochs: int) -> str:
    """The per-epoch console line; metrics.jsonl has the full record. Keys are
    <split>_<metric>; errors print as percentages ('err'), and a held-out split's loss is left
    out when it has an error rate."""
    parts = [f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}"]
    for split in ("train", "train_eval", "val", "test"):
        for metric in ("loss", "error", "mse", "pseudo_ll"):
            key = f"{split}_{metric}"
            if key not in r or (metric == "loss" and split != "train" and f"{split}_error" in r):
                continue
            parts.append(f"{split}_err {100 * r[key]:.2f}%" if metric == "error"
                         else f"{key} {r[key]:.4g}")
    parts += [f"lr {r['lr']:.3g}", f"train {r['epoch_seconds']:.2f}s",
              f"{r['examples_per_second']:,.0f} ex/s"]
    return "  ".join(parts)


def format_end(s: dict) -> str:
    """The closing console line: final and best results, and where the time went."""
    final, best, t = s["final"], s["best"], s["timings"]
    metric = s["best_selected_on"].split("_", 1)[1]  # error (classifiers) or loss
    test, label = f"test_{metric}", "test_err" if metric == "error" else f"test_{metric}"
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.2f}%" if metric == "error" else f"{v:.4g}"
    text = f"done: final {label} {fmt(final.get(test))}"
    if "copies" in s:
        text = (f"done: {len(s['copies'])} copies, final {label} mean {fmt(final.get(test))}"
                f" (std {fmt(s['final_std'].get(test))}); each in seed_<seed>/")
    if s.get("pruned"):
        text = text.replace("done:", f"done (pruned after epoch {s['pruned']['epoch']}):", 1)
    if best:
        text += (f", best {s['best_selected_on']} {fmt(best.get(s['best_selected_on']))} at epoch "
                 f"{best['epoch']} ({label} {fmt(best.get(test))})")
    return (text + f" | {t['total_seconds']:.1f}s total: compile {t['compile_seconds']:.1f}s, "
            f"train {t['train_seconds']:.1f}s, eval {t['eval_seconds']:.1f}s")
