"""Refusing before anything is touched: the checks that keep dlrun (and Hydra, which makes
and writes the run directory before dlrun's code runs) off a directory that already holds
something. The other half of the rule that dlrun.runs.ownership keeps (docs/guide.md, "Nothing lost").

* `GuardRunDirs`, a Hydra callback (conf/config.yaml), runs before Hydra makes the run (sweep)
  directory: `check_run_dir` / `check_sweep_dir` refuse one that holds anything, unless
  `resume` continues the run (sweep) in it; `_check_hydra_paths` keeps Hydra's own writes
  (hydra.output_subdir, the log handler, `a/../b` paths) where they are checked.
* `hydra_subdir` is hydra.output_subdir, evaluated by Hydra in each job after it made the
  job's directory and before it writes there: Hydra writes .hydra/ only into a directory this
  job gets empty.
* `check_job_dir` runs first thing in each job (a sweep's job directories, made by the
  launcher, are not known before the sweep starts).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from dlrun.runs import layout
from dlrun.errors import ConfigError
from dlrun.runs.ownership import (HYDRA_SUBDIR, PREEXISTING_VAR, absolute, begin_job, created,
                             current_job, expect_dirs, expect_hydra_outputs, note,
                             note_sweep_start)

RUN_MARKERS = (layout.RUN_INFO, layout.SUMMARY, layout.CHECKPOINTS, layout.METRICS)  # a dlrun run's files


def foreign_entries(path: Path) -> list[Path]:
    """The entries of directory `path` that the current job did not create."""
    return [p for p in path.iterdir() if not created(p, by_this_job=True)]


def contents(path: Path, limit: int = 4) -> str:
    """'a.txt, data/, notes.md and 3 more' for the entries of directory `path`."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in foreign_entries(path))
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def holds_runs(sweep_dir: Path) -> bool:
    """Whether any job of a sweep started a run: a run.json in a job directory (a resumed
    sweep's links to earlier jobs included), at any depth of hydra.sweep.subdir."""
    return any(sweep_dir.glob("*/run.json")) or any(sweep_dir.rglob(layout.RUN_INFO))


def holds_run(path: Path) -> bool:
    """Whether directory `path` holds (the start of) a dlrun run."""
    return any(os.path.lexists(path / m) for m in RUN_MARKERS)


def check_run_dir(run_dir: Path, resume, key: str = "hydra.run.dir") -> None:
    """Refuse (ConfigError) a run directory that already holds something, unless it is the run
    this invocation resumes: resume=true (with a fixed hydra.run.dir) or resume=<that dir>.
    An empty directory is fine (it stays when the run is refused; only what is written into it
    goes). `hydra.run.dir=.` is the working directory, under the same rule."""
    shown = f"{key}={run_dir}" + (" (the working directory)" if run_dir == absolute(".") else "")
    if os.path.islink(run_dir) and not run_dir.exists():
        raise ConfigError(f"{shown} is a symlink to {os.readlink(run_dir)}, which does not exist; "
                          f"give a new directory")
    if not os.path.lexists(run_dir):
        return
    if not run_dir.is_dir():
        raise ConfigError(f"{shown} is a file, not a directory; give a new directory "
                          f"({key}=PATH)")
    if not foreign_entries(run_dir):
        return
    if holds_run(run_dir):
        resumes_it = resume is True or (isinstance(resume, str) and resume.strip() and
                                        absolute(Path(resume).expanduser()).resolve()
                                        == run_dir.resolve())
        if resumes_it:
            return
        raise ConfigError(f"{shown} already holds a dlrun run ({contents(run_dir)}); nothing "
                          f"was changed. Continue it with resume={run_dir} (only train.epochs "
                          f"may change), or give a new directory ({key}=PATH)")
    hint = (f"; with resume=PATH leave {key} out (the run goes on in its own directory)"
            if isinstance(resume, str) else "")
    raise ConfigError(f"{shown} is not empty (it holds {contents(run_dir)}); nothing was "
                      f"changed. A run needs a new or empty directory: give another {key}=PATH"
                      + hint)


