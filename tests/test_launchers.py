"""Sweeps through Hydra's launchers and sweepers, run as a user runs them (`dlrun -m ...` in a
temporary directory): grids and ranges (basic sweeper), joblib (parallel jobs sharing the
machine, see dlrun.sweeps.launch_env), Optuna (conf/hparams_search/), submitit_local and ray.
The plugins are the `sweep` extras (`make test` installs them; ray: the `ray` extra); a test
whose plugin is not installed is skipped, saying which."""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO, describe, files_under

pytestmark = pytest.mark.slow  # CLI subprocesses: `pytest -m slow`, run by .ci/run

TINY = ("train.epochs=1", "dataset.train_subset=512", "plots=false")
SHARE_RE = re.compile(r"^\[(.+?)\]\[INFO\] job (\d+) \(pid (\d+)\) shares this machine with up "
                      r"to (\d+) at once: slot (\d+), CPUs ([\d,]+)", re.MULTILINE)
STAMP_RE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", re.MULTILINE)


def needs(plugin: str, extra: str = "sweep"):
    """Skip unless the plugin is installed; but never skip for an extra named in
    DLRUN_REQUIRE_EXTRAS (comma-separated; .ci/run sets it, so a broken install fails CI)."""
    required = extra in os.environ.get("DLRUN_REQUIRE_EXTRAS", "").split(",")
    found = importlib.util.find_spec(f"hydra_plugins.{plugin}") is not None
    return pytest.mark.skipif(not found and not required,
                              reason=f"{plugin} not installed (pip install -e '.[{extra}]')")


def only_sweep(tmp_path: Path) -> Path:
    (sweep,) = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    return sweep


def jobs(sweep: Path) -> dict[str, Path]:
    return {d.name: d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()}


def config(job: Path) -> dict:
    return yaml.safe_load((job / ".hydra" / "config.yaml").read_text())


def objective(job: Path) -> float:
    """What the job returned to the sweeper: its final value of the selection metric."""
    s = json.loads((job / "summary.json").read_text())
    return s["final"][s["best_selected_on"]]


def test_grid_with_range(dlrun, tmp_path):
    proc = dlrun("-m", "optim.lr=0.1,0.01", "train.seed=range(2)", *TINY)
    assert proc.returncode == 0, describe(proc)
    found = jobs(only_sweep(tmp_path))
    assert sorted(found) == ["0", "1", "2", "3"]
    pairs = sorted((config(j)["optim"]["lr"], config(j)["train"]["seed"]) for j in found.values())
    assert pairs == sorted(itertools.product([0.1, 0.01], [0, 1]))
    assert all((j / "summary.json").is_file() for j in found.values())


@needs("hydra_joblib_launcher")
def test_joblib_runs_jobs_in_parallel_each_on_its_share_of_the_cpus(dlrun, tmp_path):
    proc = dlrun("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=0.1,0.01",
                 *TINY)
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr.strip() == "", describe(proc)
    found = jobs(only_sweep(tmp_path))
    assert sorted(found) == ["0", "1"]
    shares, spans = {}, []
    for num, job in found.items():
        assert (job / "summary.json").is_file(), num
        log = (job / "dlrun.log").read_text()
        ((stamp, job_num, pid, n, slot, cpus),) = SHARE_RE.findall(log)
        assert job_num == num and n == "2"
        shares[num] = (int(pid), int(slot), {int(c) for c in cpus.split(",")})
        stamps = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in STAMP_RE.findall(log)]
        spans.append((min(stamps), max(stamps)))
    (pid0, slot0, cpus0), (pid1, slot1, cpus1) = shares["0"], shares["1"]
    assert pid0 != pid1, "both jobs ran in the same process"
    assert {slot0, slot1} == {0, 1}
    if len(cpus0 | cpus1) > 1:  # a machine with >= 2 CPUs: disjoint halves
        assert not cpus0 & cpus1, shares
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, f"the two jobs did not overlap in time: {spans}"


