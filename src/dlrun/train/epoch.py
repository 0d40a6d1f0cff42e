"""One epoch of training, compiled once in the chosen loop form.

Loop forms (`train.loop`), chosen per model because XLA:CPU behaves very differently for them:
  scan  one jitted call per epoch: a lax.scan over all its steps (dense nets: no per-step
        dispatch; measured 3.7 vs 4.9 ms per step for the modern net)
  step  one jitted call per step (convnets: XLA:CPU runs convolutions inside a loop ~9x slower,
        measured 1,100 vs 90-130 ms per batch of 128 for the seed convnet)
  auto  scan for dense models, step for convnets
"""
import time
from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dlrun.data import splits as data_splits
from dlrun.runtime import distributed
from dlrun.train.setup import Setup, steps_per_epoch
from dlrun.train.state import TrainState, init_states
from dlrun.train.step import epoch_acc, make_train_step


def epoch_order(key: jax.Array, n: int, batch_size: int, shuffle: bool, drop_last: bool):
    """Row indices (steps, B) int32 and weights (steps, B) float32 for one epoch.

    Unshuffled with drop_last it is the seed's `zip(range(0, n, B), range(B, n, B))` order
    (for n not a multiple of B; the seed also drops a last *full* batch when B divides n).
    """
    order = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
    steps = steps_per_epoch(n, batch_size, drop_last)
    pad = steps * batch_size - n
    idx = jnp.pad(order, (0, max(pad, 0)))[: steps * batch_size].astype(jnp.int32)
    w = (jnp.arange(steps * batch_size) < n).astype(jnp.float32)
    return idx.reshape(steps, batch_size), w.reshape(steps, batch_size)


def step_and_order(setup: Setup, n: int, key: jax.Array) -> tuple[Callable, Callable, jax.Array]:
    """(step, order_fn, dropout key): the training step, and epoch -> (idx, w), for one run or,
    vmap-ed, for every copy. With train.num_seeds = N > 1, `key` holds N keys, state and sums
    have a leading copy axis, and one compiled program trains all N, each with its own
    initialisation, data order, dropout and learning rate, sharing the data on device."""
    tc = setup.train

    def order(k, e):
        return epoch_order(jax.random.fold_in(k, e), n, tc.batch_size, tc.shuffle, tc.drop_last)

    if setup.copies == 1:
        dropout_key, order_key = jax.random.split(key)
        return make_train_step(setup), jax.jit(lambda e: order(order_key, e)), dropout_key
    keys = jax.vmap(jax.random.split)(key)  # (N, 2)
    dropout_key, order_key = keys[:, 0], keys[:, 1]
    scale = jnp.asarray(setup.lr_scales, jnp.float32)
    vstep = jax.vmap(lambda s, a, x, y, i, w, k, c: make_train_step(setup, c)(s, a, x, y, i, w, k),
                     in_axes=(0, 0, None, None, 0, 0, 0, 0))

    def step(state, acc, x, y, idx, w, key):
        return vstep(state, acc, x, y, idx, w, key, scale)
    # (steps, N, B): the scan and step loops index steps first
    order_fn = jax.jit(lambda e: jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1),
                                              jax.vmap(order, in_axes=(0, None))(order_key, e)))
    return step, order_fn, dropout_key


def placed(setup: Setup, arrays: tuple, order_fn: Callable) -> tuple[Callable, tuple, Callable]:
    """(jit, arrays, order_fn) for the run's devices: on one device, jax.jit with the state and
    sums donated; data parallel (setup.mesh), the batch rows split along `data` and all else
    replicated."""
    mesh, batched = setup.mesh, setup.copies > 1
    jit = partial(jax.jit, donate_argnums=(0, 1))
    if mesh is None:
        return jit, arrays, order_fn
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch = distributed.batch_sharding(mesh, 3 if batched else 2)
    jit = partial(jit, in_shardings=(rep, rep, rep, rep, batch, batch, rep)
                  + ((rep,) if setup.loop == "step" else ()), out_shardings=rep)
    return jit, distributed.replicate(mesh, arrays), lambda e: distributed.shard_batch(mesh, order_fn(e))


def abstract_state(setup: Setup) -> TrainState:
    """The shapes and dtypes of the training state (one per copy with train.num_seeds > 1),
    what the epoch is compiled ahead of time for."""
    key = jax.random.key(0)
    return jax.eval_shape(lambda: init_states(
        setup, jax.random.split(key, setup.copies) if setup.copies > 1 else key))


