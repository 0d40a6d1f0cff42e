"""The `dlrun` command. Hydra parses the command line and composes the config; the work is done
by `dlrun.train.train_and_evaluate`. This module only adds what a command line needs:

* bad input (unknown option, misspelt key, wrong type, out-of-range value, missing or corrupt
  data) is reported as ONE line `dlrun: error: ...` with exit code 2 and no traceback, and the
  run directory Hydra created for that run is removed again, so nothing half-written stays;
* run directories are unique even for runs started in the same second (`${dlrun_uid:}`);
* `resume=true|PATH` continues an earlier run in ITS directory (the one Hydra just made for
  this invocation is removed again, and the log goes on in the earlier run's dlrun.log);
* SIGINT/SIGTERM stop a run at a safe point with a checkpoint (dlrun.signals), exit 128+signum.
Set DLRUN_DEBUG=1 to get the full traceback instead.
"""
import time

STARTED_AT = time.perf_counter()  # "start to first step" is measured from here

import difflib  # noqa: E402
import importlib.resources  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import yaml  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import HydraException, MissingConfigException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from dlrun import __version__  # noqa: E402
from dlrun import launch_env  # noqa: E402
from dlrun.allocator import keep_freed_memory  # noqa: E402
from dlrun.errors import ConfigError, DlrunError, Interrupted  # noqa: E402
from dlrun.signals import StopRequest  # noqa: E402

log = logging.getLogger("dlrun")
_USER_ERRORS: list[str] = []  # one line per job that failed on bad input (see main)
_STOP = StopRequest()  # installed by main(); set by the first SIGINT/SIGTERM
# Run-directory suffix, one per process (all jobs of a sweep share the sweep directory): the PID
# is unique among processes alive on this host, the random part across hosts sharing outputs/.
_UID = f"{os.getpid():x}{secrets.token_hex(2)}"
OmegaConf.register_new_resolver("dlrun_uid", lambda: _UID, replace=True)


