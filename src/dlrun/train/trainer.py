"""`train_and_evaluate(cfg, workdir)`: the one function the CLI calls.

It builds the Setup (pure), attaches the runtime (processes, mesh, loggers), checks the run
directory, loads the data and hands over to one of four trainers behind the same call:
knn (dlrun.train.knn), greedy pretraining then gradient training (dlrun.train.pretrain),
gradient training alone (dlrun.train.loop), or, for model=gaussian, the sampler alone
(dlrun.train.sample).
"""
import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf

from dlrun import __version__, models
from dlrun.data import preprocess
from dlrun.data import sources as datasets
from dlrun.data import splits as data_splits
from dlrun.errors import ConfigError, FileError
from dlrun.runs import layout
from dlrun.config.identity import config_diff, config_hash
from dlrun.runs.checkpoints import (Checkpoints, RunLock, has_checkpoint,
                                    read_run_info, write_run_info)
from dlrun.runtime import distributed
from dlrun.runtime.compile_cache import enable_compile_cache
from dlrun.runtime.signals import StopRequest
from dlrun.train.actions import Loop
from dlrun.train.knn import fit_knn
from dlrun.train.loop import run_training
from dlrun.train.pretrain import pretrain
from dlrun.train.sample import train_sampler
from dlrun.train.setup import Setup, attach_runtime, build_setup
from dlrun.train.start import Start, agree_start, fresh_start, restore

log = logging.getLogger("dlrun")


@dataclass
class Context:
    """What a run needs besides its config and directory (all optional).

    started_at  perf_counter at the start of the command (the run's timings count from it)
    on_start    called once the config, the data and the run directory passed every check
    resume      continue the run in workdir from its newest checkpoint (dlrun.runs.checkpoints)
    stop        an installed StopRequest: a signal ends the run at a safe point (Interrupted)
    init_from   {collection: {layer name: arrays}} replacing those layers of a fresh start
                (the pretrained layers of sda/dbn)
    hint_dir    the directory a stop message tells the user to resume (the top-level run's)
    splits      the data, already loaded (a pretraining phase shares its stack's)
    peers_dir   the sweep directory whose finished trials prune.enabled compares this run with
    """

    started_at: Optional[float] = None
    on_start: Callable[[], None] = lambda: None
    resume: bool = False
    stop: StopRequest = field(default_factory=StopRequest)
    init_from: Optional[dict] = None
    hint_dir: Optional[Path] = None
    splits: Optional[dict] = None
    peers_dir: Optional[Path] = None


def train_and_evaluate(cfg: DictConfig, workdir: str, ctx: Optional[Context] = None) -> dict:
    """Train the configured model, writing metrics, checkpoints and parameters into `workdir`.

    Validates the config and loads the data first (DlrunError before anything is written),
    then calls ctx.on_start. Returns the summary (also written to workdir/summary.json). With
    train.num_seeds = N > 1 the N copies train in one program and each writes a complete run
    directory workdir/seed_<seed>/; workdir/summary.json then holds the mean and spread.
    """
    ctx = dataclasses.replace(ctx or Context(), started_at=(ctx and ctx.started_at) or time.perf_counter())
    setup = attach_runtime(build_setup(cfg), cfg)
    if setup.prune is not None and ctx.peers_dir is None:
        raise ConfigError("prune.enabled=true compares the trials of a sweep: run it with -m "
                          "(dlrun -m ... prune.enabled=true)")
    distributed.expect_exchange()
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir, scratch = Path(workdir), None
    if not distributed.is_primary():  # process k > 0: process 0 writes the run (and resumes it)
        scratch = tempfile.TemporaryDirectory(prefix="dlrun-process-")
        run_dir = Path(scratch.name)
        ctx = dataclasses.replace(ctx, resume=False, on_start=lambda: log.info(
            "process %d of %d: process 0 writes the run directory", jax.process_index(),
            jax.process_count()))
    check_run_dir(run_dir, config, ctx.resume)
    splits = ctx.splits or data_splits.load_splits(setup.dataset, setup.train.eval_batch_size,
                                                   setup.stream)
    setup = fit_transform(setup, splits)
    if setup.train.compile_cache:
        enable_compile_cache(datasets.default_cache_dir() / "xla")
    try:
        return in_run_dir(setup, cfg, config, run_dir, splits, ctx)
    finally:
        if scratch is not None:
            scratch.cleanup()


def check_run_dir(run_dir: Path, config: dict, resume: bool) -> None:
    """resume: the run's config must be this one (train.epochs aside); otherwise the directory
    must not hold a checkpointed run."""
    if resume:
        info = read_run_info(run_dir)
        if info.get("config_hash") != config_hash(config):
            raise ConfigError(f"cannot resume {run_dir}: its config differs in "
                              f"{config_diff(info['config'], config)}; only train.epochs may change")
    elif has_checkpoint(run_dir):
        raise FileError(f"{run_dir} already holds a checkpointed run; resume it (resume=true) or "
                        f"train into a new directory")


