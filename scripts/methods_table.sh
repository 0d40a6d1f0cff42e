#!/usr/bin/env bash
# Train every method preset of conf/experiment/ (issue 5) on the full Fashion-MNIST, one after
# the other, into outputs/methods/<preset>/, then print the README's methods table
# (scripts/methods_table.py). The long presets are capped (the table says so): run length only,
# every other setting is the preset's. About an hour on the 2-core CPU this project targets.
# Usage: bash scripts/methods_table.sh [PRESET ...]   (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."
DLRUN=${DLRUN:-.venv/bin/dlrun}
declare -A CAP=(
  [dlt_logreg]=""
  [dlt_mlp]="train.epochs=50"
  [dlt_lenet]="train.epochs=20"
  [dlt_sda]="train.epochs=15"
  [dlt_dbn]="model.pretrain_epochs=10 train.epochs=30"
  [seq_lstm]="train.epochs=10"
)
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || PRESETS=(knn slides_logreg_fullbatch slides_tanh_mlp dlt_logreg dlt_mlp
                                     dlt_da dlt_rbm seq_lstm dlt_lenet dlt_sda dlt_dbn)
for p in "${PRESETS[@]}"; do
  echo "== $p ${CAP[$p]:-}"
  rm -rf "outputs/methods/$p"
  # shellcheck disable=SC2086
  $DLRUN +experiment="$p" dataset=fashion_mnist ${CAP[$p]:-} hydra.run.dir="outputs/methods/$p" \
    | grep -E "^(done|pretraining|early stopping)"
done
${PYTHON:-.venv/bin/python} scripts/methods_table.py outputs/methods
