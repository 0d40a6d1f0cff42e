"""The training loop: config -> model, optimizer, data -> one jitted step -> metrics and params.

Reading order: TrainConfig, Setup (everything built and validated from the config before any
data is loaded), the pure training step, the two loop forms, evaluation, and
`train_and_evaluate`, the one function the CLI calls.

Loop forms (`train.loop`), chosen per model because XLA:CPU behaves very differently for them:
  scan  one jitted call per epoch: a lax.scan over all its steps (dense nets: no per-step
        dispatch; measured 3.7 vs 4.9 ms per step for the modern net)
  step  one jitted call per step (convnets: XLA:CPU runs convolutions inside a loop ~9x slower,
        measured 1,100 vs 90-130 ms per batch of 128 for the seed convnet)
  auto  scan for dense models, step for convnets
"""
import dataclasses
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from omegaconf import DictConfig, OmegaConf

from dlrun import (__version__, datasets, distributed, early_stopping, models, objectives,
                   ownership, preprocess, pruning, splits as data_splits, optim, regularizers, tracking)
from dlrun.progress import display as progress_display
from dlrun.checkpoint import (CheckpointConfig, Checkpoints, Progress, RunLock, checkpoint_config, config_diff,
                              config_hash, has_checkpoint, host_copy, read_run_info, write_run_info)
from dlrun.errors import ConfigError, DlrunError, FileError, Interrupted
from dlrun.io import load_arrays
from dlrun.signals import StopRequest
from dlrun.registry import build, require
from dlrun.outputs import RunWriter

log = logging.getLogger("dlrun")
NUM_CLASSES = 10
ACC_HEAD = 3  # per-epoch sums: examples, non-finite steps, first such step; then the objective's metrics
NO_STEP = float(2**31)  # "no non-finite step yet" in the accumulator's last entry
TOP_LEVEL_KEYS = ("model", "optim", "schedule", "regularizer", "dataset", "train", "checkpoint",
                  "resume", "early_stopping", "plots", "prune", "dist", "progress", "logger")
OPTIONAL_KEYS = ("regularizer", "checkpoint", "resume", "early_stopping", "plots", "prune", "dist",
                 "progress", "logger")  # defaults when absent


@dataclass(frozen=True)
class TrainConfig:
    """The `train` node of the config (see conf/config.yaml for units)."""

    epochs: int
    batch_size: int
    seed: int
    shuffle: bool
    drop_last: bool
    eval_every: int
    eval_train: bool
    eval_batch_size: int
    loop: str
    compile_cache: bool
    num_seeds: int
    lrs: tuple
    scan_unroll: int
    nan_policy: str


def train_config(epochs: int = 10, batch_size: int = 128, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, eval_every: int = 1, eval_train: bool = False,
                 eval_batch_size: int = 1000, loop: str = "auto", compile_cache: bool = True,
                 num_seeds: int = 1, lrs: List[float] = (), scan_unroll: int = 4,
                 nan_policy: str = "raise") -> TrainConfig:
    require(epochs >= 1, f"epochs must be >= 1 (got {epochs})")
    require(batch_size >= 0, f"batch_size must be >= 1, or 0 for the whole training split (got {batch_size})")
    require(seed >= 0, f"seed must be >= 0 (got {seed})")
    require(eval_every >= 1, f"eval_every must be >= 1 (got {eval_every})")
    require(eval_batch_size >= 1, f"eval_batch_size must be >= 1 (got {eval_batch_size})")
    require(loop in ("auto", "step", "scan"), f"loop must be auto, step or scan (got '{loop}')")
    require(num_seeds >= 1, f"num_seeds must be >= 1 (got {num_seeds})")
    if lrs and num_seeds % len(lrs):
        raise ConfigError(
            f"train.lrs gives {len(lrs)} learning rates for train.num_seeds={num_seeds} copies; "
            f"num_seeds must be a multiple of it (copy i trains at lrs[i % {len(lrs)}]), e.g. "
            f"train.num_seeds={len(lrs) * max(1, num_seeds // len(lrs))}, or lrs=[] to use "
            f"optim.lr for all")
    require(all(lr > 0 for lr in lrs), f"every entry of lrs must be > 0 (got {list(lrs)})")
    require(scan_unroll >= 1, f"scan_unroll must be >= 1 (got {scan_unroll})")
    require(nan_policy in ("raise", "skip"), f"nan_policy must be raise or skip (got '{nan_policy}')")
    return TrainConfig(epochs, batch_size, seed, shuffle, drop_last, eval_every, eval_train,
                       eval_batch_size, loop, compile_cache, num_seeds, tuple(lrs), scan_unroll,
                       nan_policy)


@dataclass(frozen=True)
class Setup:
    """Everything built from a config before any data is loaded or anything compiled."""

    model: nn.Module
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    reg: regularizers.Regularization
    dataset: data_splits.DataConfig
    train: TrainConfig
    loop: str
    steps_per_epoch: int
    lr_scales: Optional[tuple]  # per copy (train.num_seeds > 1): its lr / optim.lr
    checkpoint: CheckpointConfig
    stopper: Optional[early_stopping.Stopper] = None  # None: train for train.epochs
    objective: objectives.Objective = objectives.OBJECTIVES["classify"]
    phases: tuple = ()  # sda/dbn: the model config of each greedy pretraining phase
    full_batch: bool = False  # optim is a full-batch method (lbfgs, cg): one step per epoch
    transform: Optional[preprocess.Transform] = None  # dataset.preprocess, fitted on the data
    prune: Optional[pruning.PruneConfig] = None  # sweeps: dlrun's median rule (None: off)
    mesh: Optional[jax.sharding.Mesh] = None  # data parallel over its devices (dlrun.distributed)
    loggers: tuple = ()  # dlrun.tracking.LoggerSpec of each selected logger (logger=[...])

    @property
    def copies(self) -> int:
        return self.train.num_seeds

    @property
    def seeds(self) -> list[int]:
        return [self.train.seed + i for i in range(self.copies)]

    @property
    def acc_size(self) -> int:
        return ACC_HEAD + len(self.objective.metrics)

    def select_key(self, splits) -> str:
        """The record key that picks the best epoch: the objective's metric on val, else test."""
        return f"{'val' if 'val' in splits else 'test'}_{self.objective.select}"


