"""The `dlrun` command. Hydra parses the command line and composes the config; the work is done
by `dlrun.train.train_and_evaluate`. This module only adds what a command line needs:

* bad input (unknown option, misspelt key, wrong type, out-of-range value, missing or corrupt
  data) is reported as ONE line `dlrun: error: ...` with exit code 2 and no traceback, and what
  this invocation created for the run is removed again, and nothing else (dlrun.runs.ownership: a
  run directory that already held anything is refused before Hydra touches it);
* run directories are unique even for runs started in the same second (`${dlrun_uid:}`);
* `resume=true|PATH` continues an earlier run in ITS directory (what Hydra just made for this
  invocation is removed again, and the log goes on in the earlier run's dlrun.log);
* SIGINT/SIGTERM stop a run at a safe point with a checkpoint (dlrun.runtime.signals), exit 128+signum.
Set DLRUN_DEBUG=1 to get the full traceback instead.
"""
import time

STARTED_AT = time.perf_counter()  # "start to first step" is measured from here
STARTED_WALL = time.time()

import logging  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from dlrun.runs import layout
from dlrun import __version__  # noqa: E402
from dlrun.cli.messages import one_line, os_error_line  # noqa: E402
from dlrun.runs import ownership  # noqa: E402
from dlrun.runs import guard
from dlrun.sweeps import launch_env
from dlrun.config import plugins
from dlrun.runtime.allocator import keep_freed_memory  # noqa: E402
from dlrun.errors import ConfigError, DlrunError, Interrupted  # noqa: E402
from dlrun.runs.resume import resolve_resume  # noqa: E402
from dlrun.runs.runlog import HeldLogs, close_handlers, console_only, log_to_file  # noqa: E402
from dlrun.runtime.signals import StopRequest  # noqa: E402

log = logging.getLogger("dlrun")
_USER_ERRORS: list[str] = []  # one line per job that failed on bad input (see main)
_STOP = StopRequest()  # installed by main(); set by the first SIGINT/SIGTERM
# Run-directory suffix, one per process (all jobs of a sweep share the sweep directory): the PID
# is unique among processes alive on this host, the random part across hosts sharing outputs/.
_UID = f"{os.getpid():x}{secrets.token_hex(2)}"
OmegaConf.register_new_resolver("dlrun_uid", lambda: _UID, replace=True)


def _hydra_subdir(*, _root_) -> str | None:
    """hydra.output_subdir for each job (see dlrun.runs.guard.hydra_subdir)."""
    select = lambda key: OmegaConf.select(_root_, key, default=None, throw_on_missing=False)  # noqa: E731
    multirun = select("hydra.mode") == RunMode.MULTIRUN
    return guard.hydra_subdir(select("hydra.runtime.output_dir"),
                              select("hydra.sweep.dir") if multirun else None,
                              select("hydra.job_logging.handlers.file.filename"),
                              select("hydra.job.num"), guard.secondary_process(select("dist")))


OmegaConf.register_new_resolver("dlrun_hydra_subdir", _hydra_subdir, replace=True)


