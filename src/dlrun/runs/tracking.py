"""Experiment tracking: the `logger` config group, combinable as a list (`logger=[tensorboard,mlflow]`).

metrics.jsonl stays the source of truth: a logger receives exactly the records written there,
one per epoch, as they are written (dlrun.train), from the primary process only. A resumed run
logs its new epochs only. Each logger's package is imported when it is selected, never
otherwise; `build_all` imports it while the config is validated, so a missing package stops
the run before any data is loaded (`pip install -e '.[track]'`).

  tensorboard  TensorBoard event files (tensorboardX, no TensorFlow) in <run dir>/tb/ by default:
               one scalar per numeric key of each record, at step = epoch
  mlflow       an MLflow run in a local SQLite store (no server): params = the flattened
               resolved config, metrics = each record's numeric keys at step = epoch
"""
from __future__ import annotations

import importlib
import os
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from dlrun.config.identity import flatten
from dlrun.errors import ConfigError, one_line
from dlrun.config.registry import build

log = logging.getLogger("dlrun")
EXTRA_HINT = "pip install -e '.[track]'"


@dataclass(frozen=True)
class LoggerSpec:
    """A selected logger, validated: `open(run_dir, config, run_name)` starts it for one run."""

    name: str
    open: Callable[[Path, dict, str], "Tracker"]


class Tracker:
    """One started logger of one run directory."""

    def log(self, record: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self, status: str = "FINISHED") -> None:  # pragma: no cover - interface
        raise NotImplementedError


def _require(package: str, logger: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"logger={logger} needs the track extra: {EXTRA_HINT}") from None


def scalars(record: dict) -> dict[str, float]:
    """The numeric entries of a metrics record except the epoch itself (the step of every value).
    A None (how metrics.jsonl writes a non-finite value) is left out."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


# ---- tensorboard -----------------------------------------------------------------------------
class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path):
        tensorboardX = importlib.import_module("tensorboardX")
        from dlrun.runs import ownership
        self.dir = log_dir
        if not os.path.lexists(log_dir):  # the writer's own tree: all of it this run's
            ownership.note(log_dir, "tree")
        self.writer = tensorboardX.SummaryWriter(logdir=str(log_dir))

    def log(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


def tensorboard(log_dir: Optional[str] = None) -> LoggerSpec:
    """TensorBoard event files; log_dir null = <run dir>/tb (a relative path: under the run dir)."""

    def start(run_dir: Path, config: dict, run_name: str) -> Tracker:
        where = run_dir / "tb" if log_dir is None else run_dir / log_dir
        return TensorBoardTracker(where)

    return LoggerSpec("tensorboard", start)


# ---- mlflow ----------------------------------------------------------------------------------
def default_tracking_uri() -> str:
    """sqlite:///<cwd>/outputs/mlflow.db: one store for all runs started from this directory."""
    return f"sqlite:///{Path.cwd().resolve() / 'outputs' / 'mlflow.db'}"


