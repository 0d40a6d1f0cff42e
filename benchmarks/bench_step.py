"""Milliseconds per training step of a config's epoch runner (what `dlrun` runs) on random
28x28 data: one untimed epoch, then 3 timed epochs of STEPS steps, median. Run it with each
environment's Python in turn to compare stacks (docs/speed.md: jax 0.12 against 0.10), e.g.

    for py in .venv-old/bin/python .venv/bin/python; do
      $py benchmarks/bench_step.py 100 +experiment=radford_modern_net; done

Usage: python benchmarks/bench_step.py STEPS [OVERRIDES...]
"""
import dataclasses
import sys
import time

import jax
import numpy as np
from hydra import compose, initialize_config_module

from dlrun import train
from dlrun.data import splits
from dlrun.runtime.allocator import keep_freed_memory


def main(steps: int, overrides: list[str]) -> None:
    keep_freed_memory()  # as the CLI does before JAX starts
    with initialize_config_module("dlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["dataset=fashion_mnist", "dataset.val_size=0", *overrides])
    setup = dataclasses.replace(train.build_setup(cfg), steps_per_epoch=steps)
    n, rng = setup.train.batch_size * steps, np.random.default_rng(0)
    split = splits.Split(jax.device_put(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)),
                         jax.device_put(rng.integers(0, 10, n).astype(np.int32)), n)
    init_key, train_key = train.run_keys(setup, jax.random.key(0))
    run_epoch = train.make_epoch_runner(setup, split, train_key)[0]
    ms = []
    for _ in range(4):
        state = train.init_states(setup, init_key)
        t0 = time.perf_counter()
        jax.block_until_ready(run_epoch(state, 1))
        ms.append((time.perf_counter() - t0) / steps * 1000)
    print(f"jax {jax.__version__}, {' '.join(overrides)}: {np.median(ms[1:]):.2f} ms per step "
          f"(timed epochs {', '.join(f'{t:.1f}' for t in ms[1:])})")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
