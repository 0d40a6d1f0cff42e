"""Where a run continues: `resume=true|PATH` resolved to a run directory and its config.

The CLI calls `resolve_resume` in each job, after Hydra made (or found) the job's directory and
before anything is written into it. The rules (docs/guide.md, "Nothing lost"):

* resume=PATH: that run, with its own config when no overrides but the neutral keys
  (dlrun.config.identity.NEUTRAL_KEYS: train.epochs, checkpoint.*, ...) are given;
* resume=true in a directory that already holds a run (a fixed hydra.run.dir, or the job
  directory of a sweep rerun into its hydra.sweep.dir): THAT run, which must have this config;
* resume=true in a new directory with a fixed name: a new run there;
* resume=true with the default, time-stamped directories: the run under the run-directory root
  (outputs/) with this config and the newest checkpoint, else a new run.
"""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlrun.runs import guard
from dlrun.errors import ConfigError

log = logging.getLogger("dlrun")


def resolve_resume(cfg: DictConfig, hc) -> tuple[Path | None, DictConfig]:
    """(run directory to continue, its config) for resume=true|PATH; (None, cfg) otherwise.

    resume=true: the run already in this run directory (a fixed hydra.run.dir, or a job of a
    sweep rerun into its hydra.sweep.dir), which must have this config; in a new directory
    with a fixed name, a new run there; otherwise (the default, time-stamped directories) the
    run under the run-directory root (outputs/) with this config, up to the keys a resumed run
    may change (dlrun.config.identity.NEUTRAL_KEYS), and the newest checkpoint; none found: a new
    run. resume=PATH: that run; with no overrides but train.epochs and checkpoint.*, its own
    config is used, otherwise the config must match it.
    """
    from dlrun.config.identity import is_neutral
    from dlrun.runs.checkpoints import find_resumable, read_run_info

    value = cfg.get("resume", False)
    if value is False or value is None:
        return None, cfg
    workdir = Path(hc.runtime.output_dir)
    if value is True:
        if guard.holds_run(workdir):  # there before this invocation: continue THAT run
            return workdir, check_resumable(workdir, cfg, OmegaConf.to_container(cfg, resolve=True),
                                            "resume=true")
        if fixed_run_dir(hc):
            log.info("resume=true: no run in %s yet; starting a new one there", workdir)
            return None, cfg
        root = runs_root(hc)
        found = find_resumable(root, OmegaConf.to_container(cfg, resolve=True))
        if found is None:
            log.info("resume=true: no checkpointed run of this config under %s/; starting a new "
                     "one", root)
        return found, cfg
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"resume must be true, false or a run directory (got {value!r})")
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # ~user that does not exist
        raise ConfigError(f"resume={value}: {exc}; give the full path") from None
    if not path.is_dir():
        what = "is a file, not a run directory" if path.exists() else "no such run directory"
        raise ConfigError(f"resume={value}: {what}; give a directory a dlrun run created (e.g. "
                          f"outputs/<date>/<time>-<id>), or resume=true")
    info = read_run_info(path)
    keys = [o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task]
    if all(k == "resume" or is_neutral(k) for k in keys):  # go on with the run's own config
        own = OmegaConf.create(info["config"])
        for key in keys:
            OmegaConf.update(own, key, OmegaConf.select(cfg, key), force_add=True)
        cfg = own
    return path, check_resumable(path, cfg, OmegaConf.to_container(cfg, resolve=True),
                                 f"resume={value}")


def check_resumable(path: Path, cfg: DictConfig, config: dict, how: str) -> DictConfig:
    """`cfg` if the run in `path` has this config (up to NEUTRAL_KEYS) and a checkpoint to
    continue from; ConfigError saying what differs otherwise."""
    from dlrun.config.identity import config_diff, config_hash
    from dlrun.runs.checkpoints import has_checkpoint, read_run_info

    info = read_run_info(path)
    if info.get("config_hash") != config_hash(config):
        raise ConfigError(f"{how}: {path} holds a run of another config, which differs in "
                          f"{config_diff(info['config'], config)}; only train.epochs may "
                          f"change. Give resume={path} alone to continue it with its own "
                          f"config, or a new directory for this one; nothing was changed")
    if not has_checkpoint(path):
        raise ConfigError(f"{how}: {path} has no complete checkpoint (it stopped before its "
                          f"first one); start it again in a new directory, without resume")
    return cfg


def dir_template(hc) -> str:
    """The run (sweep) directory as configured, before interpolation."""
    node = hc.sweep if hc.mode == RunMode.MULTIRUN else hc.run
    return str(OmegaConf.to_container(node, resolve=False)["dir"])


def fixed_run_dir(hc) -> bool:
    """Whether the run (sweep) directory is named by the user, not made unique per invocation
    (the default templates use ${now:...} and ${dlrun_uid:})."""
    template = dir_template(hc)
    return "${now:" not in template and "${dlrun_uid:" not in template


def runs_root(hc) -> Path:
    """The fixed part of the run-directory template (outputs/ by default): where resume=true
    looks for earlier runs."""
    fixed = dir_template(hc).split("${", 1)[0]
    return Path(fixed if fixed.endswith("/") or "/" not in fixed else fixed.rsplit("/", 1)[0] or ".")
