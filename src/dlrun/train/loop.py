"""The gradient trainer: epochs of the jitted step, each followed by the periodic actions.

`fit` is the loop; everything it does besides training is an action (dlrun.train.actions), run
in the order of `epoch_actions`. `finish` writes the parameters, the summary and the pictures.
"""
import logging
import re
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from dlrun.runs import layout, tracking
from dlrun.runs.checkpoints import Checkpoints, has_checkpoint
from dlrun.runs.console import display as progress_display, format_end
from dlrun.runs.writer import RunWriter
from dlrun.runtime import distributed
from dlrun.train.actions import Loop
from dlrun.train.actions.checkpointing import Checkpointing, interrupted
from dlrun.train.actions.evaluation import Evaluation
from dlrun.train.actions.records import BestEpoch, Console, MetricsFile, Trackers
from dlrun.train.actions.stopping import EarlyStopping, Pruning, StopSignal
from dlrun.train.epoch import make_epoch_runner
from dlrun.train.evaluate import TrainingDiverged, epoch_records, setup_evaluator
from dlrun.train.pictures import pictures
from dlrun.train.sample import sample_trained
from dlrun.train.sequences import sequence_report
from dlrun.train.state import copy_of, count_params, model_variables, saved_params
from dlrun.train.summary import make_summary, summarize_copies

log = logging.getLogger("dlrun")


def run_training(loop: Loop, cfg, checkpoints: Checkpoints, started_at: float, hint_dir: Path,
                 peers_dir: Optional[Path], acc=None) -> dict:
    """Train from loop's start (acc: a resumed partial epoch's sums) to its end; returns the summary. The loggers and the live
    progress display (process 0 only) are closed however the loop ends."""
    setup, done = loop.setup, loop.progress
    primary = distributed.is_primary()
    run_dirs = [loop.run_dir] if setup.copies == 1 else [layout.copy_dir(loop.run_dir, s) for s in setup.seeds]
    display = progress_display(bool(cfg.get("progress", True)) and primary, setup.train.epochs,
                               setup.steps_per_epoch, setup.train.batch_size, done.epoch,
                               done.step_in_epoch)
    with tracking.RunSinks(setup.loggers if primary else (), run_dirs, loop.config, display) as sinks:
        if primary and not done.resumed_at:  # a text dataset's vocab.json (resume: restore checks it)
            setup.dataset.save_with_run(loop.run_dir)
        writers = [RunWriter(d) for d in run_dirs]
        if done.resumed_at:
            continue_files(loop, writers)
        run_epoch, compile_s = make_epoch_runner(setup, loop.splits["train"], loop.train_key)
        n_params = count_params(copy_of(loop.state.params, 0, setup.copies))
        log.info(describe(setup, cfg, loop.splits, compile_s, n_params))
        first_step_s = time.perf_counter() - started_at
        saver = Checkpointing(checkpoints, started_at, done.elapsed_seconds)
        actions = epoch_actions(loop, cfg, writers, sinks, saver, peers_dir)
        fit(loop, run_epoch, actions, saver, sinks, writers, hint_dir, acc)
        total_s = saver.elapsed_before + time.perf_counter() - started_at
        return finish(loop, cfg, writers, (compile_s, first_step_s, total_s), n_params)


def epoch_actions(loop: Loop, cfg, writers, sinks, saver, peers_dir) -> tuple:
    """What runs after every epoch, in this order."""
    evaluate = setup_evaluator(loop.setup, loop.setup.copies)
    return (Evaluation(evaluate), MetricsFile(writers), Trackers(sinks), Console(), BestEpoch(),
            Pruning(peers_dir), EarlyStopping((cfg.get("early_stopping") or {}).get("name", "none")),
            StopSignal(), saver)