def build_setup(cfg: DictConfig) -> Setup:
    """Validate the whole config and build its components; raises ConfigError on bad input."""
    unknown = sorted(set(cfg) - set(TOP_LEVEL_KEYS))
    require(not unknown, f"unknown top-level key(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(TOP_LEVEL_KEYS)}")
    for key in TOP_LEVEL_KEYS:
        require(key in cfg or key in OPTIONAL_KEYS, f"the config has no '{key}' node")
    tc = build("train", {"train": train_config}, {"name": "train", **cfg.train})
    ds = build("dataset", data_splits.DATASETS, cfg.dataset)
    if tc.batch_size == 0:  # full batch: one step per epoch on the whole training split
        tc = dataclasses.replace(tc, batch_size=ds.sizes()[0], drop_last=False)
    data_splits.check_batch_size(ds, tc.batch_size)
    reg = regularizers.build_all(cfg.get("regularizer") or {})  # regularizer=[]: none
    model = build("model", models.MODELS, cfg.model, num_classes=NUM_CLASSES, dropout=reg.dropout)
    n_train, _, _ = ds.sizes()
    full_batch = cfg.optim.name in optim.FULL_BATCH
    if full_batch:  # one line-searched iteration on the whole training split per epoch
        require(objectives.of(model).name != "cd",
                f"optim={cfg.optim.name} minimises an objective by line search; an RBM's CD "
                f"update is not the gradient of one: use optim=sgd")
        require(not reg.update_steps,
                f"optim={cfg.optim.name} line-searches the objective, which a regularizer acting "
                f"on the updates (weight_decay, max_norm) would change behind its back: use "
                f"regularizer=l2 or l1 (part of the objective)")
        require(not tc.lrs, f"train.lrs cannot scale optim={cfg.optim.name} (its line search "
                            f"picks the step); sweep optim.lr with -m instead")
        tc = dataclasses.replace(tc, batch_size=n_train, drop_last=False, shuffle=False)
    steps = steps_per_epoch(n_train, tc.batch_size, tc.drop_last)
    require(steps * tc.epochs < 2**31,
            f"train.epochs ({tc.epochs}) x {steps} steps per epoch overflows the int32 step "
            f"counter; use at most {(2**31 - 1) // steps} epochs")
    lr_of = build("schedule", optim.SCHEDULES, cfg.schedule, steps_per_epoch=steps,
                  total_steps=steps * tc.epochs)
    base = build("optim", optim.OPTIMIZERS, cfg.optim, schedule=lr_of)
    lr_schedule = lr_of(float(cfg.optim.lr))
    tx = optim.make_optimizer(base, list(reg.update_steps), lr_schedule)
    loop = tc.loop if tc.loop != "auto" else ("scan" if model.scan_friendly else "step")
    scales = None
    if tc.num_seeds > 1:
        lr = float(cfg.optim.lr)
        require(lr > 0, "train.num_seeds > 1 needs optim.lr > 0")
        require(not tc.lrs or cfg.optim.name != "rprop",
                "train.lrs cannot scale rprop (its step sizes adapt and are clipped on their own "
                "scale); sweep optim.lr with -m instead")
        # copy i: seed train.seed + i at lrs[i % len(lrs)] (a seeds x learning rates grid)
        scales = (tuple(tc.lrs[i % len(tc.lrs)] / lr for i in range(tc.num_seeds)) if tc.lrs
                  else (1.0,) * tc.num_seeds)
    ck = build("checkpoint", {"checkpoint": checkpoint_config},
               {"name": "checkpoint", **(cfg.get("checkpoint") or {})})
    stopper = build("early_stopping", early_stopping.STOPPERS,
                    cfg.get("early_stopping") or {"name": "none"})
    require(stopper is None or ds.sizes()[1] > 0,
            f"early_stopping={cfg.early_stopping.name if stopper else ''} needs a validation "
            f"split (dataset.val_size > 0; the seed presets have none), so that it never selects "
            f"on the test set")
    node = OmegaConf.to_container(cfg.model, resolve=True)
    phases = tuple(models.pretraining_phases(node))
    knn = isinstance(model, models.NearestNeighbours)
    if ds.preprocess != "none":
        require(objectives.of(model).name == "classify" and not phases,
                f"dataset.preprocess={ds.preprocess} is for classifiers trained directly; "
                f"model={node['name']} models pixel intensities in [0, 1] (or pretrains on them)")
        require(ds.preprocess != "pca" or isinstance(model, (models.Dense, models.NearestNeighbours)),
                "dataset.preprocess=pca keeps fewer dimensions than pixels, so the input is no "
                "longer an image: use it with logreg, mlp or knn, or use zca (image-shaped)")
    require(not (ds.augment and knn), "dataset.augment does not apply to knn, which has no "
                                      "training steps")
    require(not knn or (tc.num_seeds == 1 and stopper is None),
            "model=knn has no training: train.num_seeds and early_stopping do not apply to it "
            "(knn is deterministic; compare k with -m model.k=1,3,5)")
    require(not phases or tc.num_seeds == 1,
            f"model={node['name']} pretrains layer by layer; train.num_seeds > 1 is not supported "
            f"for it (sweep train.seed with -m instead)")
    prune = build("prune", {"prune": pruning.prune_config},
                  {"name": "prune", **(cfg.get("prune") or {})})
    require(not prune.enabled or (tc.num_seeds == 1 and not knn),
            "prune.enabled=true prunes whole trials; it does not apply to train.num_seeds > 1 "
            "copies or to knn (no epochs)")
    loggers = tracking.build_all(cfg.get("logger"))  # a missing package stops the run here
    dist = distributed.parse(cfg.get("dist"))
    distributed.initialize(dist)  # multi-process: before anything below touches the backend
    many = distributed.processes() > 1
    require(not many or not (phases or knn or prune.enabled),
            f"dist.enabled=true (several processes) supports models trained in one run; not "
            f"model={node['name']} (pretraining phases or knn) or prune.enabled=true")
    mesh = None if knn else distributed.make_mesh(
        dist, tc.batch_size, "the full batch (the whole training split)"
        if full_batch or cfg.train.batch_size == 0 else "train.batch_size")
    return Setup(model, tx, lr_schedule, reg, ds, tc, loop, steps, scales, ck, stopper,
                 objectives.of(model), phases, full_batch, prune=prune if prune.enabled else None,
                 mesh=mesh, loggers=loggers)


def enable_compile_cache(path: Path) -> None:
    """Keep every compiled XLA program in `path` (JAX's persistent compilation cache), so a
    second run of the same config loads its programs instead of compiling them."""
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: optimizer steps taken
    extra: dict = {}  # the model's other variable collections ('frozen', 'chains'; see models.py)


def init_state(setup: Setup, key: jax.Array) -> TrainState:
    x = jnp.zeros((1, 28, 28, 1), jnp.float32)
    if setup.transform is not None:
        x = setup.transform(x)
    variables = dict(setup.model.init({"params": key, "sample": key, "dropout": key}, x, train=False))
    params = variables.pop("params")
    return TrainState(params, fresh_buffers(setup.tx.init(params)), jnp.zeros((), jnp.int32), variables)


def fresh_buffers(tree):
    """`tree` with every array in a buffer of its own: some optax states (lbfgs) start with one
    zero array in two places, and the step donates its inputs, which must not alias."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def model_variables(state: TrainState) -> dict:
    """What model.apply takes: the parameters and the model's other collections."""
    return {"params": state.params, **state.extra}


