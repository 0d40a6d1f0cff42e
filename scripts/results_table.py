"""Print the README's results table from run directories (their summary.json and config).

Usage: .venv/bin/python scripts/results_table.py RUN_DIR [RUN_DIR ...]
Each row: preset, dataset, epochs, final and best test accuracy, train accuracy (eval mode),
steady seconds per epoch (training only), total wall seconds of the run.
"""
import json
import sys
from pathlib import Path

import yaml


def row(run_dir: Path) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")), "-")
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    final, best = s["final"], s["best"] or s["final"]
    acc = lambda err: f"{100 * (1 - err):.2f} %" if err is not None else "-"
    t = s["timings"]
    return (f"| {preset} | {cfg['dataset']['name']} | {s['epochs']} | {acc(final.get('test_error'))} | "
            f"{acc(best.get('test_error'))} (epoch {best['epoch']}) | {acc(final.get('train_eval_error'))} | "
            f"{t['steady_epoch_seconds']:.2f} | {t['total_seconds']:.0f} |")


if __name__ == "__main__":
    print("| preset | dataset | epochs | final test acc | test acc at best epoch | final train acc | "
          "train s / epoch | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for d in sys.argv[1:]:
        print(row(Path(d)))
