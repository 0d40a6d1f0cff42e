"""Training speed of dlrun's own loop on 60,000 28x28 images (`make bench`).

For the seed's logistic regression, modern net and convnet (the radford_* presets: batch 128,
their seed optimizers), prints compile seconds, steady-state seconds per epoch (median over the
epochs after the first) and examples per second, using exactly the functions `dlrun` runs
(build_setup, load_splits, make_epoch_runner). The modern net is measured with both loop forms
(scan and step) so the per-model choice of `train.loop=auto` stays measurable.

In the same process, when torch is installed (`make bench` installs torch==2.13.0, a
benchmark-only peer), the same network, batch, optimizer and data trained by a plain PyTorch CPU
loop (benchmarks/torch_peer.py), and the ratio dlrun / PyTorch in examples per second. Achieved
GFLOP/s come from XLA's cost analysis of one training step, and are compared with a jitted
2048x2048 float32 matmul measured in the same run (the machine's practical limit).

Data: Fashion-MNIST when it is found offline (e.g. Debian's dataset-fashion-mnist); otherwise
random images of the same shape (speed does not depend on pixel values), and it says so.
Usage: python benchmarks/bench_epoch.py [--epochs-scale 1.0] [--json out.json] [--only convnet]
"""
import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_module

from dlrun import splits, train

PEER = Path(__file__).with_name("torch_peer.py")


def torch_version() -> str | None:
    """torch's version, asked in a subprocess (importing torch here would slow JAX down)."""
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def torch_ms_per_step(preset: str, steps: int) -> float:
    """The PyTorch peer's steady ms per step, measured in its own process."""
    proc = subprocess.run([sys.executable, str(PEER), preset, str(steps)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])["ms_per_step"]
from dlrun.errors import DataError

HAVE_TORCH = False
CASES = [  # (label, preset, extra overrides, epochs timed, PyTorch steps timed)
    ("logreg", "radford_logreg", [], 6, 2000),
    ("net", "radford_net", [], 4, 400),
    ("modern_net", "radford_modern_net", [], 4, 300),
    ("modern_net (loop=step)", "radford_modern_net", ["train.loop=step"], 3, 0),
    ("convnet", "radford_convnet", [], 3, 60),
]


def matmul_gflops(n: int = 2048, reps: int = 20) -> float:
    """GFLOP/s of a jitted n x n float32 matmul: the practical compute limit of the machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def step_flops(setup, split) -> float:
    """FLOPs of one training step (forward, backward, update) by XLA's cost analysis."""
    state = jax.eval_shape(lambda: train.init_state(setup, jax.random.key(0)))
    b = setup.train.batch_size
    args = (state, jnp.zeros(3), split.x, split.y, jnp.arange(b, dtype=jnp.int32), jnp.ones(b),
            jax.random.key(1))
    cost = jax.jit(train.make_train_step(setup)).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def load_data(spec: splits.DataConfig):
    try:
        return splits.load_splits(spec, 1000)["train"], "fashion_mnist"
    except DataError:
        r = np.random.default_rng(0)
        x = r.random((60000, 28, 28, 1), dtype=np.float32)
        y = r.integers(0, 10, 60000).astype(np.int32)
        return splits.Split(jax.device_put(x), jax.device_put(y), 60000), "random (Fashion-MNIST not found)"


def measure(preset: str, overrides: list[str], epochs: int, torch_steps: int) -> dict:
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
    ms = 1000 * steady / setup.steps_per_epoch
    result = {"preset": preset, "overrides": overrides, "loop": setup.loop, "data": source,
              "compile_seconds": compile_s, "epoch_seconds": steady, "epochs_timed": epochs - 1,
              "examples_per_second": seen / steady, "ms_per_step": ms,
              "gflops": step_flops(setup, split) / ms / 1e6}
    if torch_steps and HAVE_TORCH:
        result["torch_ms_per_step"] = torch_ms_per_step(preset, torch_steps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--only", help="run only cases whose label contains this")
    args = parser.parse_args()
    global HAVE_TORCH
    device = jax.devices()[0]
    limit = matmul_gflops()
    torch_v = torch_version()
    HAVE_TORCH = torch_v is not None
    print(f"# dlrun training speed, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{device.platform} ({device.device_kind}), jax {jax.__version__}, "
          f"torch {torch_v or 'not installed (pip install torch==2.13.0)'}; "
          f"jitted 2048x2048 float32 matmul: {limit:.0f} GFLOP/s\n")
    print("| model | loop | compile s | s / epoch | ms / step | examples / s | GFLOP/s | % of matmul "
          "| PyTorch ms / step | dlrun / PyTorch | data |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    results = {"matmul_gflops": limit}
    torch_ms = {}
    for label, preset, overrides, epochs, torch_steps in CASES:
        if args.only and args.only not in label:
            continue
        r = measure(preset, overrides, epochs, torch_steps)
        torch_ms.setdefault(preset, r.get("torch_ms_per_step"))
        peer = torch_ms.get(preset)
        r["speedup_vs_torch"] = peer / r["ms_per_step"] if peer else None
        results[label] = r
        peer_text = f"{peer:.2f} | {r['speedup_vs_torch']:.2f}x" if peer else "- | -"
        print(f"| {label} | {r['loop']} | {r['compile_seconds']:.2f} | {r['epoch_seconds']:.2f} | "
              f"{r['ms_per_step']:.2f} | {r['examples_per_second']:,.0f} | {r['gflops']:.1f} | "
              f"{100 * r['gflops'] / limit:.1f} % | {peer_text} | {r['data']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