def fit(loop: Loop, run_epoch, actions, saver: Checkpointing, sinks, writers, hint_dir: Path,
        acc=None) -> None:
    """The loop: train each epoch (pausing mid-epoch for a timed checkpoint or a stop with
    loop=step), measure it, run the actions; stop at the end, early, or on a signal."""
    setup, progress, stop = loop.setup, loop.progress, loop.stop
    # several processes stop and pause at the same step (distributed.agreed; one process: as is)
    pause = ((lambda: sinks.step() or distributed.agreed(stop.requested or saver.time_due(loop)))
             if setup.loop == "step" else None)
    last_epoch = setup.train.epochs if progress.stopped_early is None else progress.epoch
    for epoch in range(progress.epoch + 1, last_epoch + 1):
        t0 = time.perf_counter()
        loop.state, acc, done = run_epoch(loop.state, epoch, acc, progress.step_in_epoch, pause)
        while done < setup.steps_per_epoch and not diverging(setup, acc):  # paused mid-epoch:
            # checkpoint, then stop or go on (a diverged epoch is not checkpointed: see below)
            progress.step_in_epoch = done
            progress.epoch_seconds += time.perf_counter() - t0
            saver.save(loop, acc)
            if distributed.agreed(stop.requested):
                raise interrupted(loop, epoch, done, hint_dir)
            t0 = time.perf_counter()
            loop.state, acc, done = run_epoch(loop.state, epoch, acc, done, pause)
        sums = jax.tree.map(lambda a: np.asarray(a, np.float64).reshape(setup.copies), acc)  # host sync
        train_s = progress.epoch_seconds + time.perf_counter() - t0
        progress.step_in_epoch, progress.epoch_seconds, acc = 0, 0.0, None
        try:
            loop.records = epoch_records(setup, loop.state, sums, train_s, epoch)
        except TrainingDiverged as exc:
            raise keep_diverged(loop, exc, writers, sinks, saver.checkpoints) from None
        loop.epoch = progress.epoch = epoch
        for action in actions:
            action(loop)
        if loop.ends:
            return
        if loop.stopping:
            raise interrupted(loop, epoch + 1, 0, hint_dir)


def diverging(setup, acc) -> bool:
    """nan_policy=raise and a step of this epoch so far was not finite: the step applied it
    (dlrun.train.step), so the epoch ends here, in TrainingDiverged, and is never checkpointed."""
    return setup.train.nan_policy == "raise" and bool(np.any(np.asarray(acc["nonfinite_steps"]) > 0))


def keep_diverged(loop: Loop, exc: TrainingDiverged, writers, sinks, checkpoints) -> TrainingDiverged:
    """A diverged epoch: its records and the best parameters so far are kept; the error names
    the last good checkpoint."""
    for i, record in enumerate(exc.records):
        writers[i].append_metrics(record)
        sinks.record(i, record)
        if loop.progress.best[i]:
            writers[i].save_params(layout.BEST_PARAMS, copy_of(loop.best_params, i, loop.setup.copies))
    last = checkpoints.latest_step() if has_checkpoint(loop.run_dir) else None
    return TrainingDiverged(f"{exc}. The last good checkpoint is {checkpoints.dir}/{last}"
                            if last is not None else str(exc), exc.records)