# ---- the training step: one pure function, jitted once -------------------------------------
def make_train_step(setup: Setup, scale: Optional[jax.Array] = None) -> Callable:
    """(state, acc, x, y, idx, w, key) -> (state, acc).

    scale: multiplies the optimizer's updates (a per-copy learning rate ratio under vmap;
    exact for every optimizer in conf/optim, whose updates are proportional to the lr).

    idx (B,) int32 row indices into the device-resident split x (N, 28, 28, 1) uint8, y (N,);
    w (B,) float32 example weights (0 for the padding of a partial last batch).
    acc (setup.acc_size,) float32 running sums over the epoch: [examples, non-finite steps,
    first non-finite step (NO_STEP if none), then each of the objective's metrics (e.g.
    cross-entropy and errors)]. The loss and metrics come from the model's objective
    (dlrun.objectives); collections the model updates (PCD's chains) are carried in state.extra.

    A step whose loss or gradients are not finite changes nothing (parameters, optimizer state
    and the sums stay as they were) and is counted instead; train.nan_policy decides after the
    epoch whether the run stops (raise) or goes on (skip).
    """
    model, tx, penalty, objective = setup.model, setup.tx, setup.reg.penalty, setup.objective
    ds = setup.dataset
    mutable = list(getattr(model, "mutable", ()))

    def step(state: TrainState, acc, x, y, idx, w, key):
        xb, yb = data_splits.pixels(x[idx]), y[idx]  # (B, 28, 28, 1) float32, (B,)
        step_key = jax.random.fold_in(key, state.step)
        rngs = {"dropout": step_key, "sample": jax.random.fold_in(step_key, 1)}
        if ds.augment:
            xb = preprocess.augment(xb, jax.random.fold_in(step_key, 2), ds.augment, ds.max_shift,
                                    ds.max_scale, ds.elastic_alpha, ds.elastic_sigma)
        if setup.transform is not None:
            xb = setup.transform(xb)

        def loss_fn(params):
            variables = {"params": params, **state.extra}
            if mutable:
                out, updated = model.apply(variables, xb, train=True, rngs=rngs, mutable=mutable)
            else:
                out, updated = model.apply(variables, xb, train=True, rngs=rngs), {}
            loss, metrics = objective.per_example(model, out, yb)  # (B,), (K, B)
            return jnp.sum(w * loss) / jnp.sum(w) + penalty(params), (metrics @ w, updated)

        (loss, (sums, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if setup.full_batch:  # line searches evaluate the same objective at trial points
            updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss,
                                           grad=grads, value_fn=lambda p: loss_fn(p)[0])
        else:
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if scale is not None:
            updates = jax.tree.map(lambda u: u * scale, updates)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        extra = {**state.extra, **keep(dict(updated), {k: state.extra[k] for k in updated})}
        sums = jnp.where(finite, jnp.concatenate([jnp.sum(w)[None], sums]), 0.0)
        first_bad = jnp.where(finite, NO_STEP, state.step.astype(jnp.float32))
        acc = jnp.concatenate([acc[:1] + sums[:1], acc[1:2] + (1.0 - finite),
                               jnp.minimum(acc[2:3], first_bad), acc[3:] + sums[1:]])
        return TrainState(params, opt_state, state.step + 1, extra), acc

    return step


def epoch_acc(setup: Setup, copies: Optional[int] = None) -> jax.Array:
    """The step's accumulator at the start of an epoch (one per copy when copies is given)."""
    acc = jnp.zeros(setup.acc_size).at[2].set(NO_STEP)
    return acc if copies is None else jnp.tile(acc, (copies, 1))


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer steps per pass over n examples: full batches only, or with the partial one."""
    return n // batch_size if drop_last else -(-n // batch_size)


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


def make_epoch_runner(setup: Setup, split: data_splits.Split, key: jax.Array) -> tuple[Callable, float]:
    """Compile the epoch for the chosen loop form; return (run_epoch, compile_s).

    run_epoch dispatches asynchronously and returns (state, acc, steps) without a host sync.
    With train.num_seeds = N > 1, `key` holds N keys, state and acc have a leading copy axis,
    and the step is jax.vmap-ed over the copies: one compiled program trains all N, each with
    its own initialisation, data order, dropout and learning rate, sharing the data on device.
    """
    tc = setup.train
    batched = setup.copies > 1

    def order(k, e):
        return epoch_order(jax.random.fold_in(k, e), split.n, tc.batch_size, tc.shuffle, tc.drop_last)

    if batched:
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
    else:
        dropout_key, order_key = jax.random.split(key)
        step = make_train_step(setup)
        order_fn = jax.jit(lambda e: order(order_key, e))

    def scan_epoch(state, acc, x, y, idx, w, key):
        def body(carry, batch):
            return step(*carry, x, y, *batch, key), None
        return jax.lax.scan(body, (state, acc), (idx, w), unroll=tc.scan_unroll)[0]

    def one_step(state, acc, x, y, idx, w, key, i):
        return step(state, acc, x, y, idx[i], w[i], key)

    fn = scan_epoch if setup.loop == "scan" else one_step
    t0 = time.perf_counter()
    mesh, x, y = setup.mesh, split.x, split.y
    jit = partial(jax.jit, donate_argnums=(0, 1))
    if mesh is not None:  # data parallel: batch rows split along `data`, all else replicated
        x, y, dropout_key = distributed.replicate(mesh, (x, y, dropout_key))
        local_order = order_fn
        order_fn = lambda e: distributed.shard_batch(mesh, local_order(e))  # noqa: E731
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        batch = distributed.batch_sharding(mesh, 3 if batched else 2)
        jit = partial(jit, in_shardings=(rep, rep, rep, rep, batch, batch, rep)
                      + ((rep,) if setup.loop == "step" else ()), out_shardings=rep)
    idx0, w0 = order_fn(0)
    key0 = jax.random.key(0)
    state0 = jax.eval_shape(lambda: init_states(setup, jax.random.split(key0, setup.copies)
                                                if batched else key0))
    args = [state0, epoch_acc(setup, setup.copies if batched else None), x, y, idx0, w0, dropout_key]
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


# ---- evaluation ------------------------------------------------------------------------------
def make_evaluator(model: nn.Module, batch: int, copies: int = 1,
                   transform: Optional[preprocess.Transform] = None
                   ) -> Callable[[dict, data_splits.Split], dict]:
    """(variables, split) -> {metric: mean over the split} for each of the model's objective's
    metrics (classifiers: 'loss', 'error'), in eval mode (no dropout, no corruption); with
    copies > 1, the variables have a leading copy axis and each value is an array (copies,).

    Scan-friendly (dense) models evaluate a whole split in one jitted call, a lax.map over
    chunks of `batch` (radford_logreg: 70,000 images in 9 ms instead of 76 ms as 70 calls);
    convnets keep one call per chunk, as XLA:CPU runs convolutions inside loops far slower.
    """

    objective = objectives.of(model)

    def chunk(variables, x, y):  # x (batch, 28, 28, 1) uint8, y (batch,) with -1 = padding
        x = data_splits.pixels(x)
        out = model.apply(variables, x if transform is None else transform(x), train=False)
        _, metrics = objective.per_example(model, out, y)  # (K, batch)
        return metrics @ (y >= 0).astype(jnp.float32)

    if copies > 1:
        chunk = jax.vmap(chunk, in_axes=(0, None, None))  # -> (copies, 2)

    @jax.jit
    def whole(params, x, y):
        xs, ys = x.reshape(-1, batch, *x.shape[1:]), y.reshape(-1, batch)
        return jax.lax.map(lambda c: chunk(params, *c), (xs, ys)).sum(0)

    chunk_jit = jax.jit(chunk)

    def evaluate(variables: dict, split: data_splits.Split) -> dict:
        if model.scan_friendly:
            total = whole(variables, split.x, split.y)
        else:
            total = sum(chunk_jit(variables, split.x[s:s + batch], split.y[s:s + batch])
                        for s in range(0, split.x.shape[0], batch))
        sums = np.moveaxis(np.asarray(total, np.float64), -1, 0)
        return {name: value / split.n for name, value in zip(objective.metrics, sums)}

    return evaluate


# ---- the run ---------------------------------------------------------------------------------
def train_and_evaluate(cfg: DictConfig, workdir: str, started_at: Optional[float] = None,
                       on_start: Callable[[], None] = lambda: None, resume: bool = False,
                       stop: Optional[StopRequest] = None, init_from: Optional[dict] = None,
                       hint_dir: Optional[Path] = None, splits: Optional[dict] = None,
                       peers_dir: Optional[Path] = None) -> dict:
    """Train the configured model, writing metrics, checkpoints and parameters into `workdir`.

    Validates the config and loads the data first (DlrunError before anything is written),
    then calls `on_start`. Returns the summary (also written to workdir/summary.json).
    resume=True continues the run in `workdir` from its newest checkpoint (dlrun.checkpoint);
    `stop` (an installed StopRequest) ends the run at a safe point with a checkpoint
    (Interrupted). With train.num_seeds = N > 1 the N copies train in one program
    (make_epoch_runner) and each writes a complete run directory workdir/seed_<seed>/;
    workdir/summary.json then holds the mean and spread over the copies.

    init_from ({collection: {layer name: arrays}}) replaces those layers of a fresh start's
    variables (the pretrained layers of sda/dbn); sda/dbn run their pretraining phases first, as
    runs of their own in workdir/pretrain_<i>/ (see `pretrain`). hint_dir is the directory a
    stop message tells the user to resume (the top-level run's, for a phase); splits: data
    already loaded by the caller. peers_dir: the sweep directory whose finished trials
    prune.enabled compares this run with (dlrun.pruning; the CLI passes it in a multirun).
    """
    started_at = started_at or time.perf_counter()
    stop = stop or StopRequest()
    setup = build_setup(cfg)
    if setup.prune is not None and peers_dir is None:
        raise ConfigError("prune.enabled=true compares the trials of a sweep: run it with -m "
                          "(dlrun -m ... prune.enabled=true)")
    distributed.expect_exchange()
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(workdir)
    scratch = None
    if not distributed.is_primary():  # process k > 0: process 0 writes the run (and resumes it)
        scratch = tempfile.TemporaryDirectory(prefix="dlrun-process-")
        run_dir, resume = Path(scratch.name), False
        on_start = lambda: log.info("process %d of %d: process 0 writes the run directory",  # noqa: E731
                                    jax.process_index(), jax.process_count())
    if resume:
        info = read_run_info(run_dir)
        if info.get("config_hash") != config_hash(config):
            raise ConfigError(f"cannot resume {run_dir}: its config differs in "
                              f"{config_diff(info['config'], config)}; only train.epochs may change")
    elif has_checkpoint(run_dir):
        raise FileError(f"{run_dir} already holds a checkpointed run; resume it (resume=true) or "
                        f"train into a new directory")
    splits = splits or data_splits.load_splits(setup.dataset, setup.train.eval_batch_size)
    if setup.dataset.preprocess != "none":  # fitted on the training split only
        train_split = splits["train"]
        setup = dataclasses.replace(setup, transform=preprocess.fit(
            setup.dataset.preprocess, np.asarray(train_split.x[:train_split.n]),
            setup.dataset.pca_eps, setup.dataset.pca_dims))
    if setup.train.compile_cache:
        enable_compile_cache(datasets.default_cache_dir() / "xla")
    lock = RunLock(run_dir) if resume else None
    checkpoints = None
    start = None
    # a stack stopped while pretraining has no checkpoint of its own yet: it resumes its phases
    restoring = resume and (has_checkpoint(run_dir) or not setup.phases)
    try:
        if restoring:  # every check before anything is written or logged into the run
            checkpoints = Checkpoints(run_dir, setup.checkpoint.keep)
            start = restore(setup, config, run_dir, checkpoints)
            if start is None:  # finished already
                log.info("resume: %s already finished its %d epochs; nothing to do", run_dir,
                         setup.train.epochs)
                return agree_start(setup, config, None, json.loads(
                    (run_dir / "summary.json").read_text()))[1]
        if not resume:
            write_run_info(run_dir, config, __version__)
            lock = RunLock(run_dir)
        on_start()
        if setup.transform is not None:
            setup.transform.save(run_dir / "preprocess.npz")
            log.info("preprocess %s fitted on the training split: %d input dimensions",
                     setup.transform.name, setup.transform.dims)
        if isinstance(setup.model, models.NearestNeighbours):
            return fit_knn(setup, run_dir, splits, started_at, cfg.get("plots", True))
        if start is None:
            if setup.phases:
                init_from = pretrain(setup, cfg, run_dir, splits, stop, hint_dir or run_dir)
            checkpoints = Checkpoints(run_dir, setup.checkpoint.keep)
            start = fresh_start(setup, init_from)
        start, finished = agree_start(setup, config, start)
        if finished is not None:  # (another process) process 0 found the run finished
            return finished
        return _train(setup, cfg, config, run_dir, splits, checkpoints, started_at, start, stop,
                      hint_dir or run_dir, peers_dir)
    finally:
        if checkpoints is not None:
            checkpoints.close()
        if lock is not None:
            lock.release()
        if scratch is not None:
            scratch.cleanup()


def agree_start(setup: Setup, config: dict, start: Optional["Start"],
                finished: Optional[dict] = None) -> tuple[Optional["Start"], Optional[dict]]:
    """(start, finished summary) as process 0 has them, on every process of a multi-process run
    (one process: as given). A fresh start is the same everywhere (same seed); a resumed one is
    read from the checkpoint by process 0 alone and its arrays broadcast; a finished run's
    summary is passed on, so every process returns it."""
    if distributed.processes() == 1:
        return start, finished
    n = setup.copies
    resumed = distributed.is_primary() and finished is None and bool(start.progress.resumed_at)
    message = distributed.exchange(
        None if not distributed.is_primary() else {"finished": finished} if finished is not None
        else {"progress": start.progress.to_meta(config, 0) if resumed else None,
              "acc": start.acc is not None})
    if message.get("finished") is not None:
        return None, message["finished"]
    if message["progress"] is None:
        return start, None
    fresh_acc = epoch_acc(setup, n if n > 1 else None)
    tree = distributed.broadcast({"state": start.state, "rng": jax.random.key_data(start.train_key),
                                  "acc": fresh_acc if start.acc is None else start.acc,
                                  "best_params": start.best_params})
    progress = start.progress if distributed.is_primary() else Progress.from_meta(message["progress"], n)
    return Start(jax.tree.map(jnp.asarray, tree["state"]), jax.random.wrap_key_data(tree["rng"]),
                 jnp.asarray(tree["acc"]) if message["acc"] else None, host_copy(tree["best_params"]),
                 progress), None


class Start(NamedTuple):
    """Where training starts: the state, the train key, the partial epoch's sums (None at an
    epoch boundary), the best parameters so far, and the Progress (dlrun.checkpoint)."""

    state: TrainState
    train_key: jax.Array
    acc: Optional[jax.Array]
    best_params: dict
    progress: Progress


def fresh_start(setup: Setup, init_from: Optional[dict] = None) -> Start:
    init_key, train_key = run_keys(setup, jax.random.key(setup.train.seed))
    state = init_states(setup, init_key)
    if init_from:
        state = with_layers(setup, state, init_from)
    return Start(state, train_key, None, host_copy(state.params), Progress(setup.copies))


def with_layers(setup: Setup, state: TrainState, layers: dict) -> TrainState:
    """`state` (one copy) with the named layers of each collection replaced by `layers`
    ({collection: {layer name: tree of arrays}}, shapes checked) and a fresh optimizer state."""
    variables = model_variables(state)
    for collection, named in layers.items():
        for name, tree in named.items():
            old = variables[collection][name]
            shapes = lambda t: jax.tree.map(np.shape, t)
            if shapes(old) != shapes(tree):
                raise FileError(f"pretrained layer {collection}/{name} has shapes {shapes(tree)}, "
                                f"the model expects {shapes(old)}")
            variables[collection] = {**variables[collection],
                                     name: jax.tree.map(jnp.asarray, tree)}
    params = variables.pop("params")
    return TrainState(params, fresh_buffers(setup.tx.init(params)), state.step, variables)


def phase_config(cfg: DictConfig, model_node: dict, settings: dict) -> DictConfig:
    """The config of one pretraining phase of an sda/dbn run: the layer's model, plain SGD at
    pretrain_lr for pretrain_epochs in batches of pretrain_batch_size, no regularizer, no early
    stopping; data, seed, loop and checkpoint settings as the run's."""
    sub = OmegaConf.to_container(cfg, resolve=True)
    sub.update(model=model_node, optim={"name": "sgd", "lr": settings["pretrain_lr"]},
               schedule={"name": "constant"}, regularizer={}, early_stopping={"name": "none"},
               logger={},  # the phases' metrics are in pretrain_<i>/metrics.jsonl only
               resume=False, prune={"enabled": False})
    sub["train"] = {**sub["train"], "epochs": settings["pretrain_epochs"], "num_seeds": 1, "lrs": [],
                    "batch_size": settings["pretrain_batch_size"], "eval_train": False}
    return OmegaConf.create(sub)


def pretrain(setup: Setup, cfg: DictConfig, run_dir: Path, splits: dict, stop: StopRequest,
             hint_dir: Path) -> dict:
    """Greedy layer-wise pretraining (sda, dbn): phase i trains layer i (an autoencoder or RBM)
    on the frozen layers 0..i-1 pretrained before it, as a complete run of its own in
    run_dir/pretrain_<i>/ (metrics, parameters, checkpoints). A phase that finished is read back,
    one with a checkpoint is resumed, so a stopped stack resumes where it stopped.
    Returns the pretrained layers, {'params': {'hidden_<i>': ...}}, to start fine-tuning from."""
    settings = models.pretraining_settings(OmegaConf.to_container(cfg.model, resolve=True))
    layers: dict = {}
    for i, node in enumerate(setup.phases):
        sub_dir = run_dir / f"pretrain_{i}"
        if not (sub_dir / "summary.json").is_file():
            log.info("pretraining layer %d of %d (%s, %d hidden units) in %s", i + 1,
                     len(setup.phases), node["name"], node["hidden"], sub_dir.name)
            ownership.mkdirs(sub_dir)
            train_and_evaluate(phase_config(cfg, node, settings), str(sub_dir),
                               resume=has_checkpoint(sub_dir), stop=stop,
                               init_from={"frozen": dict(layers)} if layers else None,
                               hint_dir=hint_dir, splits=splits)
        else:
            log.info("pretraining layer %d of %d: done before, read from %s", i + 1,
                     len(setup.phases), sub_dir.name)
        layers[f"hidden_{i}"] = load_arrays(sub_dir / "params.pkl")[f"hidden_{i}"]
    log.info("fine-tuning the pretrained stack as a classifier")
    return {"params": layers}


def fit_knn(setup: Setup, run_dir: Path, splits: dict, started_at: float, draw: bool) -> dict:
    """model=knn: memorise the training split (saved as params.pkl: {'train_x' uint8,
    'train_y'}), classify the val/test splits and write one metrics record and the summary."""
    model, tc, train = setup.model, setup.train, splits["train"]
    n, batch = train.n, tc.eval_batch_size
    features = lambda x: (data_splits.pixels(x) if setup.transform is None
                          else setup.transform(data_splits.pixels(x))).reshape(x.shape[0], -1)
    memory_x, memory_y = features(train.x[:n]), train.y[:n]
    predict = jax.jit(lambda memory_x, memory_y, queries: model.predict(memory_x, memory_y,
                                                                          features(queries)))
    log.info("model knn (k %d, metric %s): %d training images memorised; optim, schedule and "
             "train.epochs do not apply", model.k, model.metric, n)
    record = {"epoch": 1, "step": 0}
    t0 = time.perf_counter()
    for name in ("val", "test"):
        if name in splits:
            split = splits[name]
            predicted = np.concatenate([np.asarray(predict(memory_x, memory_y, split.x[s:s + batch]))
                                        for s in range(0, split.x.shape[0], batch)])[:split.n]
            record[f"{name}_error"] = float(np.mean(predicted != np.asarray(split.y[:split.n])))
    eval_s = time.perf_counter() - t0
    record["eval_seconds"] = eval_s
    writer = RunWriter(run_dir)
    writer.append_metrics(record)
    writer.save_params("params.pkl", {"train_x": np.asarray(train.x[:n]), "train_y": np.asarray(memory_y)})
    select = setup.select_key(splits)
    device = jax.devices()[0]
    total_s = time.perf_counter() - started_at
    summary = {"final": record, "best": record, "best_selected_on": select, "epochs": 1,
               "loop": "none", "n_params": 0,
               "timings": {"compile_seconds": 0.0, "start_to_first_step_seconds": 0.0,
                           "total_seconds": total_s, "train_seconds": 0.0, "eval_seconds": eval_s,
                           "steady_epoch_seconds": 0.0, "steady_examples_per_second": 0.0},
               "device": {"platform": device.platform, "kind": device.device_kind,
                          "count": jax.device_count()}, "versions": versions(),
               "data": data_splits.data_record(setup.dataset)}
    writer.save_summary(summary)
    if draw:  # predicted holds the test split's predictions
        from dlrun import plots
        test = splits["test"]
        names = plots.write_all(run_dir, "classify", [], "error", {},
                                np.asarray(test.x[:test.n, ..., 0], np.float32) / 255.0,
                                np.asarray(test.y[:test.n]), predict=lambda x: predicted)
        log.info("pictures: %s", ", ".join(names))
    log.info(format_end(summary))
    return summary


def restore(setup: Setup, config: dict, run_dir: Path, checkpoints: Checkpoints) -> Optional[Start]:
    """The Start stored in the run's newest checkpoint, checked against the config; None if the
    run has finished exactly train.epochs epochs (nothing to do)."""
    n, epochs = setup.copies, setup.train.epochs
    if checkpoints.latest_step() is None:
        raise FileError(f"{run_dir} has no complete checkpoint (it stopped before its first "
                        f"one); start it again without resume")
    meta = checkpoints.read_meta()
    if meta.get("config_hash") != config_hash(config):
        raise FileError(f"the checkpoint in {checkpoints.dir} was written by another config: "
                        f"{config_diff(meta.get('config') or {}, config)}; it does not belong "
                        f"to this run directory")
    progress = Progress.from_meta(meta, n)
    if progress.epoch > epochs or (progress.epoch == epochs and progress.step_in_epoch):
        raise ConfigError(f"{run_dir} has already trained {progress.epoch} epochs; "
                          f"train.epochs={epochs} is fewer (give at least "
                          f"{progress.epoch + bool(progress.step_in_epoch)})")
    finished = progress.epoch == epochs or progress.stopped_early is not None
    if finished and (run_dir / "summary.json").is_file():
        return None
    blank = fresh_start(setup)
    tree = checkpoints.restore_state({"state": blank.state, "acc": epoch_acc(setup, n if n > 1 else None),
                                      "rng": jax.random.key_data(blank.train_key),
                                      "best_params": blank.best_params})
    position = progress.epoch + progress.step_in_epoch / setup.steps_per_epoch
    progress.resumed_at.append(round(position, 6))
    return Start(tree["state"], jax.random.wrap_key_data(tree["rng"]),
                 tree["acc"] if progress.step_in_epoch else None, tree["best_params"], progress)


def _train(setup: Setup, cfg: DictConfig, config: dict, run_dir: Path, splits: dict,
           checkpoints: Checkpoints, started_at: float, start: Start, stop: StopRequest,
           hint_dir: Path, peers_dir: Optional[Path] = None) -> dict:
    """The epoch loop (_train_epochs), with its records also sent to the selected loggers and
    the live progress display (process 0 only); both are closed however the loop ends."""
    primary = distributed.is_primary()
    run_dirs = ([run_dir] if setup.copies == 1 else
                [run_dir / f"seed_{seed}" for seed in setup.seeds])
    done = start.progress
    display = progress_display(bool(cfg.get("progress", True)) and primary, setup.train.epochs,
                               setup.steps_per_epoch, setup.train.batch_size, done.epoch,
                               done.step_in_epoch)
    with tracking.RunSinks(setup.loggers if primary else (), run_dirs, config, display) as sinks:
        return _train_epochs(setup, cfg, config, run_dir, splits, checkpoints, started_at, start,
                             stop, hint_dir, peers_dir, sinks)


def _train_epochs(setup: Setup, cfg: DictConfig, config: dict, run_dir: Path, splits: dict,
                  checkpoints: Checkpoints, started_at: float, start: Start, stop: StopRequest,
                  hint_dir: Path, peers_dir: Optional[Path], sinks: tracking.RunSinks) -> dict:
    n, seeds, tc = setup.copies, setup.seeds, setup.train
    writers = ([RunWriter(run_dir)] if n == 1 else
               [RunWriter(run_dir / f"seed_{seed}") for seed in seeds])
    state, train_key, acc, best_params, progress = start
    if progress.resumed_at:
        remove_stale_temporaries(run_dir)
        for writer, history in zip(writers, progress.history):
            writer.set_metrics(history)  # drops what was written after the checkpoint
        log.info("resuming %s from its checkpoint at epoch %d, step %d of %d", run_dir,
                 progress.epoch, progress.step_in_epoch, setup.steps_per_epoch)
    run_epoch, compile_s = make_epoch_runner(setup, splits["train"], train_key)
    evaluate = make_evaluator(setup.model, tc.eval_batch_size, n, setup.transform)
    select = setup.select_key(splits)
    n_params = count_params(copy_of(state.params, 0, n))
    log.info("model %s (%d params) | optim %s, lr %g, schedule %s | regularizer %s | "
             "%s: %d train / %d val / %d test | loop %s | compile %.2fs%s",
             cfg.model.name, n_params, cfg.optim.name, cfg.optim.lr,
             cfg.schedule.name, ",".join(cfg.get("regularizer") or ["none"]), setup.dataset.name,
             splits["train"].n, splits["val"].n if "val" in splits else 0, splits["test"].n,
             setup.loop + (f", full batch ({splits['train'].n} examples per step)" if setup.full_batch else ""),
             compile_s, (f" | {n} copies (vmap), seeds {seeds[0]}-{seeds[-1]}" if n > 1 else "")
             + distributed.describe(setup.mesh))
    first_step_s = time.perf_counter() - started_at
    ck = setup.checkpoint
    last_save = time.monotonic()

    def time_due() -> bool:
        return ck.every_minutes > 0 and time.monotonic() - last_save >= 60 * ck.every_minutes

    def save(state: TrainState, acc, error: Optional[float] = None) -> None:
        nonlocal last_save
        step = int(np.asarray(state.step).reshape(-1)[0])
        progress.elapsed_seconds = elapsed_before + time.perf_counter() - started_at
        tree = {"state": state, "acc": epoch_acc(setup, n if n > 1 else None) if acc is None else acc,
                "rng": jax.random.key_data(train_key), "best_params": best_params}
        if distributed.is_primary():  # the others' state is the same (replicated)
            checkpoints.save(step, tree, progress.to_meta(config, step), error)
        progress.elapsed_seconds = elapsed_before
        last_save = time.monotonic()

    def interrupted(epoch: int, done: int) -> Interrupted:
        where = (f"after epoch {epoch - 1}" if done == 0 else
                 f"in epoch {epoch} after step {done} of {setup.steps_per_epoch}")
        if not distributed.is_primary():  # (multi-process) process 0 wrote the checkpoint
            return Interrupted(f"dlrun: process {jax.process_index()} stopped with the others "
                               f"({stop.name or 'a signal to another process'}) {where}; process "
                               f"0 wrote the checkpoint", 128 + (stop.signum or 15))
        return Interrupted(f"dlrun: stopped by {stop.name} {where}; checkpoint and metrics "
                           f"written. Resume with: dlrun resume={hint_dir.resolve()}",
                           128 + (stop.signum or 0))

    elapsed_before = progress.elapsed_seconds
    # several processes stop and pause at the same step (distributed.agreed; one process: as is)
    pause = ((lambda: sinks.step() or distributed.agreed(stop.requested or time_due()))
             if setup.loop == "step" else None)
    last_epoch = tc.epochs if progress.stopped_early is None else progress.epoch
    for epoch in range(progress.epoch + 1, last_epoch + 1):
        t0 = time.perf_counter()
        state, acc, done = run_epoch(state, epoch, acc, progress.step_in_epoch, pause)
        while done < setup.steps_per_epoch:  # paused mid-epoch: checkpoint, then stop or go on
            progress.step_in_epoch = done
            progress.epoch_seconds += time.perf_counter() - t0
            save(state, acc)
            if distributed.agreed(stop.requested):
                raise interrupted(epoch, done)
            t0 = time.perf_counter()
            state, acc, done = run_epoch(state, epoch, acc, done, pause)
        acc = np.asarray(acc, np.float64).reshape(n, setup.acc_size)  # host sync: the epoch is done
        train_s = progress.epoch_seconds + time.perf_counter() - t0
        progress.step_in_epoch, progress.epoch_seconds = 0, 0.0
        try:
            records = measure(setup, state, acc, train_s, evaluate, splits, epoch)
        except TrainingDiverged as exc:
            for i, record in enumerate(exc.records):
                writers[i].append_metrics(record)
                sinks.record(i, record)
                if progress.best[i]:
                    writers[i].save_params("best_params.pkl", copy_of(best_params, i, n))
            last = checkpoints.latest_step() if has_checkpoint(run_dir) else None
            raise TrainingDiverged(f"{exc}. The last good checkpoint is {checkpoints.dir}/{last}"
                                   if last is not None else str(exc), exc.records) from None
        acc = None
        for i, record in enumerate(records):
            progress.history[i].append(record)
            writers[i].append_metrics(record)
            sinks.record(i, record)
            log.info(("" if n == 1 else f"[seed {seeds[i]}] ") + format_record(record, tc.epochs))
            if record["nonfinite_steps"]:
                log.warning("warning: %d training steps had a non-finite loss or gradients and "
                            "were skipped (train.nan_policy=skip); try a lower optim.lr",
                            record["nonfinite_steps"])
            best = progress.best[i]
            if record.get(select) is not None and (best is None or record[select] < best[select]):
                progress.best[i] = record
                best_params = set_copy(best_params, i, n, copy_of(state.params, i, n))
        progress.epoch = epoch
        if setup.prune is not None and progress.stopped_early is None:
            own = [(e, v) for e, _, v in evaluated(progress.history[0], select)]
            found = pruning.verdict(own, pruning.finished_trials(peers_dir, run_dir, select),
                                    epoch, setup.prune)
            if found is not None:
                progress.stopped_early, progress.pruned = epoch, found
                log.info("pruned after epoch %d: best %s so far %.4g is worse than the median "
                         "%.4g of %d finished trial(s) at this epoch", epoch, select,
                         found["value"], found["median"], found["trials"])
        if setup.stopper is not None and progress.stopped_early is None and all(
                setup.stopper(evaluated(h, select)) for h in progress.history):
            progress.stopped_early = epoch
            log.info("early stopping (%s) after epoch %d; restoring the parameters of the best "
                     "epoch", cfg.early_stopping.name, epoch)
        stopping = distributed.agreed(stop.requested)  # read once: a later signal waits for the next step
        ends = epoch == tc.epochs or progress.stopped_early is not None
        if (ck.every_epochs and epoch % ck.every_epochs == 0) or time_due() or stopping or ends:
            errors = [r.get(select) for r in records]
            save(state, None, None if None in errors else float(np.mean(errors)))
        if ends:
            break
        if stopping:
            raise interrupted(epoch + 1, 0)
    total_s = elapsed_before + time.perf_counter() - started_at
    summaries = []
    for i in range(n):
        final_params = jax.device_get(copy_of(state.params, i, n))
        best_i = copy_of(best_params, i, n) if progress.best[i] else final_params
        restore_best = setup.stopper is not None and progress.best[i] is not None
        writers[i].save_params("params.pkl", best_i if restore_best else final_params)
        writers[i].save_params("best_params.pkl", best_i)
        summary = make_summary(setup, progress.history[i], progress.best[i], select, compile_s,
                               first_step_s, total_s, n_params)
        if setup.stopper is not None:  # the run's parameters are the best epoch's
            summary["early_stopping"] = {
                "method": cfg.early_stopping.name,
                "stopped_at_epoch": None if progress.pruned else progress.stopped_early,
                "restored_epoch": progress.best[i]["epoch"] if restore_best else None}
            if restore_best:
                summary["last"], summary["final"] = summary["final"], progress.best[i]
        summary["resumed_at_epochs"] = progress.resumed_at
        if progress.pruned:
            summary["pruned"] = progress.pruned
        if n > 1:
            summary.update(seed=seeds[i], lr=float(cfg.optim.lr) * setup.lr_scales[i])
            writers[i].save_summary(summary)
        summaries.append(summary)
    summary = summaries[0] if n == 1 else summarize_copies(summaries, total_s)
    summary["resumed_at_epochs"] = progress.resumed_at
    if setup.phases:  # sda/dbn: each pretraining phase's final record, from its own summary
        summary["pretraining"] = [
            {"dir": f"pretrain_{i}", "final": json.loads(
                (run_dir / f"pretrain_{i}" / "summary.json").read_text())["final"]}
            for i in range(len(setup.phases))]
    RunWriter(run_dir).save_summary(summary)
    if cfg.get("plots", True) and distributed.is_primary():
        for i, writer in enumerate(writers):
            pictures(setup, writer.dir, progress.history[i],
                     {"params": copy_of(state.params, i, n), **copy_of(state.extra, i, n)},
                     splits["test"], tc.seed + i)
    log.info(format_end(summary))
    return summary


def pictures(setup: Setup, run_dir: Path, history: list[dict], variables: dict,
             test: data_splits.Split, seed: int) -> None:
    """The run's pictures (dlrun.plots), from its final variables and the test split."""
    from dlrun import plots
    t0 = time.perf_counter()
    model, transform = setup.model, setup.transform
    images = np.asarray(test.x[:test.n, ..., 0], np.float32) / 255.0
    labels = np.asarray(test.y[:test.n])
    predict = reconstruct = gibbs = None
    if isinstance(model, models.NearestNeighbours):
        pass  # fit_knn passes its own predictions
    elif setup.objective.name == "classify":
        apply = jax.jit(lambda v, x: jnp.argmax(model.apply(
            v, x if transform is None else transform(x), train=False), -1))
        batch = setup.train.eval_batch_size
        predict = lambda x: np.concatenate([np.asarray(apply(variables, jnp.asarray(x[s:s + batch, ..., None])))
                                            for s in range(0, len(x), batch)])
    elif not getattr(model, "below", ()):  # a first layer: its input and output are pixels
        out = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)["logits"]))
        reconstruct = lambda x: np.asarray(out(variables, jnp.asarray(x[..., None])))
        if setup.objective.name == "cd":
            gibbs = plots.rbm_gibbs(variables["params"], jax.random.key(seed))
    try:
        names = plots.write_all(run_dir, setup.objective.name, history, setup.objective.select,
                                jax.device_get(variables["params"]), images, labels, predict,
                                reconstruct, gibbs, transform.pixel_space if transform else None)
    except (OSError, ValueError, RuntimeError) as exc:  # the run itself is complete and saved
        log.warning("warning: could not draw the run's pictures: %s", exc)
        return
    log.info("pictures (%.1fs): %s", time.perf_counter() - t0, ", ".join(names))