def make_epoch_runner(setup: Setup, split: data_splits.Split, key: jax.Array) -> tuple[Callable, float]:
    """Compile the epoch for the chosen loop form; return (run_epoch, compile_s).

    run_epoch dispatches asynchronously and returns (state, sums, steps) without a host sync.
    """
    if not split.on_device:
        return make_stream_runner(setup, split, key)
    step, order_fn, dropout_key = step_and_order(setup, split.n, key)
    batched = setup.copies > 1

    def scan_epoch(state, acc, x, y, idx, w, key):
        def body(carry, batch):
            return step(*carry, x, y, *batch, key), None
        return jax.lax.scan(body, (state, acc), (idx, w), unroll=setup.train.scan_unroll)[0]

    def one_step(state, acc, x, y, idx, w, key, i):
        return step(state, acc, x, y, idx[i], w[i], key)

    fn = scan_epoch if setup.loop == "scan" else one_step
    t0 = time.perf_counter()
    mesh = setup.mesh
    jit, (x, y, dropout_key), order_fn = placed(setup, (split.x, split.y, dropout_key), order_fn)
    idx0, w0 = order_fn(0)
    args = [abstract_state(setup), epoch_acc(setup, setup.copies if batched else None), x, y,
            idx0, w0, dropout_key]
    if setup.loop == "step":
        args.append(np.int32(0))
    compiled = jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0

    def run_epoch(state: TrainState, epoch: int, acc=None, start: int = 0,
                  pause: Optional[Callable[[], bool]] = None):
        """Steps start.. of `epoch` (1-based) from `acc` (None: a fresh epoch) -> (state, acc,
        steps done). With loop=step, `pause()` is asked after every step and a true answer
        returns early (a mid-epoch checkpoint or a stop signal); loop=scan runs whole epochs."""
        idx, w = order_fn(epoch)
        acc = epoch_acc(setup, setup.copies if batched else None) if acc is None else acc
        steps = idx.shape[0]
        if mesh is not None:  # the state is a local array between calls (distributed.local)
            state, acc = distributed.replicate(mesh, (state, acc))
        if setup.loop == "scan":
            assert start == 0, "loop=scan checkpoints only at epoch ends"
            return (*distributed.local(compiled(state, acc, x, y, idx, w, dropout_key)), steps)
        for i in range(start, steps):
            state, acc = compiled(state, acc, x, y, idx, w, dropout_key, np.int32(i))
            if pause is not None and i + 1 < steps and pause():
                return (*distributed.local((state, acc)), i + 1)
        return (*distributed.local((state, acc)), steps)

    return run_epoch, compile_s


def make_stream_runner(setup: Setup, split: data_splits.Split, key: jax.Array) -> tuple[Callable, float]:
    """make_epoch_runner for a split on the host (dataset streamed): the same epoch order and
    the same step, fed one batch at a time. The batch's rows are gathered on the host and
    copied to the device by a background thread two steps ahead (data_splits.host_batches);
    the step then indexes the batch with 0..B-1, the same gather as of the rows on the device,
    so the numbers are those of device-resident training with loop=step, bit for bit."""
    step, order_fn, dropout_key = step_and_order(setup, split.n, key)
    batch = setup.train.batch_size
    local = jnp.arange(batch, dtype=jnp.int32)
    t0 = time.perf_counter()
    xb = jax.ShapeDtypeStruct((batch, *split.x.shape[1:]), split.x.dtype)
    yb = jax.ShapeDtypeStruct((batch,), jnp.int32)
    w0 = jax.ShapeDtypeStruct((batch,), jnp.float32)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        abstract_state(setup), epoch_acc(setup, None), xb, yb, local, w0, dropout_key).compile()
    compile_s = time.perf_counter() - t0

    def run_epoch(state: TrainState, epoch: int, acc=None, start: int = 0,
                  pause: Optional[Callable[[], bool]] = None):
        idx, w = (np.asarray(a) for a in order_fn(epoch))
        acc = epoch_acc(setup, None) if acc is None else acc
        steps = idx.shape[0]
        batches = data_splits.host_batches(split, idx[start:])
        try:
            for i, (x, y) in enumerate(batches, start):
                state, acc = compiled(state, acc, x, y, local, w[i], dropout_key)
                if pause is not None and i + 1 < steps and pause():
                    return state, acc, i + 1
        finally:
            batches.close()
        return state, acc, steps

    return run_epoch, compile_s