@hydra.main(config_path="pkg://dlrun.conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    launch_env.configure_job(HydraConfig.get())  # a parallel job's CPUs and GPU, before JAX
    from dlrun import distributed
    from dlrun.train import train_and_evaluate  # imports JAX: after --help/--cfg are handled

    hc = HydraConfig.get()
    workdir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        # dist.enabled=true: join the other processes before anything starts JAX's backend;
        # process 0 alone resolves resume=... and hands its config to the others
        distributed.initialize(distributed.parse(cfg.get("dist")))
        distributed.expect_exchange()
        if not distributed.is_primary():  # process 0 logs the run; the others log to the console
            console_only()
        target, cfg = resolve_resume(cfg, hc) if distributed.is_primary() else (None, cfg)
        cfg = share_config(cfg)
        if target is not None and target.resolve() != workdir.resolve():  # not a requeued job
            adopt_run_dir(target, workdir, link=multirun)
        run_dir = target or workdir
        summary = train_and_evaluate(cfg, str(run_dir), started_at=STARTED_AT,
                                     resume=target is not None, stop=_STOP,
                                     on_start=lambda: log.info("run dir: %s", run_dir.resolve()),
                                     peers_dir=workdir.parent if multirun else None)
    except Interrupted:
        if not distributed.is_primary() and not (workdir / "run.json").exists():
            discard_run_dir(workdir)  # process 0 holds the run and its checkpoint
        raise
    except DlrunError as exc:
        # Not re-raised: Hydra would print its own multi-line report. main() prints it.
        distributed.abort(exc)  # process 0: the other processes stop with the same error
        if distributed.is_primary():
            if not getattr(exc, "keep_run_dir", False):  # a diverged run keeps what it wrote
                discard_run_dir(workdir)
        elif not (workdir / "run.json").exists():  # another process: its own Hydra directory
            discard_run_dir(workdir)
        if os.environ.get("DLRUN_DEBUG") == "1":
            raise
        job = f"job {hc.job.num} ({' '.join(hc.overrides.task)}): " if multirun else ""
        _USER_ERRORS.append(job + str(exc))
        launch_env.forward_error(job + str(exc), hc)  # a job in another process (joblib...)
        return None
    if not distributed.is_primary():  # process 0 wrote the run; Hydra's directory of ours goes
        if not (workdir / "run.json").exists():  # (unless it is process 0's too: submitit)
            discard_run_dir(workdir)
    else:
        log.info("run dir: %s", run_dir.resolve())
    value = summary["final"].get(summary["best_selected_on"])  # the sweep's objective (Optuna)
    return float("nan") if value is None else float(value)


def console_only() -> None:
    """Stop writing this process's log lines into the run's dlrun.log (another process of a
    multi-process run: under submitit all of them share the run directory)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def share_config(cfg: DictConfig) -> DictConfig:
    """Process 0's config on every process of a multi-process run (it may have resolved
    resume=PATH to the run's own config); one process: `cfg`."""
    from dlrun import distributed
    if distributed.processes() == 1:
        return cfg
    mine = OmegaConf.to_container(cfg, resolve=True) if distributed.is_primary() else None
    return OmegaConf.create(distributed.exchange(None if mine is None else {"config": mine})["config"])


def resolve_resume(cfg: DictConfig, hc) -> tuple[Path | None, DictConfig]:
    """(run directory to continue, its config) for resume=true|PATH; (None, cfg) otherwise.

    resume=true: the run under the run-directory root (outputs/) with this config, up to the
    keys a resumed run may change (dlrun.checkpoint.NEUTRAL_KEYS), and the newest checkpoint;
    none found: a new run. resume=PATH: that run; with no overrides but train.epochs and
    checkpoint.*, its own config is used, otherwise the config must match it.
    """
    from dlrun.checkpoint import (config_diff, config_hash, find_resumable, has_checkpoint,
                                  is_neutral, read_run_info)

    value = cfg.get("resume", False)
    if value is False or value is None:
        return None, cfg
    config = OmegaConf.to_container(cfg, resolve=True)
    if value is True:
        root = runs_root(hc)
        found = find_resumable(root, config)
        if found is None:
            log.info("resume=true: no checkpointed run of this config under %s/; starting a new "
                     "one", root)
        return found, cfg
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"resume must be true, false or a run directory (got {value!r})")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"resume={value}: no such run directory; give a directory a dlrun run "
                          f"created (e.g. outputs/<date>/<time>-<id>), or resume=true")
    info = read_run_info(path)
    keys = [o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task]
    if all(k == "resume" or is_neutral(k) for k in keys):  # continue with the run's own config
        own = OmegaConf.create(info["config"])
        for key in keys:
            OmegaConf.update(own, key, OmegaConf.select(cfg, key), force_add=True)
        cfg, config = own, OmegaConf.to_container(own, resolve=True)
    if info.get("config_hash") != config_hash(config):
        raise ConfigError(f"cannot resume {path}: its config differs in "
                          f"{config_diff(info['config'], config)}; only train.epochs may change "
                          f"(give resume=PATH alone to continue with the run's own config)")
    if not has_checkpoint(path):
        raise ConfigError(f"cannot resume {path}: it has no complete checkpoint (it stopped "
                          f"before its first one); start it again without resume")
    return path, cfg


def runs_root(hc) -> Path:
    """The fixed part of the run-directory template (outputs/ by default): where resume=true
    looks for earlier runs."""
    node = hc.sweep if hc.mode == RunMode.MULTIRUN else hc.run
    template = str(OmegaConf.to_container(node, resolve=False)["dir"])
    fixed = template.split("${", 1)[0]
    return Path(fixed if fixed.endswith("/") or "/" not in fixed else fixed.rsplit("/", 1)[0] or ".")