@needs("hydra_joblib_launcher")
def test_joblib_failing_job_gives_one_line_and_exit_2(dlrun, tmp_path):
    proc = dlrun("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=0.01,-1",
                 *TINY)
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlrun: error: job 1 ("), describe(proc)
    assert "optim.lr" in lines[0]
    sweep = only_sweep(tmp_path)
    assert sorted(jobs(sweep)) == ["0"] and (sweep / "0" / "summary.json").is_file()
    assert not (sweep / ".dlrun-errors").exists()


@needs("hydra_joblib_launcher")
def test_joblib_sweep_whose_jobs_all_fail_leaves_nothing(dlrun, tmp_path):
    proc = dlrun("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=-1,-2",
                 *TINY)
    assert proc.returncode == 2, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line.split(" (")[0] for line in lines] == ["dlrun: error: job 0", "dlrun: error: job 1"]
    assert files_under(tmp_path / "outputs") == []


@needs("hydra_optuna_sweeper")
def test_optuna_minimises_validation_error_and_reports_the_best_trial(dlrun, tmp_path):
    """3 trials in two sweeps sharing one study in a SQLite file: the second continues it."""
    storage = ("hydra.sweeper.storage=sqlite:///" + str(tmp_path / "optuna.db"))
    first = dlrun("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=2", storage, *TINY)
    assert first.returncode == 0, describe(first)
    second = dlrun("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=1", storage, *TINY)
    assert second.returncode == 0, describe(second)
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    trials = [job for sweep in sweeps for job in jobs(sweep).values()]
    assert len(trials) == 3
    values = {job: objective(job) for job in trials}
    result = yaml.safe_load((sweeps[-1] / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(values.values()))
    best_job = min(values, key=values.get)
    overrides = yaml.safe_load((best_job / ".hydra" / "overrides.yaml").read_text())
    for key, value in result["best_params"].items():
        assert f"{key}={value}" in overrides, (key, value, overrides)
    assert config(best_job)["optim"]["lr"] == pytest.approx(result["best_params"]["optim.lr"])
    # the best trial is also printed at the end of the sweep
    assert f"Best value: {result['best_value']}" in second.stdout, describe(second)
    assert "Best parameters: {" in second.stdout


HPARAMS = sorted(p.stem for p in (REPO / "conf" / "hparams_search").glob("*.yaml"))


@needs("hydra_optuna_sweeper")
@pytest.mark.parametrize("name", HPARAMS)
def test_hparams_search_composes_and_its_search_space_exists(name):
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_module("dlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"hparams_search={name}"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
        assert cfg.model.name == name
        params = OmegaConf.to_container(sweeper.params)
        assert params, name
        parser = OverridesParser.create()
        missing = object()
        for key, space in params.items():
            assert OmegaConf.select(cfg, key, default=missing) is not missing, key
            override = parser.parse_override(f"{key}={space}")
            if override.is_choice_sweep():  # every value composes (types, list syntax)
                for value in override.sweep_string_iterator():
                    compose("config", overrides=[f"hparams_search={name}", f"{key}={value}"])
            else:
                assert override.is_interval_sweep(), (key, space)


@needs("hydra_submitit_launcher")
def test_submitit_local_runs_two_jobs(dlrun, tmp_path):
    proc = dlrun("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                 "optim.lr=0.1,0.01", *TINY)
    assert proc.returncode == 0, describe(proc)
    sweep = only_sweep(tmp_path)
    found = jobs(sweep)
    assert sorted(found) == ["0", "1"]
    assert sorted(config(j)["optim"]["lr"] for j in found.values()) == [0.01, 0.1]
    assert all((j / "summary.json").is_file() for j in found.values())
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2  # submitit's own logs


@needs("hydra_submitit_launcher")
def test_slurm_config_gives_the_sbatch_script_of_the_readme(tmp_path, monkeypatch):
    """hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml) through submitit's own sbatch
    writer, on a machine without SLURM (a stub srun): partition, one GPU, time limit, USR2
    before the limit, --requeue."""
    import submitit
    from hydra import compose, initialize_config_module
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:{os.environ['PATH']}")
    with initialize_config_module("dlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params["_target_"].endswith("SlurmLauncher")
    params = {k: v for k, v in params.items() if k not in ("_target_", "submitit_folder")}
    # as the plugin's launch() maps them
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params["name"] = "dlrun"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if v is not None})
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=60", "--signal=USR2@120",
                 "--requeue", "--cpus-per-task=8", "--mem=32GB"):
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert executor._executor.max_num_timeout == 3


def test_requeued_sweep_job_resumes_in_its_own_directory(dlrun, tmp_path):
    """What a job requeued by SLURM does: the same job directory, the same overrides, with
    resume=true. Here the second run also asks for one more epoch, so it has work left."""
    sweep = tmp_path / "sweep"
    common = ("-m", "resume=true", f"hydra.sweep.dir={sweep}", "optim.lr=0.01",
              "dataset.train_subset=512", "plots=false")
    first = dlrun(*common, "train.epochs=1")
    assert first.returncode == 0, describe(first)
    second = dlrun(*common, "train.epochs=2")
    assert second.returncode == 0, describe(second)
    job = sweep / "0"
    assert job.is_dir() and not job.is_symlink()
    epochs = [json.loads(line)["epoch"] for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert json.loads((job / "summary.json").read_text())["epochs"] == 2


@needs("hydra_ray_launcher", extra="ray")
def test_ray_local_runs_two_jobs(dlrun, tmp_path):
    proc = dlrun("-m", "hydra/launcher=ray", "optim.lr=0.1,0.01", *TINY, timeout=240)
    assert proc.returncode == 0, describe(proc)
    found = jobs(only_sweep(tmp_path))
    assert sorted(found) == ["0", "1"]
    assert all((j / "summary.json").is_file() for j in found.values())


# ------------------------------------------------------------------ dlrun.sweeps.launch_env, directly


def test_cpu_share_splits_cpus_into_disjoint_slots():
    from dlrun.sweeps.launch_env import cpu_share

    assert [cpu_share([0, 1], 2, s) for s in range(2)] == [[0], [1]]
    assert [cpu_share(list(range(8)), 3, s) for s in range(3)] == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert [cpu_share([4, 5], 3, s) for s in range(3)] == [[4], [5], [4]]  # more jobs than CPUs


def test_joblib_defaults_to_one_job_per_gpu(monkeypatch):
    from dlrun.sweeps.launch_env import default_overrides

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert default_overrides(["-m", "hydra/launcher=joblib"])[-1] == "hydra.launcher.n_jobs=2"
    given = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]
    assert default_overrides(given) == given
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert default_overrides(["-m", "hydra/launcher=joblib"]) == ["-m", "hydra/launcher=joblib"]


JOB_IN_WORKER = """
import json, os
from omegaconf import OmegaConf
from dlrun.sweeps import launch_env

hc = OmegaConf.create({"launcher": {"_target_": "x.JoblibLauncher", "n_jobs": 2},
                       "job": {"num": 0}})
info = launch_env.configure_job(hc)
print(json.dumps({"info": info, "affinity": sorted(os.sched_getaffinity(0)),
                  "env": {k: os.environ.get(k) for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                        "CUDA_VISIBLE_DEVICES")}}))
"""


@pytest.mark.parametrize("gpus, fraction, visible", [("0", "0.45", "0"), ("3,5", None, "3"),
                                                     ("", None, "")])
def test_worker_gets_its_cpus_and_gpu_memory_share(tmp_path, gpus, fraction, visible):
    """configure_job in a fresh process that is not the dlrun process (a joblib worker) with
    2 jobs at once: one GPU shared (0.45 of its memory each), two GPUs (one each), none."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "DLRUN_MAIN"))}
    env["CUDA_VISIBLE_DEVICES"] = gpus
    proc = subprocess.run([sys.executable, "-c", JOB_IN_WORKER], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, describe(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["info"]["slot"] == 0 and out["info"]["of"] == 2
    cpus = sorted(os.sched_getaffinity(0))
    assert out["affinity"] == cpus[:max(1, len(cpus) // 2)]
    assert out["env"] == {"XLA_PYTHON_CLIENT_MEM_FRACTION": fraction,
                          "CUDA_VISIBLE_DEVICES": visible}