STALE_TMP = re.compile(r"^\.(.+\.(json|jsonl|pkl|npz|png|csv))\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(run_dir: Path) -> None:
    """A resumed run: the temporary files of dlrun.io's atomic writes that a kill cut short
    in an earlier session of this run, in the directories dlrun writes them into (the run's
    own, seed_<s>/, pretrain_<i>/), with mkstemp's exact names for a dlrun output
    (`.summary.json.k2j4_x9a.tmp`). Folders of the user's inside the run are not looked in."""
    for where in [run_dir, *run_dir.glob("seed_*"), *run_dir.glob("pretrain_*")]:
        for tmp in where.glob(".*.tmp") if where.is_dir() and not where.is_symlink() else ():
            if tmp.is_file() and not tmp.is_symlink() and STALE_TMP.match(tmp.name):
                tmp.unlink(missing_ok=True)


def evaluated(history: list[dict], select: str) -> list[tuple[int, int, float]]:
    """(epoch, step, error) of each record of `history` that has the selected error."""
    return [(r["epoch"], r["step"], r[select]) for r in history if r.get(select) is not None]


def set_copy(tree, i: int, copies: int, value):
    """`tree` (host numpy, leading copy axis when copies > 1) with copy i replaced by `value`."""
    value = host_copy(value)
    if copies == 1:
        return value
    for dst, src in zip(jax.tree.leaves(tree), jax.tree.leaves(value)):
        dst[i] = src
    return tree


def copy_of(tree, i: int, copies: int):
    """Copy i of a tree with a leading copy axis (the tree itself for a single run)."""
    return tree if copies == 1 else jax.tree.map(lambda a: a[i], tree)


def summarize_copies(summaries: list[dict], total_s: float) -> dict:
    """The run directory's summary over N copies: each metric of the final epoch as the mean
    over copies ('final'), its standard deviation ('final_std'), and every copy's summary."""
    finals = [s["final"] for s in summaries]
    keys = [k for k, v in finals[0].items() if isinstance(v, (int, float))]
    values = {k: [f.get(k) for f in finals] for k in keys}
    numeric = {k: np.asarray(v, np.float64) for k, v in values.items() if None not in v}
    first = summaries[0]
    timings = dict(first["timings"], total_seconds=total_s, steady_examples_per_second_all_copies=
                   first["timings"]["steady_examples_per_second"] * len(summaries))
    return {"final": {k: float(v.mean()) for k, v in numeric.items()},
            "final_std": {k: float(v.std()) for k, v in numeric.items()},
            "best": None, "best_selected_on": first["best_selected_on"],
            "epochs": first["epochs"], "loop": first["loop"], "n_params": first["n_params"],
            "copies": [{"seed": s["seed"], "lr": s["lr"], "dir": f"seed_{s['seed']}",
                        "final": s["final"], "best": s["best"]} for s in summaries],
            "timings": timings, "device": first["device"], "versions": first["versions"],
            "data": first["data"]}


def measure(setup: Setup, state: TrainState, acc: np.ndarray, train_s: float, evaluate: Callable,
            splits: dict, epoch: int) -> list[dict]:
    """Each copy's metrics record of a trained epoch (acc: its sums, (copies, acc_size)),
    evaluated on the held-out splits if due; TrainingDiverged under nan_policy=raise."""
    tc, n = setup.train, setup.copies
    step = int(np.asarray(state.step).reshape(-1)[0])
    lr = float(setup.lr_schedule(step - 1))
    scales = setup.lr_scales or (1.0,)
    names = setup.objective.metrics
    records = []
    for i, (seen, bad, _, *sums) in enumerate(acc):
        record = {"epoch": epoch, "step": step}
        record.update({f"train_{m}": v / seen if seen else float("nan") for m, v in zip(names, sums)})
        record.update({"lr": lr * scales[i], "nonfinite_steps": int(bad), "epoch_seconds": train_s,
                       "examples_per_second": seen / train_s})
        records.append(record)
    if tc.nan_policy == "raise" and acc[:, 1].any():
        i = int(np.argmax(acc[:, 1] > 0))
        first = int(acc[i, 2]) + 1  # 1-based, as the records' step counts
        copy = f" (copy seed {setup.seeds[i]})" if n > 1 else ""
        raise TrainingDiverged(
            f"training diverged at epoch {epoch}, step {first}{copy}: non-finite loss or gradients "
            f"({int(acc[i, 1])} such steps in the epoch, none applied); the run directory keeps "
            f"the metrics, best_params.pkl and checkpoints of the epochs before. Lower optim.lr, "
            f"or set train.nan_policy=skip to skip such steps and go on", records)
    if epoch % tc.eval_every == 0 or epoch == tc.epochs:
        t1 = time.perf_counter()
        evals = {}
        for name in ("val", "test"):
            if name in splits:
                evals[name] = evaluate(model_variables(state), splits[name])
        if tc.eval_train:
            evals["train_eval"] = evaluate(model_variables(state), splits["train"])
        eval_s = time.perf_counter() - t1
        for i, record in enumerate(records):
            for name, ev in evals.items():
                for metric, value in ev.items():
                    if not (name == "train_eval" and metric == "loss"):
                        record[f"{name}_{metric}"] = float(np.reshape(value, -1)[i])
            record["eval_seconds"] = eval_s
    return records


class TrainingDiverged(DlrunError):
    """train.nan_policy=raise and a step's loss or gradients were not finite."""

    keep_run_dir = True  # the CLI keeps what the run wrote before (metrics, best parameters)

    def __init__(self, message: str, records: list[dict]):
        super().__init__(message)
        self.records = records


def format_record(r: dict, epochs: int) -> str:
    """The per-epoch console line; metrics.jsonl has the full record. Keys are
    <split>_<metric>; errors print as percentages ('err'), and a held-out split's loss is left
    out when it has an error rate."""
    parts = [f"epoch {r['epoch']:>{len(str(epochs))}}/{epochs}"]
    for split in ("train", "train_eval", "val", "test"):
        for metric in ("loss", "error", "mse", "pseudo_ll"):
            key = f"{split}_{metric}"
            if key not in r or (metric == "loss" and split != "train" and f"{split}_error" in r):
                continue
            parts.append(f"{split}_err {100 * r[key]:.2f}%" if metric == "error"
                         else f"{key} {r[key]:.4g}")
    parts += [f"lr {r['lr']:.3g}", f"train {r['epoch_seconds']:.2f}s",
              f"{r['examples_per_second']:,.0f} ex/s"]
    return "  ".join(parts)


def format_end(s: dict) -> str:
    """The closing console line: final and best results, and where the time went."""
    final, best, t = s["final"], s["best"], s["timings"]
    metric = s["best_selected_on"].split("_", 1)[1]  # error (classifiers) or loss
    test, label = f"test_{metric}", "test_err" if metric == "error" else f"test_{metric}"
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.2f}%" if metric == "error" else f"{v:.4g}"
    text = f"done: final {label} {fmt(final.get(test))}"
    if "copies" in s:
        text = (f"done: {len(s['copies'])} copies, final {label} mean {fmt(final.get(test))}"
                f" (std {fmt(s['final_std'].get(test))}); each in seed_<seed>/")
    if s.get("pruned"):
        text = text.replace("done:", f"done (pruned after epoch {s['pruned']['epoch']}):", 1)
    if best:
        text += (f", best {s['best_selected_on']} {fmt(best.get(s['best_selected_on']))} at epoch "
                 f"{best['epoch']} ({label} {fmt(best.get(test))})")
    return (text + f" | {t['total_seconds']:.1f}s total: compile {t['compile_seconds']:.1f}s, "
            f"train {t['train_seconds']:.1f}s, eval {t['eval_seconds']:.1f}s")


