#!/usr/bin/env bash
# Runs the commands of docs/tutorial.md (the seed notebook's progression on the shipped MNIST
# sample) and copies the pictures the tutorial shows into docs/images/. Every picture in the
# tutorial comes from this script. Takes about 2-3 minutes on 2 CPU cores.
#   bash scripts/tutorial_images.sh            # from the repository root
# The runs go to outputs/tutorial/<step>/ (git-ignored); each console output is kept in
# outputs/tutorial/<step>.txt, which is where the tutorial's excerpts come from.
set -euo pipefail
cd "$(dirname "$0")/.."
DLRUN=${DLRUN:-.venv/bin/dlrun}
OUT=outputs/tutorial
IMG=docs/images
mkdir -p "$OUT" "$IMG"

run() {  # run STEP ARGS...: one tutorial step into outputs/tutorial/STEP
  local step=$1; shift
  rm -rf "${OUT:?}/$step"
  echo "== dlrun $*"
  "$DLRUN" "$@" "hydra.run.dir=$OUT/$step" 2>&1 | tee "$OUT/$step.txt"
}

run 1_knn            +experiment=knn
run 2_logreg         +experiment=radford_logreg
run 3_net            +experiment=radford_net
run 4_modern_net     +experiment=radford_modern_net
run 5_convnet        +experiment=radford_convnet train.epochs=20

cp "$OUT/1_knn/test_images.png"              "$IMG/knn_test_images.png"
cp "$OUT/2_logreg/filters.png"               "$IMG/logreg_filters.png"
cp "$OUT/2_logreg/learning_curves.png"       "$IMG/logreg_learning_curves.png"
cp "$OUT/3_net/learning_curves.png"          "$IMG/net_learning_curves.png"
cp "$OUT/3_net/filters.png"                  "$IMG/net_filters.png"
cp "$OUT/4_modern_net/learning_curves.png"   "$IMG/modern_net_learning_curves.png"
cp "$OUT/5_convnet/filters.png"              "$IMG/convnet_filters.png"
cp "$OUT/5_convnet/learning_curves.png"      "$IMG/convnet_learning_curves.png"
cp "$OUT/5_convnet/confusion_matrix.png"     "$IMG/convnet_confusion_matrix.png"
du -ch "$IMG"/*.png | tail -1