class MlflowTracker(Tracker):
    def __init__(self, tracking_uri: str, experiment: str, run_dir: Path, config: dict,
                 run_name: str):
        for name in ("mlflow", "alembic"):  # their INFO lines (creating tables) are not dlrun's
            logging.getLogger(name).setLevel(logging.WARNING)
        mlflow = importlib.import_module("mlflow")
        from mlflow.entities import Metric, Param, RunTag
        self.Metric = Metric
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.client = client = mlflow.MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            store = Path(tracking_uri[len("sqlite:///"):]).parent if tracking_uri.startswith(
                "sqlite:///") else Path.cwd()
            experiment_id = client.create_experiment(
                experiment, artifact_location=(store / "mlartifacts").resolve().as_uri())
        else:
            experiment_id = found.experiment_id
        key = str(run_dir.resolve())
        runs = client.search_runs([experiment_id], f"tags.`dlrun.run_dir` = '{key}'",
                                  max_results=1)
        if runs:  # a resumed run continues its MLflow run
            self.run_id = runs[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=run_name,
                                    tags={"dlrun.run_dir": key})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(config).items())]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(self.run_id, params=params[i:i + 100])
            client.log_batch(self.run_id, tags=[RunTag("dlrun.run_dir", key)])

    def log(self, record: dict) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, v, now, int(record["epoch"])) for k, v in scalars(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def mlflow(tracking_uri: Optional[str] = None, experiment: str = "dlrun") -> LoggerSpec:
    """An MLflow run per dlrun run; tracking_uri null = sqlite:///<cwd>/outputs/mlflow.db."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):  # absolute, so that the store does not depend on the cwd
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())

    def start(run_dir: Path, config: dict, run_name: str) -> Tracker:
        return MlflowTracker(uri, experiment, run_dir, config, run_name)

    return LoggerSpec("mlflow", start)


def none() -> None:
    """No logger (metrics.jsonl only)."""
    return None


LOGGERS: dict[str, Callable[..., Optional[LoggerSpec]]] = {
    "none": none, "tensorboard": tensorboard, "mlflow": mlflow,
}
PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}  # imported when selected


def build_all(node) -> tuple[LoggerSpec, ...]:
    """Every logger selected under `logger:` (one key per selected option), validated."""
    specs = []
    for name in node or {}:
        sub = dict(node[name] or {})
        spec = build("logger", LOGGERS, {"name": name, **sub}, prefix=f"logger.{name}")
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


def require_packages(specs) -> None:
    """Import each selected logger's package (ConfigError naming the extra to install if one is
    missing): a run's runtime step (dlrun.train.setup.attach_runtime), not part of validation."""
    for spec in specs:
        if spec.name in PACKAGES:
            _require(PACKAGES[spec.name], spec.name)


class Trackers:
    """The started loggers of one run directory; a logger that fails is reported once and
    dropped (metrics.jsonl has every record anyway)."""

    def __init__(self, specs, run_dir: Path, config: dict, run_name: str):
        self.active: list[tuple[str, Tracker]] = []
        for spec in specs:
            try:
                self.active.append((spec.name, spec.open(run_dir, config, run_name)))
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                log.warning("warning: logger=%s could not start: %s", spec.name,
                            one_line(exc))

    def log(self, record: dict) -> None:
        for name, tracker in list(self.active):
            try:
                tracker.log(record)
            except Exception as exc:  # noqa: BLE001
                log.warning("warning: logger=%s failed, stopped logging to it: %s", name, exc)
                self.active.remove((name, tracker))

    def close(self, status: str = "FINISHED") -> None:
        for name, tracker in self.active:
            try:
                tracker.close(status)
            except Exception as exc:  # noqa: BLE001
                log.warning("warning: logger=%s could not close: %s", name, exc)
        self.active = []


def open_all(specs, run_dirs: list[Path], config: dict) -> list[Trackers]:
    """One Trackers per run directory (one per copy with train.num_seeds > 1)."""
    top = run_dirs[0].parent.name if len(run_dirs) > 1 else run_dirs[0].name
    return [Trackers(specs, d, config, d.name if len(run_dirs) == 1 else f"{top}/{d.name}")
            for d in run_dirs]


class RunSinks:
    """Where a training run's records go besides metrics.jsonl: the selected loggers (one
    Trackers per run directory) and the live progress display. A context manager: on leaving,
    the display is cleared and every logger closed (FAILED on an error, KILLED on a stop)."""

    def __init__(self, specs, run_dirs: list[Path], config: dict, display):
        self.display = display
        self.trackers: list[Trackers] = []
        try:
            self.trackers = open_all(specs, run_dirs, config) if specs else []
        except BaseException:
            display.close()
            raise

    def step(self) -> None:
        """One training step dispatched (loop=step): advance the display."""
        self.display.step()

    def record(self, i: int, record: dict) -> None:
        """Copy i's record of an epoch, just written to its metrics.jsonl."""
        if self.trackers:
            self.trackers[i].log(record)
        if i == 0:
            self.display.epoch_done(int(record["epoch"]), record)

    def __enter__(self) -> "RunSinks":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.display.close()
        status = ("FINISHED" if kind is None else
                  "KILLED" if not issubclass(kind, Exception) else "FAILED")
        for trackers in self.trackers:
            trackers.close(status)