def count_params(params: dict) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def make_summary(setup: Setup, history: list, best: Optional[dict], select: str, compile_s: float,
                 first_step_s: float, total_s: float, n_params: int) -> dict:
    epoch_s = [r["epoch_seconds"] for r in history]
    steady = epoch_s[1:] or epoch_s  # the first epoch includes warm-up
    device = jax.devices()[0]
    return {
        "final": history[-1], "best": best, "best_selected_on": select,
        "epochs": len(history), "loop": setup.loop, "n_params": n_params,
        "timings": {"compile_seconds": compile_s, "start_to_first_step_seconds": first_step_s,
                    "total_seconds": total_s, "train_seconds": sum(epoch_s),
                    "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in history),
                    "steady_epoch_seconds": float(np.median(steady)),
                    "steady_examples_per_second": float(np.median(
                        [r["examples_per_second"] for r in history[1:] or history]))},
        "device": {"platform": device.platform, "kind": device.device_kind,
                   "count": jax.device_count(), "processes": distributed.processes(),
                   "data_parallel_devices": setup.mesh.size if setup.mesh is not None else 1},
        "versions": versions(),
        "data": data_splits.data_record(setup.dataset),
    }


def versions() -> dict:
    """Installed versions of dlrun and the libraries that determine its numbers."""
    from importlib.metadata import version
    return {pkg: version(pkg) for pkg in
            ("dlrun", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "hydra-core", "numpy")}
