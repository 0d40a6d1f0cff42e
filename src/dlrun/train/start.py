"""Where training starts: fresh (from the seed, optionally with pretrained layers) or restored
from the run's newest checkpoint, and the same start on every process of a multi-process run."""
from pathlib import Path
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dlrun.errors import ConfigError, FileError
from dlrun.runs import layout
from dlrun.config.identity import config_diff, config_hash
from dlrun.runs.checkpoints import Checkpoints, Progress, host_copy
from dlrun.runtime import distributed
from dlrun.train.setup import Setup
from dlrun.train.state import (TrainState, fresh_buffers, init_states, model_variables, run_keys,
                               saved_params)
from dlrun.train.step import epoch_acc, sums_from_array, sums_to_array


class Start(NamedTuple):
    """Where training starts: the state, the train key, the partial epoch's sums (None at an
    epoch boundary), the best parameters so far, and the Progress (dlrun.runs.checkpoints)."""

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
    return Start(state, train_key, None, host_copy(saved_params(state)), Progress(setup.copies))


def checkpoint_params(setup: Setup, run_dir: Path) -> tuple[dict, dict]:
    """(parameters, meta) of the newest complete checkpoint of `run_dir` (one copy), for
    dlrun-eval --params checkpoint on a run that stopped before it finished."""
    checkpoints = Checkpoints(run_dir)
    try:
        if checkpoints.latest_step() is None:
            raise FileError(f"{run_dir} has no complete checkpoint yet; wait for the first one "
                            f"(checkpoint.every_minutes) or use --params best")
        meta = checkpoints.read_meta()
        blank = fresh_start(setup)
        tree = checkpoints.restore_state({"state": blank.state,
                                          "acc": sums_to_array(setup, epoch_acc(setup, None)),
                                          "rng": jax.random.key_data(blank.train_key),
                                          "best_params": blank.best_params})
    finally:
        checkpoints.close()
    return saved_params(tree["state"]), meta


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
    setup.dataset.check_run(run_dir, "resuming it")  # a text dataset: the same vocabulary
    progress = Progress.from_meta(meta, n)
    if progress.epoch > epochs or (progress.epoch == epochs and progress.step_in_epoch):
        raise ConfigError(f"{run_dir} has already trained {progress.epoch} epochs; "
                          f"train.epochs={epochs} is fewer (give at least "
                          f"{progress.epoch + bool(progress.step_in_epoch)})")
    finished = progress.epoch == epochs or progress.stopped_early is not None
    if finished and layout.has_summary(run_dir):
        return None
    blank = fresh_start(setup)
    tree = checkpoints.restore_state({"state": blank.state,
                                      "acc": sums_to_array(setup, epoch_acc(setup, n if n > 1 else None)),
                                      "rng": jax.random.key_data(blank.train_key),
                                      "best_params": blank.best_params})
    position = progress.epoch + progress.step_in_epoch / setup.steps_per_epoch
    progress.resumed_at.append(round(position, 6))
    return Start(tree["state"], jax.random.wrap_key_data(tree["rng"]),
                 sums_from_array(setup, tree["acc"]) if progress.step_in_epoch else None,
                 tree["best_params"], progress)


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
                 jax.tree.map(jnp.asarray, tree["acc"]) if message["acc"] else None,
                 host_copy(tree["best_params"]),
                 progress), None
