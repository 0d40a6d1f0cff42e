"""The `dlrun` command. Hydra parses the command line and composes the config; the work is done
by `dlrun.train.train_and_evaluate`. This module only adds what a command line needs:

* bad input (unknown option, misspelt key, wrong type, out-of-range value, missing or corrupt
  data) is reported as ONE line `dlrun: error: ...` with exit code 2 and no traceback, and the
  run directory Hydra created for that run is removed again, so nothing half-written stays;
* run directories are unique even for runs started in the same second (`${dlrun_uid:}`).
Set DLRUN_DEBUG=1 to get the full traceback instead.
"""
import time

STARTED_AT = time.perf_counter()  # "start to first step" is measured from here

import logging  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException, MissingConfigException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from dlrun.errors import DlrunError  # noqa: E402

log = logging.getLogger("dlrun")
_USER_ERRORS: list[str] = []  # one line per job that failed on bad input (see main)
_SWEEP_DIRS: set[Path] = set()  # sweep directories of this process, checked when it ends
# Run-directory suffix, one per process (all jobs of a sweep share the sweep directory): the PID
# is unique among processes alive on this host, the random part across hosts sharing outputs/.
_UID = f"{os.getpid():x}{secrets.token_hex(2)}"
OmegaConf.register_new_resolver("dlrun_uid", lambda: _UID, replace=True)


@hydra.main(config_path="pkg://dlrun.conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    from dlrun.train import train_and_evaluate  # imports JAX: after --help/--cfg are handled

    hc = HydraConfig.get()
    workdir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        summary = train_and_evaluate(cfg, str(workdir), started_at=STARTED_AT,
                                     on_start=lambda: log.info("run dir: %s", workdir.resolve()))
    except DlrunError as exc:
        # Not re-raised: Hydra would print its own multi-line report. main() prints it.
        discard_run_dir(workdir)
        if multirun:
            _SWEEP_DIRS.add(Path(hc.sweep.dir))
        job = f"job {hc.job.num} ({' '.join(hc.overrides.task)}): " if multirun else ""
        _USER_ERRORS.append(job + str(exc))
        return None
    log.info("run dir: %s", workdir.resolve())
    final = summary["final"]
    return float(final.get("val_error", final.get("test_error", final["train_error"])))


def discard_run_dir(workdir: Path) -> None:
    """Remove what Hydra created for a run that failed validation, then empty parents."""
    for handler in logging.getLogger().handlers:  # close the run's log file before removing it
        if isinstance(handler, logging.FileHandler):
            handler.close()
    shutil.rmtree(workdir, ignore_errors=True)
    remove_empty_parents(workdir.parent)


def discard_failed_sweeps() -> None:
    """A sweep none of whose jobs completed leaves nothing behind (not even multirun.yaml)."""
    for sweep_dir in _SWEEP_DIRS:
        if not any(sweep_dir.glob("*/summary.json")):
            shutil.rmtree(sweep_dir, ignore_errors=True)
            remove_empty_parents(sweep_dir.parent)


def remove_empty_parents(parent: Path) -> None:
    """Remove empty directories upwards, stopping at outputs/ or the working directory."""
    cwd = Path.cwd().resolve()
    while parent.exists() and parent.resolve() != cwd and not any(parent.iterdir()):
        if parent.name == "outputs":  # the project's kept, git-ignored outputs/ directory
            break
        parent.rmdir()
        parent = parent.parent


def one_line(exc: BaseException) -> str:
    """A single-line, actionable description of a user error."""
    if isinstance(exc, MissingConfigException) and exc.options:
        group, _, name = (exc.missing_cfg_file or "").rpartition("/")
        return f"unknown {group} '{name}'; choose one of: {', '.join(sorted(exc.options))}"
    cause = exc.__cause__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        key = getattr(cause, "full_key", "?")
        if key.startswith("regularizer."):
            name = key.split(".")[1]
            return (f"{key}: regularizer '{name}' is not selected; select it first, "
                    f"e.g. regularizer=[{name}] (a list: regularizer=[dropout,l2])")
        return (f"{key} is not a setting of this config (misspelt?); "
                f"`dlrun --cfg job` lists the valid keys")
    if cause is not None and str(cause).strip():
        text += " " + str(cause).strip().splitlines()[0]
    return text


def main() -> None:
    """Console entry point: run Hydra, turning user errors into one line and exit code 2."""
    debug = os.environ.get("DLRUN_DEBUG") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's printer
    try:
        _hydra_main()
    except (DlrunError, HydraException, OmegaConfBaseException) as exc:
        if debug:
            raise
        _USER_ERRORS.append(one_line(exc))
    discard_failed_sweeps()
    for line in _USER_ERRORS:
        print(f"dlrun: error: {line}", file=sys.stderr)
    if _USER_ERRORS:
        sys.exit(2)


if __name__ == "__main__":
    main()
