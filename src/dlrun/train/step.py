"""The training step: one pure function, jitted once, and the epoch's named running sums.

The step carries `sums`, a dict of float32 running totals over the epoch:
    examples              examples trained on (the padding of a partial batch has weight 0)
    nonfinite_steps       steps whose loss or updated parameters were not finite (is_finite)
    first_nonfinite_step  the first such step's number (NO_STEP if none yet)
    metrics               {name: sum over examples} of each of the objective's metrics
With train.num_seeds = N > 1 every entry has a leading copy axis (N,).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from dlrun.data import preprocess
from dlrun.data import splits as data_splits
from dlrun.data import views
from dlrun.train.setup import Setup
from dlrun.train.state import AVERAGE, TrainState, train_variables

NO_STEP = float(2**31)  # first_nonfinite_step while every step was finite


def epoch_acc(setup: Setup, copies: Optional[int] = None) -> dict:
    """The step's running sums at the start of an epoch (one per copy when copies is given)."""
    shape = () if copies is None else (copies,)
    zero = lambda: jnp.zeros(shape, jnp.float32)  # noqa: E731 - a buffer each: the step donates them
    return {"examples": zero(), "nonfinite_steps": zero(),
            "first_nonfinite_step": jnp.full(shape, NO_STEP, jnp.float32),
            "metrics": {name: zero() for name in setup.objective.metrics}}


def sums_to_array(setup: Setup, sums: dict) -> jax.Array:
    """The sums as one float32 array, [examples, nonfinite_steps, first_nonfinite_step, *metrics
    in the objective's order] along the last axis: how checkpoints store them (the layout of
    checkpoint format 1). (A jitted function returns dicts with their keys sorted, so the
    order is the objective's, never the dict's.)"""
    return jnp.stack([sums["examples"], sums["nonfinite_steps"], sums["first_nonfinite_step"],
                      *(sums["metrics"][name] for name in setup.objective.metrics)], axis=-1)


def sums_from_array(setup: Setup, a: jax.Array) -> dict:
    """sums_to_array's inverse, with the objective's metric names."""
    a = jnp.asarray(a)
    return {"examples": a[..., 0], "nonfinite_steps": a[..., 1], "first_nonfinite_step": a[..., 2],
            "metrics": {name: a[..., 3 + k] for k, name in enumerate(setup.objective.metrics)}}


def make_train_step(setup: Setup, scale: Optional[jax.Array] = None) -> Callable:
    """(state, sums, x, y, idx, w, key) -> (state, sums).

    scale: multiplies the optimizer's updates (a per-copy learning rate ratio under vmap;
    exact for every optimizer in conf/optim, whose updates are proportional to the lr).

    idx (B,) int32 row indices into the device-resident split x (N, H, W, C) uint8, y (N,);
    w (B,) float32 example weights (0 for the padding of a partial last batch). The loss and
    metrics come from the model's objective (dlrun.models.objectives); collections the model
    updates (PCD's chains) are carried in state.extra.

    A step whose loss or updated parameters are not finite (is_finite) adds nothing to the
    sums and is counted instead; train.nan_policy decides after the epoch whether the run
    stops (raise) or goes on (skip), and what the step itself keeps (guarded).
    """
    tx = setup.tx
    loss_fn = make_loss(setup)
    skip = setup.train.nan_policy == "skip"

    def step(state: TrainState, acc, x, y, idx, w, key):
        step_key = jax.random.fold_in(key, state.step)
        epoch = state.step // setup.steps_per_epoch
        xb = batch_inputs(setup, x[idx], step_key, key, idx, x.shape[0], epoch)
        yb = y[idx]
        rngs = {"dropout": step_key, "sample": jax.random.fold_in(step_key, 1)}
        grad_fn = jax.value_and_grad(lambda p: loss_fn(p, state.extra, xb, yb, w, rngs), has_aux=True)
        (loss, (sums, updated)), grads = grad_fn(state.params)
        if setup.full_batch:  # line searches evaluate the same objective at trial points
            updates, opt_state = tx.update(
                grads, state.opt_state, state.params, value=loss, grad=grads,
                value_fn=lambda p: loss_fn(p, state.extra, xb, yb, w, rngs)[0])
        else:
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if scale is not None:
            updates = jax.tree.map(lambda u: u * scale, updates)
        params = optax.apply_updates(state.params, updates)
        if setup.averaging is not None:
            average, params = setup.averaging.update(state.extra[AVERAGE], params, state.step + 1)
            updated = {**updated, AVERAGE: average}
        finite = is_finite(loss, params)
        if skip:
            new = (params, opt_state, dict(updated))
            old = (state.params, state.opt_state, {k: state.extra[k] for k in updated})
            params, opt_state, updated = guarded(finite, new, old)
        acc = add_sums(setup, acc, finite, jnp.sum(w), sums, state.step)
        return TrainState(params, opt_state, state.step + 1, {**state.extra, **updated}), acc

    return step