def check_sweep_dir(sweep_dir: Path, resume) -> None:
    """Refuse a sweep directory that already holds something, unless resume=true continues the
    sweep in it (finished jobs are skipped, stopped ones resumed)."""
    key = "hydra.sweep.dir"
    if not os.path.lexists(sweep_dir):
        return
    if not sweep_dir.is_dir():
        raise ConfigError(f"{key}={sweep_dir} is a file, not a directory; give a new directory")
    if not any(sweep_dir.iterdir()):
        return
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and holds_run(p)]
    if not jobs and not is_dlrun_multirun_yaml(sweep_dir / "multirun.yaml"):
        raise ConfigError(f"{key}={sweep_dir} is not empty (it holds {contents(sweep_dir)}) and "
                          f"is not a dlrun sweep; nothing was changed. Give a new or empty "
                          f"{key}=PATH")
    if resume is not True:
        raise ConfigError(f"{key}={sweep_dir} already holds a sweep ({len(jobs)} job(s)); nothing "
                          f"was changed. Add resume=true to continue it (finished jobs are "
                          f"skipped), or give a new {key}=PATH")


# The sweep callback's import path as multirun.yaml records it: today's, and the one sweeps made
# before dlrun's modules moved into packages (dlrun.sweep), so older sweeps are still recognised.
SWEEP_CALLBACKS = ("dlrun.sweeps.callback.SweepReport", "dlrun.sweep.SweepReport")


def is_dlrun_multirun_yaml(path: Path) -> bool:
    """Whether `path` is the multirun.yaml of a dlrun sweep (not another Hydra app's)."""
    try:
        return path.is_file() and any(name in path.read_text(errors="replace") for name in SWEEP_CALLBACKS)
    except OSError:
        return False


def secondary_process(dist) -> bool:
    """Process k > 0 of a multi-process run (dist.enabled; its rank from dist.process_id or
    the cluster's environment, as jax.distributed finds it): process 0 writes the run, this
    one writes nothing into the run directory (no .hydra/, no log)."""
    if not dist or not dist.get("enabled"):
        return False
    rank = dist.get("process_id")
    for var in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if rank is None and os.environ.get(var, "").isdigit():
            rank = int(os.environ[var])
    return bool(rank)


def hydra_subdir(run_dir: str | None, sweep_dir: str | None, log_file: str | None,
                 job_number=None, secondary: bool = False) -> str | None:
    """hydra.output_subdir, as Hydra asks for it in each job after making its directory and
    before writing into it: `.hydra` for a directory this invocation gets empty, None (Hydra
    writes nothing) for one that already holds something, so an earlier run's .hydra/ files are
    never overwritten, and for process k > 0 of a multi-process run. Notes what Hydra is about
    to write. sweep_dir: the sweep's directory (None outside a sweep), which was checked before
    the sweep: a new job directory inside it is this job's."""
    if not run_dir:
        return ".hydra"
    path = absolute(run_dir)
    if current_job() != (path, job_number):
        begin_job(path, job_number)
    if secondary or (path.is_dir() and foreign_entries(path)):
        return None
    if (sweep_dir and absolute(sweep_dir) in path.parents
            and str(path) not in json.loads(os.environ.get(PREEXISTING_VAR, "[]"))):
        note(path, "dir")  # the launcher just made it in the sweep directory checked before
    expect_hydra_outputs(path, log_file)
    return ".hydra"


# ---- the Hydra callback: check before Hydra makes or writes anything -------------------------
class Refused(BaseException):
    """A run or sweep directory refused before Hydra touched it. A BaseException because Hydra
    turns an Exception raised in a callback into a warning and goes on; the CLI prints the
    message as its one error line (exit 2)."""


MODE: list[str] = []  # "run" or "multirun", once Hydra has started one (read by the CLI)


def check_job_dir(run_dir: Path, resume, multirun: bool, log_files: list[str],
                  secondary: bool) -> None:
    """In each job, before it logs or writes anything: its directory (Hydra made it, or found
    it: a sweep's job directories are not checked before the sweep starts) must hold nothing
    but what this job created, or be the run `resume` continues; and a log file that exists
    already is appended to only in that run's own directory. ConfigError otherwise. Process
    k > 0 of a multi-process run writes nothing there (process 0 checks it)."""
    if secondary:
        return
    run_dir = absolute(run_dir)
    check_run_dir(run_dir, resume, "hydra.sweep.dir/hydra.sweep.subdir" if multirun else
                  "hydra.run.dir")
    resumed_here = run_dir.is_dir() and bool(foreign_entries(run_dir))  # passed: a run resumed
    for log in map(absolute, log_files):
        if os.path.lexists(log) and not created(log, by_this_job=True) and not (
                resumed_here and log.parent == run_dir):
            raise ConfigError(f"the log file {log} exists already and is not this run's "
                              f"(hydra.job_logging.handlers.file.filename); dlrun does not "
                              f"write into a file it did not make: give a new file name")


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra-core is a dependency
    Callback = object


