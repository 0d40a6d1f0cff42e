"""Speedrun presets, measured as a user runs them: the whole `dlrun +experiment=NAME` command over
several seeds; mean test accuracy and the median wall time of the command (start to exit,
compilation, data loading and evaluation included).

Tuning is done on a validation split, never on the test split: `--tune` holds out the last
5,000 training images (dataset.val_size=5000) and reports the mean *validation* accuracy; the
preset's figure is then measured once without it (trained on all 60,000) on the test split.

Usage: python benchmarks/speedrun.py speedrun_fashion [--seeds 3] [--tune] [--md out.md]
       [-- OVERRIDES...]    (e.g. -- model.patch=2 'model.widths=[64,128,256]')
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DLRUN = shutil.which("dlrun", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                   os.environ.get("PATH", "")])) or "dlrun"


def one_run(preset: str, seed: int, tune: bool, extra: list[str], workdir: Path) -> dict:
    run_dir = workdir / f"{preset}-seed{seed}"
    cmd = [DLRUN, f"+experiment={preset}", f"train.seed={seed}", "plots=false",
           f"hydra.run.dir={run_dir}", *(["dataset.val_size=5000"] if tune else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    split = "val" if tune else "test"
    return {"seed": seed, "wall_s": wall, "accuracy": 1.0 - final[f"{split}_error"],
            "epochs": final["epoch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tune", action="store_true", help="report validation accuracy (5,000 held out)")
    ap.add_argument("--md", type=Path, help="append the result as a markdown table row")
    args, extra = ap.parse_known_args()  # the rest (after --, or anywhere): dlrun overrides
    args.extra = [a for a in extra if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_run(args.preset, s, args.tune, args.extra, Path(tmp)) for s in range(args.seeds)]
    acc = statistics.mean(r["accuracy"] for r in runs)
    wall = statistics.median(r["wall_s"] for r in runs)
    split = "validation" if args.tune else "test"
    for r in runs:
        print(f"seed {r['seed']}: {split} accuracy {100 * r['accuracy']:.2f} %, {r['wall_s']:.1f} s")
    line = (f"| `{args.preset}`{' ' + ' '.join(args.extra) if args.extra else ''} | {args.seeds} | "
            f"{100 * acc:.2f} % {split} | {wall:.1f} s | {time.strftime('%Y-%m-%d')} |")
    print(f"{args.preset}: mean {split} accuracy {100 * acc:.2f} % over {args.seeds} seeds, "
          f"median wall time {wall:.1f} s")
    if args.md:
        if not args.md.exists():
            args.md.write_text("| preset | seeds | mean accuracy | median wall time | date |\n"
                               "|---|---:|---:|---:|---|\n")
        with args.md.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