def is_finite(loss: jax.Array, params) -> jax.Array:
    """Whether the loss and the updated parameters are finite (one boolean): a NaN or infinity
    anywhere makes the sum of the loss and every parameter's sum non-finite. A non-finite
    gradient makes the parameters so under every optimizer of conf/optim (their updates are
    elementwise in it, or, for muon, spread it over the matrix). Testing the new parameters
    rather than the gradients lets XLA fuse the sum into the update: with nan_policy=raise it
    costs -2 % to +1 % of the modern net's step (noise), the gradients' sums +2 to +3 %, an
    isfinite and all per gradient +4 to +5 % (benchmarks/bench_finite_check.py). A step whose
    finite parameters sum past float32's range (3.4e38) counts as non-finite too: it has
    diverged already."""
    return jnp.isfinite(loss + sum(jnp.sum(p) for p in jax.tree.leaves(params)))


def guarded(finite: jax.Array, new, old):
    """`new` where the step was finite, else `old`: under nan_policy=skip a non-finite step
    changes nothing (parameters, optimizer state and collections), at the cost of this select,
    10-13 % of the modern net's step (docs/speed.md). Under raise the step does not call it:
    nothing trained in a diverged epoch is kept (the epoch's state is dropped, and a pause
    mid-epoch does not checkpoint it: loop.diverging), so the check alone costs nothing
    measurable."""
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def add_sums(setup: Setup, acc: dict, finite: jax.Array, examples: jax.Array, sums: jax.Array,
             step: jax.Array) -> dict:
    """The running sums after a step (a non-finite one adds nothing but its count)."""
    added = lambda v: jnp.where(finite, v, 0.0)  # noqa: E731
    return {"examples": acc["examples"] + added(examples),
            "nonfinite_steps": acc["nonfinite_steps"] + (1.0 - finite),
            "first_nonfinite_step": jnp.minimum(acc["first_nonfinite_step"], jnp.where(
                finite, NO_STEP, step.astype(jnp.float32))),
            "metrics": {name: acc["metrics"][name] + added(sums[k])
                        for k, name in enumerate(setup.objective.metrics)}}


def batch_inputs(setup: Setup, x: jax.Array, step_key: jax.Array, run_key: jax.Array,
                 rows: jax.Array, n: int, epoch: jax.Array) -> jax.Array:
    """A batch of uint8 images (rows: their indices into the split of n) -> the model's input:
    pixels in [0, 1], augmented on the device (dataset.augment: warps, then crops and flips)
    and transformed (dataset.preprocess) as configured."""
    ds = setup.dataset
    xb = data_splits.pixels(x)
    if set(ds.augment) & set(preprocess.WARPS):
        xb = preprocess.augment(xb, jax.random.fold_in(step_key, 2), ds.augment, ds.max_shift,
                                ds.max_scale, ds.elastic_alpha, ds.elastic_sigma)
    if set(ds.augment) & set(views.VIEW_AUGMENT):
        xb = views.training_views(xb, ds.augment, ds.crop_pad, step_key,
                                  jax.random.fold_in(run_key, 5), rows, n, epoch)
    return xb if setup.transform is None else setup.transform(xb)


def make_loss(setup: Setup) -> Callable:
    """(params, extra, x, y, w, rngs) -> (weighted mean loss + penalty, (metric sums (K,),
    updated collections)): the objective of the training step."""
    model, penalty, objective = setup.model, setup.reg.penalty, setup.objective
    mutable = list(getattr(model, "mutable", ()))

    half = setup.train.precision == "bfloat16"

    def loss_fn(params, extra, xb, yb, w, rngs):
        if half:  # mixed precision: bfloat16 compute, float32 master weights and loss
            params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
            xb = xb.astype(jnp.bfloat16) if jnp.issubdtype(xb.dtype, jnp.floating) else xb  # ids stay
        variables = train_variables(params, extra)
        if mutable:
            out, updated = model.apply(variables, xb, train=True, rngs=rngs, mutable=mutable)
        else:
            out, updated = model.apply(variables, xb, train=True, rngs=rngs), {}
        if half:
            out = jax.tree.map(lambda o: o.astype(jnp.float32), out)
        loss, metrics = objective.per_example(model, out, yb)  # (B,), (K, B)
        return jnp.sum(w * loss) / jnp.sum(w) + penalty(params), (metrics @ w, updated)

    return loss_fn
