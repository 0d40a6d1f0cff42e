"""Training speed of dlrun's own loop on 60,000 28x28 images (`make bench`).

For the seed's logistic regression, modern net and convnet (the radford_* presets: batch 128,
their seed optimizers), prints compile seconds, steady-state seconds per epoch (median over the
epochs after the first) and examples per second, using exactly the functions `dlrun` runs
(build_setup, load_splits, make_epoch_runner). The modern net is measured with both loop forms
(scan and step) so the per-model choice of `train.loop=auto` stays measurable.

Data: Fashion-MNIST when it is found offline (e.g. Debian's dataset-fashion-mnist); otherwise
random images of the same shape (speed does not depend on pixel values), and it says so.
Usage: python benchmarks/bench_epoch.py [--epochs-scale 1.0] [--json out.json] [--only convnet]
"""
import argparse
import json
import platform
import time

import jax
import numpy as np
from hydra import compose, initialize_config_module

from dlrun import splits, train
from dlrun.errors import DataError

CASES = [  # (label, preset, extra overrides, epochs timed)
    ("logreg", "radford_logreg", [], 6),
    ("modern_net", "radford_modern_net", [], 4),
    ("modern_net (loop=step)", "radford_modern_net", ["train.loop=step"], 3),
    ("convnet", "radford_convnet", [], 3),
]


def load_data(spec: splits.DataConfig):
    try:
        return splits.load_splits(spec, 1000)["train"], "fashion_mnist"
    except DataError:
        r = np.random.default_rng(0)
        x = r.random((60000, 28, 28, 1), dtype=np.float32)
        y = r.integers(0, 10, 60000).astype(np.int32)
        return splits.Split(jax.device_put(x), jax.device_put(y), 60000), "random (Fashion-MNIST not found)"


def measure(preset: str, overrides: list[str], epochs: int) -> dict:
    with initialize_config_module("dlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}", "dataset=fashion_mnist",
                                           "dataset.val_size=0", *overrides])
    setup = train.build_setup(cfg)
    split, source = load_data(setup.dataset)
    run_epoch, compile_s = train.make_epoch_runner(setup, split, jax.random.key(1))
    state = train.init_state(setup, jax.random.key(0))
    times = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        state, acc = run_epoch(state, epoch)
        seen = float(np.asarray(acc)[2])  # host sync: the epoch is done
        times.append(time.perf_counter() - t0)
    steady = float(np.median(times[1:]))
    return {"preset": preset, "overrides": overrides, "loop": setup.loop, "data": source,
            "compile_seconds": compile_s, "epoch_seconds": steady, "epochs_timed": epochs - 1,
            "examples_per_second": seen / steady, "ms_per_step": 1000 * steady / setup.steps_per_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--only", help="run only cases whose label contains this")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"# dlrun training speed, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{device.platform} ({device.device_kind}), jax {jax.__version__}\n")
    print("| model | loop | compile s | s / epoch | ms / step | examples / s | data |")
    print("|---|---|---:|---:|---:|---:|---|")
    results = {}
    for label, preset, overrides, epochs in CASES:
        if args.only and args.only not in label:
            continue
        r = measure(preset, overrides, epochs)
        results[label] = r
        print(f"| {label} | {r['loop']} | {r['compile_seconds']:.2f} | {r['epoch_seconds']:.2f} | "
              f"{r['ms_per_step']:.2f} | {r['examples_per_second']:,.0f} | {r['data']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
