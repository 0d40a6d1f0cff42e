#!/usr/bin/env bash
# The RNN-RBM's results table of docs/music.md: DLT's preset and Adam variants on all of
# music21's chorales, into outputs/music/<name>/, then one row per run from its summary.json.
# About 25 minutes on the 2-core CPU (each first read of the chorales at a step: a minute more).
# Usage: bash scripts/music_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DLRUN=${DLRUN:-.venv/bin/dlrun}
declare -A RUNS=(
  [dlt_sgd_200]=""
  [adam_30]="optim=adam train.epochs=30"
  [adam_20]="optim=adam train.epochs=20"
  [adam_30_bachs_keys]="optim=adam train.epochs=30 dataset.transpose=none"
  [adam_30_eighths]="optim=adam train.epochs=30 dataset.step=0.5"
)
NAMES=(dlt_sgd_200 adam_30 adam_20 adam_30_bachs_keys adam_30_eighths)
for name in "${NAMES[@]}"; do
  echo "== $name: +experiment=dlt_rnnrbm ${RUNS[$name]}"
  rm -rf "outputs/music/$name"
  # shellcheck disable=SC2086
  $DLRUN +experiment=dlt_rnnrbm ${RUNS[$name]} progress=false hydra.run.dir="outputs/music/$name" \
    | grep -E "^(test|done)"
done
${PYTHON:-.venv/bin/python} - "${NAMES[@]}" <<'PY'
import json, pathlib, sys
print("| run | epochs | test frames | test NLL (nats/frame, AIS) | test ACC (expected) | wall s |")
print("| --- | --- | --- | --- | --- | --- |")
for name in sys.argv[1:]:
    s = json.loads((pathlib.Path("outputs/music") / name / "summary.json").read_text())
    q = s["sequences"]
    print(f"| {name} | {s['epochs']} | {q['test_frames']} | {q['test_nll']:.2f} | {100 * q['test_acc']:.1f} % | "
          f"{s['timings']['total_seconds'] + q['seconds']:.0f} |")
PY