def finish(loop: Loop, cfg, writers: list[RunWriter], times: tuple, n_params: int) -> dict:
    """Write each copy's params.pkl, best_params.pkl and summary, the run's summary.json and
    pictures; return the summary."""
    setup, progress, n = loop.setup, loop.progress, loop.setup.copies
    summaries = []
    for i in range(n):
        final_params = jax.device_get(copy_of(saved_params(loop.state), i, n))
        best_i = copy_of(loop.best_params, i, n) if progress.best[i] else final_params
        restore_best = setup.stopper is not None and progress.best[i] is not None
        writers[i].save_params(layout.PARAMS, best_i if restore_best else final_params)
        writers[i].save_params(layout.BEST_PARAMS, best_i)
        summary = make_summary(setup, progress.history[i], progress.best[i], loop.select, *times, n_params)
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
        if setup.objective.name == "rnnrbm" and distributed.is_primary():  # of params.pkl's
            summary["sequences"] = sequence_report(
                setup, {"params": best_i} if restore_best else copy_of(model_variables(loop.state), i, n),
                loop.splits, writers[i].dir, setup.seeds[i], bool(cfg.get("plots", True)))
        if setup.sampler is not None and distributed.is_primary():  # sampler=hmc (an RBM)
            summary["sampler"] = sample_trained(
                setup, writers[i].dir, best_i if restore_best else final_params, loop.splits["test"],
                bool(cfg.get("plots", True)))
        if n > 1:
            summary.update(seed=setup.seeds[i], lr=float(cfg.optim.lr) * setup.lr_scales[i])
            writers[i].save_summary(summary)
        summaries.append(summary)
    summary = summaries[0] if n == 1 else summarize_copies(summaries, times[2])
    summary["resumed_at_epochs"] = progress.resumed_at
    if setup.phases:  # sda/dbn: each pretraining phase's final record, from its own summary
        summary["pretraining"] = [
            {"dir": layout.phase_dir(".", i).name,
             "final": layout.read_summary(layout.phase_dir(loop.run_dir, i))["final"]}
            for i in range(len(setup.phases))]
    RunWriter(loop.run_dir).save_summary(summary)
    if cfg.get("plots", True) and distributed.is_primary():
        for i, writer in enumerate(writers):
            pictures(setup, writer.dir, progress.history[i],
                     copy_of(model_variables(loop.state), i, n),
                     loop.splits["test"], setup.seeds[i])
    log.info(format_end(summary))
    return summary


def describe(setup, cfg, splits: dict, compile_s: float, n_params: int) -> str:
    """The run's first log line: model, optimizer, regularizers, data, loop and compile time."""
    n, seeds = setup.copies, setup.seeds
    return ("model %s (%d params) | optim %s, lr %g, schedule %s | regularizer %s | "
            "%s: %d train / %d val / %d test | loop %s | compile %.2fs%s" % (
                cfg.model.name, n_params, cfg.optim.name, cfg.optim.lr, cfg.schedule.name,
                ",".join(cfg.get("regularizer") or ["none"]), setup.dataset.name,
                splits["train"].n, splits["val"].n if "val" in splits else 0, splits["test"].n,
                setup.loop + (f", full batch ({splits['train'].n} examples per step)"
                              if setup.full_batch else ""),
                compile_s, (f" | {n} copies (vmap), seeds {seeds[0]}-{seeds[-1]}" if n > 1 else "")
                + distributed.describe(setup.mesh)))


def continue_files(loop: Loop, writers: list[RunWriter]) -> None:
    """A resumed run: metrics.jsonl as at the checkpoint, and no stale temporary files."""
    remove_stale_temporaries(loop.run_dir)
    for writer, history in zip(writers, loop.progress.history):
        writer.set_metrics(history)  # drops what was written after the checkpoint
    log.info("resuming %s from its checkpoint at epoch %d, step %d of %d", loop.run_dir,
             loop.progress.epoch, loop.progress.step_in_epoch, loop.setup.steps_per_epoch)


STALE_TMP = re.compile(r"^\.(.+\.(json|jsonl|pkl|npz|png|csv))\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(run_dir: Path) -> None:
    """A resumed run: the temporary files of dlrun.runs.atomic's atomic writes that a kill cut short
    in an earlier session of this run, in the directories dlrun writes them into (the run's
    own, seed_<s>/, pretrain_<i>/), with mkstemp's exact names for a dlrun output
    (`.summary.json.k2j4_x9a.tmp`). Folders of the user's inside the run are not looked in."""
    for where in [run_dir, *run_dir.glob(layout.COPY_DIR.format(seed="*")),
                  *run_dir.glob(layout.PHASE_DIR.format(i="*"))]:
        for tmp in where.glob(".*.tmp") if where.is_dir() and not where.is_symlink() else ():
            if tmp.is_file() and not tmp.is_symlink() and STALE_TMP.match(tmp.name):
                tmp.unlink(missing_ok=True)