def _check_hydra_paths(config, multirun: bool) -> None:
    """Where Hydra itself writes must stay where dlrun checks: hydra.output_subdir dlrun's (or
    null: no .hydra/ at all), log file handlers that append and open lazily, and no '..' after
    a directory name in the run (sweep) directory (Hydra would make that directory too)."""
    hydra_node = OmegaConf.to_container(config.hydra, resolve=False)
    value = hydra_node.get("output_subdir")
    if value not in (HYDRA_SUBDIR, None):
        raise ConfigError(f"hydra.output_subdir={value} is not supported: dlrun writes Hydra's "
                          f"config snapshot into .hydra/ of a new run directory only; leave "
                          f"it out, or hydra.output_subdir=null for none")
    for name, handler in ((hydra_node.get("job_logging") or {}).get("handlers") or {}).items():
        if str(handler.get("class", "")).endswith("FileHandler") and (
                handler.get("delay") is not True or handler.get("mode", "a") != "a"):
            raise ConfigError(f"hydra.job_logging.handlers.{name}: a log file handler must "
                              f"append (mode: a) and open its file lazily (delay: true), so "
                              f"that a refused run writes nothing; dlrun's own "
                              f"(hydra/job_logging=dlrun, the default) does")
    keys = (("hydra.sweep.dir", str(config.hydra.sweep.dir)),
            ("hydra.sweep.subdir", str(hydra_node["sweep"]["subdir"]))) if multirun else (
        ("hydra.run.dir", str(config.hydra.run.dir)),)
    for key, raw in keys:
        parts = Path(raw).parts
        if any(p == ".." and i and parts[i - 1] != ".." for i, p in enumerate(parts)):
            raise ConfigError(f"{key}={raw}: '..' after a directory name is not supported "
                              f"(Hydra would make that directory as well); write the path "
                              f"without it")


def _refusal(exc: Exception, key: str, path: Path) -> Refused:
    if isinstance(exc, ConfigError):
        return Refused(str(exc))
    return Refused(f"cannot check {key}={path} ({exc}); nothing was changed. Give a directory "
                   f"dlrun can read, or a new one")


class GuardRunDirs(Callback):
    """Registered in conf/config.yaml (hydra.callbacks.guard_run_dirs). Before Hydra makes the
    run (sweep) directory and writes its .hydra/ files and log into it: refuse a directory that
    already holds something (`check_run_dir`, `check_sweep_dir`), and note the directories
    Hydra is about to make as this invocation's. Each job's own directory is checked again
    by the job itself (`check_job_dir`), before it writes anything."""

    def on_run_start(self, config, **kwargs) -> None:
        MODE.append("run")
        run_dir = absolute(str(config.hydra.run.dir))
        try:
            _check_hydra_paths(config, multirun=False)
            if not secondary_process(config.get("dist")):
                check_run_dir(run_dir, config.get("resume"))
            expect_dirs(run_dir)
        except (ConfigError, OSError, RuntimeError, ValueError) as exc:
            raise _refusal(exc, "hydra.run.dir", run_dir) from None

    def on_multirun_start(self, config, **kwargs) -> None:
        MODE.append("multirun")
        sweep_dir = absolute(str(config.hydra.sweep.dir))
        try:
            _check_hydra_paths(config, multirun=True)
            check_sweep_dir(sweep_dir, config.get("resume"))
            note_sweep_start(sweep_dir)
            expect_dirs(sweep_dir)
        except (ConfigError, OSError, RuntimeError, ValueError) as exc:
            raise _refusal(exc, "hydra.sweep.dir", sweep_dir) from None
        from dlrun.sweeps.launch_env import ERRORS_DIR
        if not os.path.lexists(sweep_dir / ERRORS_DIR):
            note(sweep_dir / ERRORS_DIR, "dir")
        if not os.path.lexists(sweep_dir / "multirun.yaml"):
            note(sweep_dir / "multirun.yaml", "file")  # Hydra's basic sweeper writes it
