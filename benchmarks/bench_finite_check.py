"""What the finiteness guard of train.nan_policy costs a training step (docs/speed.md).

The same config is compiled with the guard's variants in one process (dlrun.train.step's
`is_finite` and `guarded` swapped, and train.nan_policy), and their epochs of 60 steps on random
28x28 data are interleaved, 21 rounds; medians after the first round:
  none             no test, no select (what a step without the guard costs)
  raise            shipped, nan_policy=raise: the loss and gradients' sums tested, no select
  skip             shipped, nan_policy=skip: the same test, the new or old state selected
  skip, per leaf   isfinite and all over each gradient (the test before 2026-12-01), the select
  skip, cond       the shipped test, lax.cond instead of jnp.where for the select

Usage: python benchmarks/bench_finite_check.py [OVERRIDES...]   (default +experiment=radford_modern_net)
"""
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_module

import dlrun.train.step as step_module
from dlrun import train
from dlrun.data import splits

SHIPPED = (step_module.is_finite, step_module.guarded)
PER_LEAF = lambda loss, grads: jnp.isfinite(loss) & jnp.all(jnp.stack(  # noqa: E731
    [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
VARIANTS = {  # name: (nan_policy, is_finite, guarded)
    "none": ("raise", lambda loss, grads: jnp.bool_(True), SHIPPED[1]),
    "raise": ("raise", *SHIPPED),
    "skip": ("skip", *SHIPPED),
    "skip, per leaf": ("skip", PER_LEAF, SHIPPED[1]),
    "skip, cond": ("skip", SHIPPED[0], lambda finite, new, old: jax.lax.cond(finite, lambda: new, lambda: old)),
}
STEPS, ROUNDS = 60, 21


def main(overrides: list[str]) -> None:
    runners, n, rng = {}, None, np.random.default_rng(0)
    for name, (policy, is_finite, guarded) in VARIANTS.items():  # the step is traced at compile time
        with initialize_config_module("dlrun.conf", version_base="1.3"):
            cfg = compose("config", overrides=["dataset=fashion_mnist", "dataset.val_size=0",
                                               f"train.nan_policy={policy}", *overrides])
        setup = dataclasses.replace(train.build_setup(cfg), steps_per_epoch=STEPS)
        if n is None:
            n = setup.train.batch_size * STEPS
            split = splits.Split(jax.device_put(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)),
                                 jax.device_put(rng.integers(0, 10, n).astype(np.int32)), n)
            init_key, train_key = train.run_keys(setup, jax.random.key(0))
        step_module.is_finite, step_module.guarded = is_finite, guarded
        runners[name] = (setup, train.make_epoch_runner(setup, split, train_key)[0])
    step_module.is_finite, step_module.guarded = SHIPPED
    times = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, (setup, run_epoch) in runners.items():
            state = train.init_states(setup, init_key)
            t0 = time.perf_counter()
            jax.block_until_ready(run_epoch(state, 1))
            times[name].append((time.perf_counter() - t0) / STEPS * 1000)
    base = np.median(times["none"][1:])
    print(f"{' '.join(overrides)}: ms per step, median of {ROUNDS - 1} interleaved epochs of {STEPS} steps")
    for name, ms in times.items():
        med = np.median(ms[1:])
        print(f"  {name:15s} {med:6.2f} ms  ({100 * (med / base - 1):+.1f} % against none)")


if __name__ == "__main__":
    main(sys.argv[1:] or ["+experiment=radford_modern_net"])
