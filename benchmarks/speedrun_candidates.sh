#!/bin/bash
# Speedrun candidates for Fashion-MNIST (README, "The targets of issue 3"): test error after
# each of 12 epochs for convnets dlrun can express. Accuracy does not depend on the device; it
# was run on an H100 for speed. Usage: bash benchmarks/speedrun_candidates.sh (dlrun on PATH).
set -e -o pipefail
common="dataset=fashion_mnist dataset.val_size=0 model=cnn model.init=glorot optim=adam schedule=cosine regularizer=[dropout] regularizer.dropout.input=0 train.epochs=12"
run() { echo "== $1"; shift; dlrun $common "$@" 2>&1 | grep -E "^(epoch|done)"; }
run seed_arch
run c16_32 model.features=[16,32] model.padding=[1,0] model.hidden=[256] regularizer.dropout.conv=0.1 regularizer.dropout.hidden=0.3
run c32_64 model.features=[32,64] model.padding=[1,0] model.hidden=[256]
run c24_48 model.features=[24,48] model.padding=[1,0] model.hidden=[256] regularizer.dropout.conv=0.1 regularizer.dropout.hidden=0.3
run seed_b256 train.batch_size=256 optim.lr=0.002
run seed_h256 model.hidden=[256] regularizer.dropout.conv=0.1
run c32_64_k5 model.features=[32,64] model.kernel_size=5 model.padding=[2,0] model.hidden=[256]
