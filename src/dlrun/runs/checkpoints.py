"""Checkpoints of the whole training state, written with Orbax, and what resuming needs.

A run directory holds:

  run.json                  the resolved config and its hash, written when training starts
  checkpoints/<step>/       Orbax checkpoints named by optimizer step: `state` (parameters,
                            optimizer state, step, RNG key, the partial epoch's sums, the best
                            parameters so far) and `meta` (JSON: epoch and position in it,
                            metrics so far, best-model tracking, config hash, timings)

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
process killed mid-write leaves no checkpoint that looks complete; the temporary remains are
removed the next time the run is opened. The newest `checkpoint.keep` checkpoints are kept, and
also the one taken at the epoch with the best validation (else test) error.

Resuming continues from the newest complete checkpoint. The config must be the one the run was
started with, except for the keys in NEUTRAL_KEYS (the run length, and settings that do not
change the numbers); `config_hash` ignores exactly those.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from dlrun.runs import layout
from dlrun.errors import ConfigError, FileError, one_line
from dlrun.runs.atomic import atomic_write_json
from dlrun.config.identity import config_hash
from dlrun.config.registry import require, setattrs

log = logging.getLogger("dlrun")
FORMAT = 1  # version of the checkpoint layout (meta["format"]); bump on incompatible changes


@dataclass(frozen=True)
class CheckpointConfig:
    """The `checkpoint` node of the config (see conf/config.yaml)."""

    every_epochs: int = 0
    every_minutes: float = 1.0
    keep: int = 2

    def __post_init__(self):
        require(self.every_epochs >= 0, f"every_epochs must be >= 0 (got {self.every_epochs}; "
                                        f"0 = not by epochs)")
        require(self.every_minutes >= 0, f"every_minutes must be >= 0 (got {self.every_minutes}; 0 = off)")
        require(self.keep >= 1, f"keep must be >= 1 (got {self.keep})")
        setattrs(self, every_epochs=int(self.every_epochs), every_minutes=float(self.every_minutes),
                 keep=int(self.keep))


# ---- run.json and the run lock --------------------------------------------------------------
def write_run_info(run_dir: Path, config: dict, version: str, data: dict) -> None:
    """run.json: the config and `data`, the dataset's description (input shape, classes), so
    that dlrun-eval and dlrun-predict rebuild the model without the training data."""
    atomic_write_json(run_dir / layout.RUN_INFO, {"format": FORMAT, "dlrun": version,
                                             "config": config, "config_hash": config_hash(config),
                                             "data": data})


def read_run_info(run_dir: Path) -> dict:
    path = run_dir / layout.RUN_INFO
    try:
        info = json.loads(path.read_text())
        if not isinstance(info.get("config"), dict):
            raise ValueError("no config")
        return info
    except FileNotFoundError:
        raise FileError(f"{run_dir} is not a dlrun run directory (no run.json); give a directory "
                        f"that a dlrun run created, e.g. outputs/<date>/<time>-<id>") from None
    except (OSError, ValueError) as exc:
        raise FileError(f"cannot read {path} ({exc}); it is damaged or not from dlrun") from None


class RunLock:
    """An exclusive lock on a run directory while a process trains in it (released by the OS
    when the process ends, however it ends), so two processes never resume the same run."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / layout.RUN_INFO
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ConfigError(f"{run_dir} is being trained by another dlrun process right now; "
                              f"wait for it to end or stop it first") from None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def is_locked(run_dir: Path) -> bool:
    """Whether a dlrun process is training in run_dir now (it holds the run's RunLock)."""
    try:
        fd = os.open(run_dir / layout.RUN_INFO, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def has_checkpoint(run_dir: Path) -> bool:
    ckpt = run_dir / layout.CHECKPOINTS
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def find_resumable(root: Path, config: dict) -> Optional[Path]:
    """The run directory under `root` with this config (up to NEUTRAL_KEYS) and the newest
    checkpoint, or None."""
    want = config_hash(config)
    found = []
    for info_path in root.rglob(layout.RUN_INFO) if root.is_dir() else []:
        run_dir = info_path.parent
        try:
            same = json.loads(info_path.read_text()).get("config_hash") == want
        except (OSError, ValueError):
            continue  # a damaged run is not a candidate; resume=PATH reports why
        if same and has_checkpoint(run_dir):
            found.append(((run_dir / layout.CHECKPOINTS).stat().st_mtime, str(run_dir)))
    return Path(max(found)[1]) if found else None


# ---- progress: everything besides the model state that a checkpoint restores ----------------
@dataclass
class Progress:
    """Where a run stands. `epoch` epochs are complete; `step_in_epoch` steps of the next one
    are taken (a mid-epoch checkpoint), with `acc` its running sums and `epoch_seconds` the
    training time spent in it so far. `history[i]` and `best[i]` are copy i's metric records and
    best record (None before the first evaluation)."""

    copies: int
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_seconds: float = 0.0
    elapsed_seconds: float = 0.0  # wall time of earlier sessions of this run
    history: list = field(default_factory=list)
    best: list = field(default_factory=list)
    resumed_at: list = field(default_factory=list)  # epochs (with fractions) resumed from
    stopped_early: Optional[int] = None  # the epoch early stopping (or pruning) ended the run at
    pruned: Optional[dict] = None  # pruning's verdict (dlrun.sweeps.pruning.Pruner), if it stopped the run

    def __post_init__(self):
        self.history = self.history or [[] for _ in range(self.copies)]
        self.best = self.best or [None] * self.copies

    def to_meta(self, config: dict, step: int) -> dict:
        return {"format": FORMAT, "config": config, "config_hash": config_hash(config),
                "step": step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "epoch_seconds": self.epoch_seconds, "elapsed_seconds": self.elapsed_seconds,
                "history": self.history, "best": self.best, "resumed_at": self.resumed_at,
                "stopped_early": self.stopped_early, "pruned": self.pruned}

    @classmethod
    def from_meta(cls, meta: dict, copies: int) -> "Progress":
        return cls(copies, meta["epoch"], meta["step_in_epoch"], meta["epoch_seconds"],
                   meta["elapsed_seconds"], meta["history"], meta["best"], meta["resumed_at"],
                   meta.get("stopped_early"), meta.get("pruned"))


# ---- Orbax -----------------------------------------------------------------------------------
def host_copy(tree):
    """A numpy copy of every leaf. Orbax writes in a background thread while training goes
    on, and the training step donates (reuses) its input buffers: the copy keeps the
    checkpoint's arrays from changing under the writer."""
    import jax
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


class Checkpoints:
    """The checkpoints of one run directory (an Orbax CheckpointManager). Orbax is imported and
    the manager made on first use, so a new run pays for them (0.3 s) at its first save rather
    than before its first step."""

    def __init__(self, run_dir: Path, keep: int = 2):
        self.dir = (run_dir / layout.CHECKPOINTS).resolve()
        self.keep = keep
        self._manager = None

    @property
    def manager(self):
        if self._manager is None:
            import orbax.checkpoint as ocp
            from orbax.checkpoint import checkpoint_managers as policies

            self.ocp = ocp
            best = policies.BestN(get_metric_fn=lambda m: m["error"], reverse=True, n=1,
                                  keep_checkpoints_without_metrics=False)
            options = ocp.CheckpointManagerOptions(
                preservation_policy=policies.AnyPreservationPolicy(
                    [policies.LatestN(self.keep), best]),
                cleanup_tmp_directories=True,  # remains of a write cut short by a kill
                # Written in the training thread: a failure (a full disk) is raised right there
                # and reported in one line; Orbax's background thread would print tracebacks.
                # Async saves measured no faster here (35-45 ms per save for the default MLP).
                enable_async_checkpointing=False)
            import jax

            from dlrun.runtime import distributed
            if distributed.processes() > 1:  # only process 0 saves (the state is replicated):
                # a manager of this process alone, without Orbax's barriers across processes
                me = jax.process_index()
                options = dataclasses.replace(options, create=False, multiprocessing_options=
                                              ocp.options.MultiprocessingOptions(
                                                  primary_host=me, active_processes={me}))
                self.dir.mkdir(parents=True, exist_ok=True)
            from dlrun.runs import ownership
            if not os.path.lexists(self.dir):  # Orbax's own tree, all of it this run's
                ownership.note(self.dir, "tree")
            try:
                self._manager = ocp.CheckpointManager(self.dir, options=options)
            except OSError as exc:
                raise FileError(f"cannot open {self.dir} ({exc.strerror or exc}); check that the "
                                f"run directory is writable") from None
        return self._manager

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, tree: dict, meta: dict, error: Optional[float]) -> None:
        """Write checkpoint `step`. `error`: the validation (else test) error of the epoch it
        ends, if evaluated there (Orbax keeps the checkpoint with the lowest)."""
        manager, ocp = self.manager, self.ocp
        args = ocp.args.Composite(state=ocp.args.StandardSave(host_copy(tree)),
                                  meta=ocp.args.JsonSave(meta))
        metrics = None if error is None else {"error": float(error)}
        try:
            quietly(lambda: manager.save(step, args=args, force=True, metrics=metrics))
        except OrbaxFailure as exc:
            raise _write_error(self.dir, exc) from None

    def read_meta(self) -> dict:
        """The JSON part of the newest complete checkpoint."""
        step = self.latest_step()  # makes the manager
        ocp, self.step = self.ocp, step
        read = ocp.args.Composite(meta=ocp.args.JsonRestore())
        try:
            meta = quietly(lambda: self.manager.restore(step, args=read))["meta"]
        except OrbaxFailure as exc:
            raise _damaged(self.dir / str(step), exc) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise FileError(f"{self.dir / str(step)} was written by an incompatible dlrun version "
                            f"(checkpoint format {meta.get('format') if isinstance(meta, dict) else '?'}"
                            f", this dlrun reads {FORMAT}); resume it with the dlrun that wrote it")
        return meta

    def restore_state(self, abstract: dict) -> dict:
        """The arrays of the checkpoint `read_meta` read, in the structure of `abstract`."""
        import jax

        ocp, where = self.ocp, self.dir / str(self.step)  # after read_meta made the manager
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
        restore = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        try:
            restored = quietly(lambda: self.manager.restore(self.step, args=restore))["state"]
        except OrbaxFailure as exc:
            raise _damaged(where, exc) from None
        leaves = jax.tree.leaves(restored)
        if [(a.shape, a.dtype) for a in leaves] != [(a.shape, a.dtype) for a in jax.tree.leaves(target)]:
            raise _damaged(where, ValueError("its arrays do not have this model's shapes"))
        return jax.tree.unflatten(jax.tree.structure(abstract), leaves)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()


