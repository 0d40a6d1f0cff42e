"""Reading the runs under a path for the sweep report: each run's flattened config, status,
metrics history and summary, found from files alone (so it works on running and crashed sweeps)."""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dlrun.config.identity import flatten
from dlrun.runs import layout
from dlrun.runs.checkpoints import is_locked

# Keys that do not define a configuration: the seed (runs differing only in it are repeats),
# and settings that change how a run is kept or shown, not what it trains.
IGNORED = ("train.seed", "train.num_seeds", "train.lrs", "train.compile_cache", "checkpoint",
           "resume", "plots", "prune", "dist")


@dataclass
class SweepRun:
    dir: Path
    config: dict  # flattened resolved config
    status: str  # done | pruned@E | running | stopped
    history: list = field(default_factory=list)  # metrics.jsonl records
    summary: Optional[dict] = None

    @property
    def select(self) -> str:
        """The key its best epoch is selected on: val_error, test_error, val_loss, ..."""
        if self.summary and self.summary.get("best_selected_on"):
            return self.summary["best_selected_on"]
        keys = set().union(*self.history) if self.history else set()
        metric = "error" if any(k.endswith("_error") for k in keys) else "loss"
        return f"{'val' if f'val_{metric}' in keys else 'test'}_{metric}"

    @property
    def metric(self) -> str:
        return self.select.split("_", 1)[1]

    def value(self, which: str) -> Optional[float]:
        """final_val, best_val, final_test or best_test (best = at the epoch of the lowest
        selected value) of this run's metric, from its history."""
        when, split = which.split("_")
        records = [r for r in self.history if finite(r.get(self.select))]
        if not records:
            return None
        record = records[-1] if when == "final" else min(records, key=lambda r: r[self.select])
        if when == "final" and self.summary and self.summary.get("final"):
            record = self.summary["final"]  # early stopping: the restored epoch's
        value = record.get(f"{split}_{self.metric}")
        return float(value) if finite(value) else None


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED)


# ---- reading runs --------------------------------------------------------------------------
def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_history(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / layout.METRICS).read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def status_of(summary: Optional[dict], running: bool) -> str:
    if summary is not None:
        pruned = summary.get("pruned")
        return f"pruned@{pruned['epoch']}" if pruned else "done"
    return "running" if running else "stopped"


def read_run(run_dir: Path) -> list[SweepRun]:
    """The run in run_dir (with run.json), or its copies when it trained several."""
    info = read_json(run_dir / layout.RUN_INFO)
    if info is None or not isinstance(info.get("config"), dict):
        return []
    config = info["config"]
    running = is_locked(run_dir)
    train = config.get("train") or {}
    if int(train.get("num_seeds", 1) or 1) == 1:
        summary = read_json(run_dir / layout.SUMMARY)
        return [SweepRun(run_dir, flatten(config), status_of(summary, running), read_history(run_dir),
                    summary)]
    lrs = train.get("lrs") or []
    runs = []
    for seed, lr in layout.copies(int(train.get("seed", 0)), int(train["num_seeds"]),
                                  (config.get("optim") or {}).get("lr", 0.0), lrs):
        copy_dir = layout.copy_dir(run_dir, seed)
        flat = dict(flatten(config), **{"train.seed": seed, "train.num_seeds": 1, "train.lrs": []})
        if lrs:
            flat["optim.lr"] = lr
        summary = read_json(copy_dir / layout.SUMMARY)
        runs.append(SweepRun(copy_dir, flat, status_of(summary, running), read_history(copy_dir),
                        summary))
    return runs


def find_runs(root: Path) -> list[SweepRun]:
    """Every run under root, following the links a resumed sweep leaves to earlier runs; a run's
    own subdirectories (checkpoints, pretraining phases) are not searched."""
    runs, seen = [], set()

    def walk(path: Path) -> None:
        real = path.resolve()
        if real in seen:
            return
        seen.add(real)
        if (path / layout.RUN_INFO).is_file():
            runs.extend(read_run(path))
            return
        for child in sorted(path.iterdir(), key=job_order):
            if child.is_dir() and not child.name.startswith("."):
                walk(child)

    walk(root)
    return runs


def job_order(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