def adopt_run_dir(target: Path, workdir: Path, link: bool = False) -> None:
    """Continue in `target`: the log file goes on in target/dlrun.log, and the directory Hydra
    made for this invocation is removed. link=True (a job of a resumed sweep): it is replaced by
    a relative symlink to `target`, so the new sweep directory lists every job of the sweep,
    finished before or now, and its report covers them all."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            moved = logging.FileHandler(target / Path(handler.baseFilename).name, mode="a",
                                        encoding="utf-8", delay=True)
            moved.setFormatter(handler.formatter)
            moved.setLevel(handler.level)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(moved)
    shutil.rmtree(workdir, ignore_errors=True)
    if link:
        workdir.symlink_to(os.path.relpath(target.resolve(), workdir.parent.resolve()),
                           target_is_directory=True)
    else:
        remove_empty_parents(workdir.parent)


def discard_run_dir(workdir: Path) -> None:
    """Remove what Hydra created for a run that failed validation, then empty parents."""
    # close the run's log file first, and drop it: a closed FileHandler reopens its file on the
    # next record (submitit's job process logs more)
    console_only()
    if workdir.is_symlink():  # a resumed sweep's link to an earlier run: only the link goes
        workdir.unlink()
    shutil.rmtree(workdir, ignore_errors=True)
    remove_empty_parents(workdir.parent)


def collect_job_errors() -> list[str]:
    """The error lines of jobs that ran in other processes (launch_env.forward_error)."""
    from dlrun.sweep import STARTED_SWEEPS

    return launch_env.collect_errors(STARTED_SWEEPS)


def discard_failed_sweeps() -> None:
    """A sweep none of whose jobs completed leaves nothing behind (not even multirun.yaml)."""
    from dlrun.sweep import STARTED_SWEEPS

    for sweep_dir in STARTED_SWEEPS:
        if not any(sweep_dir.glob("*/summary.json")) and not any(sweep_dir.glob("*/checkpoints")):
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


def flat(text: str) -> str:
    """Hydra's multi-line messages (with their fix-it hints) as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("See https://hydra.cc"))


def one_line(exc: BaseException) -> str:
    """A single-line, actionable description of a user error."""
    if isinstance(exc, MissingConfigException) and exc.options:
        group, _, name = (exc.missing_cfg_file or "").rpartition("/")
        plugins = (" (Hydra's joblib, submitit and optuna plugins: pip install -e '.[sweep]'; "
                   "see README, Sweeps)" if group in ("hydra/launcher", "hydra/sweeper") else "")
        return (f"unknown {group} '{name}'; choose one of: {', '.join(sorted(exc.options))}"
                + plugins)
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        return unknown_key(getattr(cause, "full_key", "?"))
    text = flat(str(exc)) or type(exc).__name__
    if "Ambiguous value for argument" in text:
        return (text.split(" 1.")[0].rstrip() + "; to sweep over the values add -m (--multirun); "
                "for a list write key=[a,b]")
    if "To append to your config use" in text:
        return text.replace("To append to your config use", "to add a new key use")
    if cause is not None and str(cause).strip():
        text += " " + flat(str(cause))
    return text


