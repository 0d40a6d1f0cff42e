"""Where radford_logreg's time per step goes (docs/speed.md): 468 SGD steps of 784 -> 10
softmax regression at batch 128 in one lax.scan (dlrun's loop=scan, unroll 4), interleaved,
7 rounds, medians:
  per-step gather  each step gathers its batch's rows from the uint8 split (what dlrun does)
  epoch gather     the epoch's batches gathered once before the scan, which slices them
  no gather        every step trains on the same batch (what the gather costs)

Usage: python benchmarks/bench_small_step.py
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

N, B, ROUNDS = 60000, 128, 7
STEPS = N // B


def update(w, xb, yb):
    def loss(w):
        logp = jax.nn.log_softmax(xb.reshape(B, -1).astype(jnp.float32) / 255.0 @ w)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], 1))
    return w - 0.05 * jax.grad(loss)(w), None


@jax.jit
def per_step_gather(w, x, y, idx):
    return jax.lax.scan(lambda w, i: update(w, x[i], y[i]), w, idx, unroll=4)[0]


@jax.jit
def epoch_gather(w, x, y, idx):
    return jax.lax.scan(lambda w, b: update(w, *b), w, (x[idx], y[idx]), unroll=4)[0]


@jax.jit
def no_gather(w, x, y, idx):
    return jax.lax.scan(lambda w, i: update(w, x[:B], y[:B]), w, idx, unroll=4)[0]


def main() -> None:
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.integers(0, 256, (N, 28, 28, 1), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, N).astype(np.int32))
    idx = jnp.arange(STEPS * B, dtype=jnp.int32).reshape(STEPS, B)
    w = jnp.zeros((784, 10))
    fns = {"per-step gather": per_step_gather, "epoch gather": epoch_gather, "no gather": no_gather}
    for fn in fns.values():
        jax.block_until_ready(fn(w, x, y, idx))
    times = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(w, x, y, idx))
            times[name].append((time.perf_counter() - t0) / STEPS * 1000)
    print(f"jax {jax.__version__}: ms per step, median of {ROUNDS} interleaved epochs of {STEPS} steps")
    for name, ms in times.items():
        print(f"  {name:16s} {np.median(ms):.3f} ms")


if __name__ == "__main__":
    main()
