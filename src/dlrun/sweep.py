"""The sweep summary: after `dlrun -m ...`, one table of every job's final metrics.

`write_sweep_summary(sweep_dir)` reads each job directory's summary.json and the overrides Hydra
recorded for it (.hydra/overrides.yaml) and writes summary.csv and summary.md into the sweep
directory, sorted by the final validation (else test) error. Jobs without a summary.json (still
running, failed) are listed with status `incomplete`. `SweepSummary` is the Hydra callback that
calls it at the end of every multirun (registered in conf/config.yaml).
"""
import csv
import io
import json
import logging
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dlrun.io import atomic_write_text

log = logging.getLogger("dlrun")
STARTED_SWEEPS: set[Path] = set()  # sweep dirs this process started (the CLI removes empty ones)
COLUMNS = ("job", "overrides", "status", "epochs", "train_error", "val_error", "test_error",
           "best_epoch", "best_val_error", "best_test_error", "train_seconds")


def job_row(job_dir: Path) -> dict:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    row = {"job": job_dir.name, "overrides": " ".join(overrides or []), "status": "incomplete"}
    summary_file, metrics_file = job_dir / "summary.json", job_dir / "metrics.jsonl"
    if not summary_file.exists() and metrics_file.exists():  # still running, or crashed
        lines = metrics_file.read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        row.update(epochs=last.get("epoch"), train_error=last.get("train_error"),
                   val_error=last.get("val_error"), test_error=last.get("test_error"))
    if summary_file.exists():
        s = json.loads(summary_file.read_text())
        final, best = s["final"], s.get("best") or {}
        row.update(status="done", epochs=s["epochs"], train_error=final.get("train_error"),
                   val_error=final.get("val_error"), test_error=final.get("test_error"),
                   best_epoch=best.get("epoch"), best_val_error=best.get("val_error"),
                   best_test_error=best.get("test_error"),
                   train_seconds=s["timings"]["train_seconds"])
    return row


def sort_key(row: dict):
    metric = row.get("val_error")
    metric = row.get("test_error") if metric is None else metric
    return (row["status"] != "done", metric if metric is not None else float("inf"))


def write_sweep_summary(sweep_dir: str | Path) -> list[dict]:
    """Write summary.csv and summary.md into `sweep_dir` (one row per job dir); return the rows.

    Works on any sweep directory, also one still running or crashed: jobs without a
    summary.json are marked `incomplete`, with their last recorded epoch's errors.
    """
    sweep_dir = Path(sweep_dir)
    jobs = sorted((d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()),
                  key=lambda d: int(d.name) if d.name.isdigit() else d.name)
    rows = sorted((job_row(d) for d in jobs), key=sort_key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    atomic_write_text(sweep_dir / "summary.md", markdown_table(rows))
    return rows


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback: note each sweep's directory when it starts, write its summary at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        STARTED_SWEEPS.add(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if any(sweep_dir.glob("*/summary.json")):  # else the CLI removes the failed sweep
            rows = write_sweep_summary(sweep_dir)
            done = sum(r["status"] == "done" for r in rows)
            log.info("sweep summary (%d of %d job(s) done): %s", done, len(rows),
                     (sweep_dir / "summary.md").resolve())