def unknown_key(key: str) -> str:
    """Message for an override of a key the config does not have, with a suggestion."""
    if key.startswith("regularizer."):
        name = key.split(".")[1]
        return (f"{key}: regularizer '{name}' is not selected; select it first, "
                f"e.g. regularizer=[{name}] (a list: regularizer=[dropout,l2])")
    if key.startswith("logger.") and key.count(".") > 1:  # a misspelt key of a selected logger
        from dlrun.registry import config_params
        from dlrun.tracking import LOGGERS
        name = key.split(".")[1]
        valid = ", ".join(p.name for p in config_params(LOGGERS[name])) if name in LOGGERS else ""
        return f"{key} is not a setting of logger {name}; valid keys: {valid or 'none'}"
    if key.startswith("logger."):
        name = key.split(".")[1]
        return (f"{key}: logger '{name}' is not selected; select it first, "
                f"e.g. logger=[{name}] (a list: logger=[tensorboard,mlflow])")
    owners = key_owners().get(key)
    if owners:  # a key of another option of the group, e.g. model.pretrain_epochs with model=mlp
        group = key.split(".")[0]
        return (f"{key} is not a setting of the {group} chosen; it is a setting of {group}="
                f"{', '.join(owners)}: choose one first, e.g. {group}={owners[0]} {key}=...")
    known = known_keys()
    last = key.rsplit(".", 1)[-1]
    guesses = [k for k in known if k.rsplit(".", 1)[-1] == last and k != key]
    top = [k for k in known if "." not in k]
    if not guesses and "." not in key:  # a misspelt group name: suggest groups first
        guesses = difflib.get_close_matches(key, top, n=2, cutoff=0.6)
    guesses = guesses or difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(guesses[:3])}?" if guesses else ""
    return (f"{key} is not a setting of this config{hint} "
            f"(`dlrun --cfg job` prints the valid keys, `dlrun --help` the groups)")


def key_owners() -> dict[str, list[str]]:
    """group.key -> the options of the group whose config file has that key."""
    conf = importlib.resources.files("dlrun.conf")
    owners: dict[str, list[str]] = {}
    for group in conf.iterdir():
        if group.is_dir() and group.name not in ("hydra", "experiment", "__pycache__", "regularizer",
                                                       "logger"):
            for option in sorted(group.iterdir(), key=lambda p: p.name):
                if option.name.endswith(".yaml"):
                    for k in yaml.safe_load(option.read_text()) or {}:
                        if k != "name":
                            owners.setdefault(f"{group.name}.{k}", []).append(option.name[:-5])
    return owners


def known_keys() -> list[str]:
    """Every group name and every group.key found in the packaged config files."""
    conf = importlib.resources.files("dlrun.conf")
    keys = {"experiment"}
    for group in conf.iterdir():
        if not group.is_dir() or group.name in ("hydra", "experiment", "__pycache__"):
            continue
        keys.add(group.name)
        for option in group.iterdir():
            if option.name.endswith(".yaml"):
                node = yaml.safe_load(option.read_text()) or {}
                keys.update(f"{group.name}.{k}" for k in node)
    top = yaml.safe_load((conf / "config.yaml").read_text())
    keys.update(f"train.{k}" for k in top["train"])
    return sorted(keys)


def main() -> None:
    """Console entry point: run Hydra, turning user errors into one line and exit code 2."""
    debug = os.environ.get("DLRUN_DEBUG") == "1"
    if sys.argv[1:] in (["--version"], ["-V"]):
        print(f"dlrun {__version__} (hydra-core {hydra.__version__})")
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's printer
    os.environ[launch_env.MAIN_PID_VAR] = str(os.getpid())  # jobs in other processes see it
    sys.argv[1:] = launch_env.default_overrides(sys.argv[1:])  # joblib on GPUs: 1 job per GPU
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
        except (DlrunError, HydraException, OmegaConfBaseException) as exc:
            if debug:
                raise
            _USER_ERRORS.append(one_line(exc))
        except OSError as exc:  # e.g. hydra.run.dir not creatable, a full disk
            if debug:
                raise
            _USER_ERRORS.append(os_error_line(exc))
    _USER_ERRORS.extend(collect_job_errors())
    discard_failed_sweeps()
    for line in _USER_ERRORS:
        print(f"dlrun: error: {line}", file=sys.stderr)
    if _USER_ERRORS:
        sys.exit(2)
    if exit_code:
        sys.exit(exit_code)


def os_error_line(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    return (f"cannot write{where} ({exc.strerror or exc}); check that the path is a writable "
            f"directory with free space, or write runs elsewhere with hydra.run.dir=PATH")


if __name__ == "__main__":
    main()