class OrbaxFailure(Exception):
    """An Orbax read or write failed; the text of its error (see `quietly`)."""


def quietly(fn: Callable[[], Any]) -> Any:
    """fn(), an Orbax read or write. If it fails, the other reads/writes it has in flight are
    left to end, with their reports muted, before OrbaxFailure (the error's text) is raised.
    Orbax and TensorStore report those from their threads and finalizers (coroutines never
    awaited, callbacks on a closed event loop, thread tracebacks): pages that would otherwise
    print under dlrun's one-line error. DLRUN_DEBUG=1 shows the full traceback."""
    import gc
    import sys
    import threading
    import time
    import warnings

    hooks = sys.unraisablehook, sys.excepthook, threading.excepthook
    sys.unraisablehook = sys.excepthook = threading.excepthook = lambda *_: None
    # "Task exception was never retrieved" (asyncio's logger, with a traceback): muted before
    # fn runs, since a failed read's sibling tasks can be collected inside Orbax itself (seen
    # in 3 of ~30 truncated-checkpoint resumes on Python 3.13); unmuted only if fn succeeds.
    asyncio_log = logging.getLogger("asyncio")
    level = asyncio_log.level
    asyncio_log.setLevel(logging.CRITICAL)
    try:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - Orbax and TensorStore raise many types
            if os.environ.get("DLRUN_DEBUG") == "1":
                raise
            failed = str(exc) or type(exc).__name__
        else:
            asyncio_log.setLevel(level)
            return result
        # Outside `except`: nothing refers to the exception's frames any more, so the
        # coroutines they hold can be collected here, with the hooks still muted.
        time.sleep(0.2)
        with warnings.catch_warnings():  # "coroutine ... was never awaited" (RuntimeWarning)
            warnings.simplefilter("ignore")
            gc.collect()
        raise OrbaxFailure(failed)
    finally:
        sys.unraisablehook, sys.excepthook, threading.excepthook = hooks


def _first_line(exc: BaseException) -> str:
    return one_line(str(exc).split(". See full TensorStore details")[0]) if str(exc).strip() \
        else type(exc).__name__


def _damaged(where: Path, exc: BaseException) -> FileError:
    return FileError(f"checkpoint {where} cannot be read ({_first_line(exc)}): it is damaged, "
                     f"truncated or from another model; delete that directory to resume from the "
                     f"checkpoint before it, or start a new run without resume")


def _write_error(where: Path, exc: BaseException) -> FileError:
    os_error = re.search(r"\[OS error \d+: ([^\]]+)\]", str(exc))  # TensorStore's errno text
    reason = os_error.group(1) if os_error else _first_line(exc)
    return FileError(f"cannot write a checkpoint into {where} ({reason}); free disk space or "
                     f"write runs elsewhere with hydra.run.dir=PATH")
