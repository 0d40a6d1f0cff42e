"""What a run writes into its directory: metrics.jsonl, params.pkl, best_params.pkl, summary.json.

Parameter files are pickles of a plain nested dict of numpy arrays, so they load with plain
`pickle` and numpy, without dlrun. Every file is written atomically (dlrun.runs.atomic), metrics.jsonl
included: each epoch rewrites it whole (a few hundred bytes per epoch), so a reader or a killed
run never leaves a partial line.
"""
import json
import math
import os
from pathlib import Path

import numpy as np

from dlrun.runs import layout
from dlrun.runs import ownership
from dlrun.runs.atomic import atomic_write_json, atomic_write_pickle, atomic_write_text


def to_numpy_tree(tree):
    """Nested dict of arrays -> nested dict of numpy arrays (plain dicts, no Flax types)."""
    if hasattr(tree, "items"):  # dict or any mapping (e.g. Flax's FrozenDict)
        return {str(k): to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/Infinity: a diverged loss is written as null
    return value


class RunWriter:
    def __init__(self, workdir: str | os.PathLike):
        self.dir = ownership.mkdirs(workdir)
        self.metrics_path = self.dir / layout.METRICS
        self.lines: list[str] = []

    def append_metrics(self, record: dict) -> None:
        self.lines.append(json.dumps(jsonable(record), sort_keys=True) + "\n")
        atomic_write_text(self.metrics_path, "".join(self.lines))

    def set_metrics(self, records: list[dict]) -> None:
        """Rewrite metrics.jsonl as exactly `records` (a resumed run: its checkpoint's)."""
        self.lines = [json.dumps(jsonable(r), sort_keys=True) + "\n" for r in records]
        atomic_write_text(self.metrics_path, "".join(self.lines))

    def save_params(self, name: str, params) -> Path:
        return atomic_write_pickle(self.dir / name, to_numpy_tree(params))

    def save_summary(self, summary: dict) -> Path:
        return atomic_write_json(self.dir / layout.SUMMARY, jsonable(summary))