def fit_transform(setup: Setup, splits: dict) -> Setup:
    """dataset.preprocess fitted on the training split only (the Setup otherwise unchanged)."""
    if setup.dataset.preprocess == "none":
        return setup
    train = splits["train"]
    return dataclasses.replace(setup, transform=preprocess.fit(
        setup.dataset.preprocess, np.asarray(train.x[:train.n]), setup.dataset.pca_eps,
        setup.dataset.pca_dims))


@dataclass
class Run:
    """What a trainer gets: the run's resolved config, directory, data and context, where it
    starts (a restored Start, or None for a fresh one) and its open Checkpoints (or None)."""

    config: dict
    dir: Path
    splits: dict
    ctx: Context
    start: Optional[Start] = None
    checkpoints: Optional[Checkpoints] = None


def in_run_dir(setup: Setup, cfg: DictConfig, config: dict, run_dir: Path, splits: dict,
               ctx: Context) -> dict:
    """Lock the run directory, find where training starts, and run the model's trainer."""
    lock = RunLock(run_dir) if ctx.resume else None
    run = Run(config, run_dir, splits, ctx)
    # a stack stopped while pretraining has no checkpoint of its own yet: it resumes its phases
    restoring = ctx.resume and (has_checkpoint(run_dir) or not setup.phases)
    try:
        if restoring:  # every check before anything is written or logged into the run
            run.checkpoints = Checkpoints(run_dir, setup.checkpoint.keep)
            run.start = restore(setup, config, run_dir, run.checkpoints)
            if run.start is None:  # finished already
                log.info("resume: %s already finished its %d epochs; nothing to do", run_dir,
                         setup.train.epochs)
                return agree_start(setup, config, None, layout.read_summary(run_dir))[1]
        if not ctx.resume:
            write_run_info(run_dir, config, __version__, setup.data.as_dict())
            lock = RunLock(run_dir)
        ctx.on_start()
        if setup.transform is not None:
            setup.transform.save(run_dir / layout.PREPROCESS)
            log.info("preprocess %s fitted on the training split: %d input dimensions",
                     setup.transform.name, setup.transform.dims)
        return trainer_of(setup)(setup, cfg, run)
    finally:
        if run.checkpoints is not None:
            run.checkpoints.close()
        if lock is not None:
            lock.release()


def trainer_of(setup: Setup) -> Callable[[Setup, DictConfig, Run], dict]:
    """The trainer of the model: one call, (setup, cfg, run) -> summary, for all four."""
    if isinstance(setup.model, models.NearestNeighbours):
        return train_knn
    if isinstance(setup.model, models.Gaussian):
        return train_sampler  # nothing to train: the run is sampler=hmc's (dlrun.train.sample)
    return train_stack if setup.phases else train_gradient


def train_knn(setup: Setup, cfg: DictConfig, run: Run) -> dict:
    """knn: memorise the training split and classify the held-out splits (dlrun.train.knn)."""
    return fit_knn(setup, run.dir, run.splits, run.ctx.started_at, cfg.get("plots", True))


def train_stack(setup: Setup, cfg: DictConfig, run: Run) -> dict:
    """sda, dbn: the greedy pretraining phases (dlrun.train.pretrain), then gradient training
    of the whole stack from their layers (a resumed stack past its phases: from the checkpoint)."""
    if run.start is None:
        run.ctx = dataclasses.replace(run.ctx, init_from=pretrain(setup, cfg, run.dir, run.splits, run.ctx))
    return train_gradient(setup, cfg, run)


def train_gradient(setup: Setup, cfg: DictConfig, run: Run) -> dict:
    """Epochs of the jitted step with the periodic actions (dlrun.train.loop), from the
    restored start or a fresh one (with ctx.init_from's layers)."""
    if run.start is None:
        run.checkpoints = Checkpoints(run.dir, setup.checkpoint.keep)
        run.start = fresh_start(setup, run.ctx.init_from)
    start, finished = agree_start(setup, run.config, run.start)
    if finished is not None:  # (another process) process 0 found the run finished
        return finished
    loop = Loop(setup, run.config, run.dir, run.splits, start.progress, start.state,
                start.best_params, start.train_key, run.ctx.stop, setup.select_key(run.splits))
    return run_training(loop, cfg, run.checkpoints, run.ctx.started_at, run.ctx.hint_dir or run.dir,
                        run.ctx.peers_dir, start.acc)
