"""The training state (parameters, optimizer state, step count, the model's other collections)
and how it is made: one per run, or one per copy (train.num_seeds > 1, a leading copy axis)."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlrun.runs.checkpoints import host_copy
from dlrun.train.setup import Setup


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: optimizer steps taken
    extra: dict = {}  # the model's other variable collections ('frozen', 'chains', 'batch_stats';
    #                   see dlrun.models) and AVERAGE, the averaged weights (dlrun.optim.averaging)


INFERENCE = ("batch_stats",)  # collections evaluation needs besides the weights: params.pkl keeps them
AVERAGE = "average"  # state.extra key of the averaged weights (averaging=ema|lookahead)


def init_state(setup: Setup, key: jax.Array) -> TrainState:
    dtype = jnp.int32 if setup.data.kind == "tokens" else jnp.float32  # token ids, or pixels
    x = jnp.zeros((1, *setup.data.image_shape), dtype)
    if setup.transform is not None:
        x = setup.transform(x)
    variables = dict(setup.model.init({"params": key, "sample": key, "dropout": key}, x, train=False))
    params = variables.pop("params")
    if setup.averaging is not None:
        variables[AVERAGE] = fresh_buffers(params)  # its own buffers: the step donates both
    return TrainState(params, fresh_buffers(setup.tx.init(params)), jnp.zeros((), jnp.int32), variables)


def run_keys(setup: Setup, base: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(init key, train key) of the run, or of every copy (leading axis N) when
    train.num_seeds > 1; copy i gets exactly the keys of a single run with seed + i."""
    if setup.copies == 1:
        init_key, train_key = jax.random.split(base)
        return init_key, train_key
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(jnp.asarray(setup.seeds))
    return keys[:, 0], keys[:, 1]


def init_states(setup: Setup, init_key: jax.Array) -> TrainState:
    """init_state for one run, or for each copy (init_key with a leading axis N)."""
    if setup.copies == 1:
        return init_state(setup, init_key)
    return jax.vmap(lambda k: init_state(setup, k))(init_key)


def fresh_buffers(tree):
    """`tree` with every array in a buffer of its own: some optax states (lbfgs) start with one
    zero array in two places, and the step donates its inputs, which must not alias."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def train_variables(params: dict, extra: dict) -> dict:
    """What model.apply takes in a training step: the trained weights and the collections."""
    return {"params": params, **{k: v for k, v in extra.items() if k != AVERAGE}}


def model_variables(state: TrainState) -> dict:
    """What evaluation, the pictures and params.pkl use: the averaged weights where
    averaging keeps them (else the trained ones) and the model's other collections."""
    variables = train_variables(state.params, state.extra)
    if AVERAGE in state.extra:
        variables["params"] = state.extra[AVERAGE]
    return variables


def saved_params(state: TrainState) -> dict:
    """What params.pkl and best_params.pkl hold: the evaluated weights, a plain tree, or with
    BatchNorm {'params': weights, 'batch_stats': running statistics} (what inference needs)."""
    variables = model_variables(state)
    kept = {k: variables[k] for k in INFERENCE if k in variables}
    return {"params": variables["params"], **kept} if kept else variables["params"]


def loaded_variables(blank: TrainState, saved: dict) -> dict:
    """saved_params' inverse: model.apply's variables from a params.pkl, the other collections
    (a stacked model's 'frozen' layers, PCD's chains) taken from `blank`."""
    variables = model_variables(blank)
    if any(k in variables for k in INFERENCE):
        return {**variables, **saved}
    return {**variables, "params": saved}


def copy_of(tree, i: int, copies: int):
    """Copy i of a tree with a leading copy axis (the tree itself for a single run)."""
    return tree if copies == 1 else jax.tree.map(lambda a: a[i], tree)


def set_copy(tree, i: int, copies: int, value):
    """`tree` (host numpy, leading copy axis when copies > 1) with copy i replaced by `value`."""
    value = host_copy(value)
    if copies == 1:
        return value
    for dst, src in zip(jax.tree.leaves(tree), jax.tree.leaves(value)):
        dst[i] = src
    return tree


def count_params(params: dict) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))
