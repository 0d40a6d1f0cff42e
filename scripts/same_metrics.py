"""Do seven presets still train to the same numbers, bit for bit? A refactoring check.

    python scripts/same_metrics.py --write before.json     # on the old code
    python scripts/same_metrics.py --compare before.json   # on the new code: exit 1 on any difference

Each preset trains briefly on the shipped MNIST sample through the `dlrun` console script of this
interpreter's environment. Every value of every metrics.jsonl record is kept (floats as their exact
`repr`) except the wall-clock ones, which no two runs share.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DLRUN = Path(sys.executable).parent / "dlrun"
CLOCK = ("epoch_seconds", "eval_seconds", "examples_per_second")
SHORT = ["dataset=mnist_sample", "train.epochs=3"]
PRESETS = {
    "radford_logreg": [],
    "radford_net": [],
    "radford_modern_net": [],
    "radford_convnet": [],
    "dlt_lenet": [],
    "dlt_dbn": ["model.pretrain_epochs=1", "model.hidden=[200,200]"],
    "seq_lstm": ["model.hidden=32"],
}


def metrics(preset: str, extra: list[str], root: Path) -> list[dict]:
    """The metrics.jsonl records of one short run, without wall-clock values."""
    out = root / preset
    cmd = [str(DLRUN), f"+experiment={preset}", *SHORT, *extra, f"hydra.run.dir={out}"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{preset} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: repr(v) for k, v in r.items() if k not in CLOCK} for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="save this code's metrics here")
    mode.add_argument("--compare", type=Path, help="compare this code's metrics with a saved file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        now = {p: metrics(p, extra, Path(tmp)) for p, extra in PRESETS.items()}
    if args.write:
        args.write.write_text(json.dumps(now, indent=1))
        print(f"wrote {sum(map(len, now.values()))} records of {len(now)} presets to {args.write}")
        return
    before = json.loads(args.compare.read_text())
    differ = 0
    for preset, records in now.items():
        same = records == before.get(preset)
        differ += not same
        values = sum(len(r) for r in records)
        print(f"{preset:20s} {len(records)} epochs, {values} values: {'identical' if same else 'DIFFERENT'}")
    print("all identical, bit for bit" if not differ else f"{differ} preset(s) differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