@hydra.main(config_path="pkg://dlrun.conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    workdir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    started_at = time.perf_counter() if multirun else STARTED_AT  # a sweep's job: its own start
    ownership.begin_job(workdir, hc.job.get("num"))
    held = HeldLogs()  # nothing reaches a log file until this job may write where it is
    try:
        guard.check_job_dir(workdir, cfg.get("resume"), multirun, held.paths(),
                            guard.secondary_process(cfg.get("dist")))
    except ConfigError as exc:
        held.drop()
        discard_run_dir(workdir, multirun)  # what Hydra made for it (nothing, if it was there)
        return report_error(str(exc), hc, multirun)
    try:
        return run_job(cfg, hc, workdir, multirun, started_at, held)
    finally:
        ownership.end_job()


def run_job(cfg: DictConfig, hc, workdir: Path, multirun: bool, started_at: float,
            held: HeldLogs) -> float | None:
    """One run (a sweep's job) in `workdir`, Hydra's directory for it, checked; its error
    lines are collected for main() (see the module docstring)."""
    launch_env.configure_job(hc)  # a parallel job's CPUs and GPU, before JAX
    from dlrun.runtime import distributed
    from dlrun.train import Context, train_and_evaluate  # imports JAX: after --help/--cfg are handled

    try:
        # dist.enabled=true: join the other processes before anything starts JAX's backend;
        # process 0 alone resolves resume=... and hands its config to the others
        distributed.initialize(distributed.parse(cfg.get("dist")))
        distributed.expect_exchange()
        if not distributed.is_primary():  # process 0 logs the run; the others log to the console
            held.drop()
        target, cfg = resolve_resume(cfg, hc) if distributed.is_primary() else (None, cfg)
        cfg = share_config(cfg)
        if target is not None and target.resolve() != workdir.resolve():  # not a requeued job
            adopt_run_dir(target, workdir, held, link=multirun)
        held.let_through()
        run_dir = target or workdir
        summary = train_and_evaluate(cfg, str(run_dir), Context(
            started_at=started_at, resume=target is not None, stop=_STOP,
            on_start=lambda: log.info("run dir: %s", run_dir.resolve()),
            peers_dir=workdir.parent if multirun else None))
    except Interrupted as exc:
        if not distributed.is_primary() and not (workdir / layout.RUN_INFO).exists():
            discard_run_dir(workdir, multirun)  # process 0 holds the run and its checkpoint
        log_to_file(str(exc))  # the stop line the terminal gets, in the run's dlrun.log too
        raise
    except (DlrunError, OSError) as exc:  # OSError: a full disk, a directory not writable
        # Not re-raised: Hydra would print its own multi-line report. main() prints it.
        distributed.abort(exc)  # process 0: the other processes stop with the same error
        held.drop()
        return job_failed(exc, hc, workdir, multirun)
    if not distributed.is_primary():  # process 0 wrote the run; Hydra's directory of ours goes
        if not (workdir / layout.RUN_INFO).exists():  # (unless it is process 0's too: submitit)
            discard_run_dir(workdir, multirun)
    else:
        log.info("run dir: %s", run_dir.resolve())
    value = summary["final"].get(summary["best_selected_on"])  # the sweep's objective (Optuna)
    return float("nan") if value is None else float(value)


def job_failed(exc: BaseException, hc, workdir: Path, multirun: bool) -> None:
    """A run that failed on bad input or a failed write: keep it only if it is a diverged run
    (what it wrote before) or this job started it and it has a complete checkpoint (a later
    write failed: resumable once fixed), with the error in its log; otherwise remove what this
    job created for it. Then report the error line."""
    from dlrun.runtime import distributed
    from dlrun.runs.checkpoints import has_checkpoint

    message = os_error_line(exc) if isinstance(exc, OSError) else str(exc)
    if distributed.is_primary():
        keep = getattr(exc, "keep_run_dir", False) or (
            ownership.created(workdir / layout.RUN_INFO, by_this_job=True) and has_checkpoint(workdir))
        if keep:
            log_to_file(f"dlrun: error: {message}")
        discard_run_dir(workdir, multirun, keep=keep)
    elif not (workdir / layout.RUN_INFO).exists():  # another process: its own Hydra directory
        discard_run_dir(workdir, multirun)
    if os.environ.get("DLRUN_DEBUG") == "1":
        raise exc
    return report_error(message, hc, multirun)


def report_error(message: str, hc, multirun: bool) -> None:
    """Note a job's one-line error for main() to print (from a job in another process, through
    a file: launch_env.forward_error)."""
    job = f"job {hc.job.num} ({' '.join(hc.overrides.task)}): " if multirun else ""
    _USER_ERRORS.append(job + message)
    launch_env.forward_error(job + message, hc)
    return None


def share_config(cfg: DictConfig) -> DictConfig:
    """Process 0's config on every process of a multi-process run (it may have resolved
    resume=PATH to the run's own config); one process: `cfg`."""
    from dlrun.runtime import distributed
    if distributed.processes() == 1:
        return cfg
    mine = OmegaConf.to_container(cfg, resolve=True) if distributed.is_primary() else None
    return OmegaConf.create(distributed.exchange(None if mine is None else {"config": mine})["config"])


def adopt_run_dir(target: Path, workdir: Path, held: HeldLogs, link: bool = False) -> None:
    """Continue in `target`: the log file goes on in target/dlrun.log (`held`'s handlers are
    replaced by ones there), and what this job made for Hydra's directory is removed
    (dlrun.runs.ownership). link=True (a job of a resumed sweep): the job directory becomes a
    relative symlink to `target`, so the new sweep directory lists every job of the sweep,
    finished before or now, and its report covers them all."""
    moved = []
    for handler in held.files:
        new = logging.FileHandler(target / Path(handler.baseFilename).name, mode="a",
                                  encoding="utf-8", delay=True)
        new.setFormatter(handler.formatter)
        new.setLevel(handler.level)
        handler.close()
        moved.append(new)
    held.files = moved
    ownership.remove_created(workdir, parents=not link, this_job_only=link)
    if link and not os.path.lexists(workdir):
        workdir.symlink_to(os.path.relpath(target.resolve(), workdir.parent.resolve()),
                           target_is_directory=True)
        ownership.note(workdir, "file")


def discard_run_dir(workdir: Path, multirun: bool = False, keep: bool = False) -> None:
    """A run that failed: close its log file, then (unless `keep`: a diverged run keeps what
    it wrote) remove what this invocation created for it, and nothing else (dlrun.runs.ownership).
    A sweep's job leaves the sweep directory to the end of the sweep (discard_failed_sweeps)."""
    close_handlers(console_only())
    if not keep:
        ownership.remove_created(workdir, parents=not multirun, this_job_only=multirun)


def collect_job_errors() -> list[str]:
    """The error lines of jobs that ran in other processes (launch_env.forward_error)."""
    from dlrun.sweeps.callback import STARTED_SWEEPS

    return launch_env.collect_errors(STARTED_SWEEPS, since=STARTED_WALL)


def discard_failed_sweeps() -> None:
    """The end of a sweep: one in which no job started a run (no run.json anywhere under it,
    at any depth of hydra.sweep.subdir) leaves nothing this invocation created (not even
    multirun.yaml); any sweep loses the empty directories its failed jobs left. A sweep
    directory that existed before stays."""
    from dlrun.sweeps.callback import STARTED_SWEEPS

    for sweep_dir in STARTED_SWEEPS:
        ownership.remove_new_empty_dirs(sweep_dir)
        if not guard.holds_runs(sweep_dir):
            ownership.remove_created(sweep_dir)


def main() -> None:
    """Console entry point: run Hydra, turning user errors into one line and exit code 2."""
    debug = os.environ.get("DLRUN_DEBUG") == "1"
    if sys.argv[1:] in (["--version"], ["-V"]):
        print(f"dlrun {__version__} (hydra-core {hydra.__version__})")
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's printer
    os.environ[launch_env.MAIN_PID_VAR] = str(os.getpid())  # jobs in other processes see it
    os.environ[launch_env.SWEEP_ID_VAR] = _UID
    sys.argv[1:] = launch_env.default_overrides(sys.argv[1:])  # joblib on GPUs: 1 job per GPU
    sys.argv[1:] = plugins.custom_keys(sys.argv[1:])
    plugins.register_search_path()  # YAML options of installed packages (entry points)
    keep_freed_memory()  # before XLA starts its threads: see allocator.py (1.6x on the convnet)
    exit_code = 0
    with _STOP:
        try:
            _hydra_main()
        except Interrupted as exc:
            if debug:
                raise
            print(str(exc), file=sys.stderr)
            exit_code = exc.exit_code
        except guard.Refused as exc:  # a run (sweep) directory refused before Hydra began
            _USER_ERRORS.append(str(exc))
        except ValueError as exc:  # Optuna, when every trial failed: their lines follow
            if debug or "No trials are completed yet" not in str(exc):
                raise
        except (DlrunError, HydraException, OmegaConfBaseException, OSError) as exc:
            if debug:
                raise
            # raised outside the run (Hydra failed making or configuring it): what this
            # invocation made for it goes; a sweep keeps its finished jobs
            if guard.MODE == ["run"]:
                ownership.remove_created("/")
            plain_os_error = isinstance(exc, OSError) and not isinstance(exc, HydraException)
            _USER_ERRORS.append(os_error_line(exc) if plain_os_error else one_line(exc))
    _USER_ERRORS.extend(collect_job_errors())
    discard_failed_sweeps()
    for line in _USER_ERRORS:
        print(f"dlrun: error: {line}", file=sys.stderr)
    if _USER_ERRORS:
        sys.exit(2)
    if exit_code:
        sys.exit(exit_code)


if __name__ == "__main__":
    main()
