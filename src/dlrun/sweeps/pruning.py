"""Pruning sweep trials: dlrun's median rule (the `prune` node of the config).

In a sweep (`dlrun -m ... prune.enabled=true`), after every evaluated epoch a trial compares its
best selected error so far (validation, else test; the loss for autoencoders and RBMs) with the
values the sweep's *finished* trials had at the same epoch. If it is worse than their median,
the trial stops there: it is pruned. This is Optuna's MedianPruner rule (a trial's best
intermediate value against the median of completed trials at the same step), computed by dlrun
itself from the run directories of the sweep, so it works with every launcher (basic,
joblib, submitit) and sweeper (basic grid, Optuna), where the Hydra Optuna sweeper has no
pruning of its own.

A pruned trial is a complete run directory: its metrics, parameters and checkpoints up to the
epoch it stopped at, and `summary.json` `pruned` (epoch, its value, the median, how many
finished trials it was compared with). `dlrun-report` marks it `pruned@<epoch>`. The verdict is
part of the checkpointed progress, so a resumed sweep does not train a pruned trial again.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dlrun.runs import layout
from dlrun.config.registry import require


@dataclass(frozen=True)
class PruneConfig:
    """The `prune` node of the config (see conf/config.yaml)."""

    enabled: bool = False
    warmup_epochs: int = 1
    min_trials: int = 2

    def __post_init__(self):
        require(self.warmup_epochs >= 1, f"warmup_epochs must be >= 1 (got {self.warmup_epochs})")
        require(self.min_trials >= 1, f"min_trials must be >= 1 (got {self.min_trials})")


def verdict(own: Sequence[tuple[int, float]], peers: Sequence[dict], epoch: int,
            cfg: PruneConfig) -> Optional[dict]:
    """Prune now? `own`: (epoch, value) of this trial's evaluated epochs so far; `peers`: for
    each finished trial, {epoch: value}. Returns the verdict (a dict for summary.json) or None.
    Lower values are better."""
    if epoch < cfg.warmup_epochs or not own or own[-1][0] != epoch:
        return None
    values = [p[epoch] for p in peers if epoch in p and math.isfinite(p[epoch])]
    if len(values) < cfg.min_trials:
        return None
    finite = [v for _, v in own if math.isfinite(v)]
    best = min(finite) if finite else math.inf  # a diverged trial (NaN) counts as worst
    median = float(np.median(values))
    if best <= median:
        return None
    return {"epoch": epoch, "value": best, "median": median, "trials": len(values)}


def finished_trials(sweep_dir: Path, own_dir: Path, key: str) -> list[dict]:
    """{epoch: value of `key`} of every finished, unpruned trial of the sweep in `sweep_dir`
    (its job directories, resumed jobs' links included) other than `own_dir`."""
    own = own_dir.resolve()
    trials = []
    for job in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else []:
        if not job.is_dir() or job.resolve() == own:
            continue
        try:
            summary = json.loads((job / layout.SUMMARY).read_text())
            if summary.get("pruned"):
                continue
            records = [json.loads(line) for line in (job / layout.METRICS).read_text().splitlines()]
        except (OSError, ValueError):
            continue  # running, failed or foreign: not a finished trial
        trials.append({r["epoch"]: r[key] for r in records
                       if isinstance(r.get(key), (int, float))})
    return trials
