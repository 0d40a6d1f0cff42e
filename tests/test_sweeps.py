"""Sweeps as a user runs them: the sweep report (`dlrun-report`, and at the end of `dlrun -m`) on
finished, running and SIGKILLed sweeps; re-running a killed sweep with resume=true finishes it
without retraining finished jobs; pruning by dlrun's median rule; a seeds x learning-rates grid
trained as one vmapped program and read by the report as one run per configuration.
"""
from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DLRUN, describe, dlrun_env, files_under, run_dirs
from dlrun.sweeps import pruning
from dlrun.sweeps import report

pytestmark = pytest.mark.slow  # CLI subprocesses: `pytest -m slow`, run by .ci/run

REPORT = Path(sys.executable).parent / "dlrun-report"
SMALL = ("dataset.train_subset=512", "plots=false")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sweep_dir_of(tmp_path: Path) -> list[Path]:
    root = tmp_path / "outputs" / "multirun"
    return sorted(root.glob("*/*")) if root.is_dir() else []


def final(run_dir: Path, key: str) -> float:
    return json.loads((run_dir / "summary.json").read_text())["final"][key]


# ---------------------------------------------------------------------------- pure parts
def test_median_rule():
    cfg = pruning.PruneConfig(enabled=True, warmup_epochs=2, min_trials=2)
    peers = [{1: 0.2, 2: 0.10}, {1: 0.3, 2: 0.20}, {1: 0.4}]
    assert pruning.verdict([(1, 0.9)], peers, 1, cfg) is None  # before warmup
    assert pruning.verdict([(1, 0.9), (2, 0.16)], peers, 2, cfg) == {
        "epoch": 2, "value": 0.16, "median": pytest.approx(0.15), "trials": 2}
    assert pruning.verdict([(1, 0.9), (2, 0.14)], peers, 2, cfg) is None  # better than median
    assert pruning.verdict([(1, 0.1), (2, 0.5)], peers, 2, cfg) is None  # its best (0.1) counts
    assert pruning.verdict([(2, math.nan)], peers, 2, cfg)["value"] == math.inf  # diverged
    assert pruning.verdict([(2, 0.9)], peers[:1], 2, cfg) is None  # too few finished trials
    with pytest.raises(Exception, match="min_trials"):
        pruning.PruneConfig(min_trials=0)


def test_labels_leave_out_what_the_group_option_decides():
    configs = [{"model.name": "mlp", "model.hidden": [625], "optim.lr": 0.1},
               {"model.name": "mlp", "model.hidden": [625], "optim.lr": 0.01},
               {"model.name": "cnn", "model.channels": [32], "optim.lr": 0.1}]
    assert report.shown_keys(configs) == ["model.name", "optim.lr"]
    configs.append({"model.name": "mlp", "model.hidden": [100], "optim.lr": 0.1})
    assert report.shown_keys(configs) == ["model.hidden", "model.name", "optim.lr"]
    assert report.label_of({"model.name": "mlp", "optim.lr": 0.1}) == "model=mlp optim.lr=0.1"


# ------------------------------------------------------------------- grid with seeds: report
def test_report_groups_seeds_and_ranks_by_validation_error(tmp_path):
    proc = subprocess.run([str(DLRUN), "-m", "optim=sgd", "optim.lr=0.1,0.0001", "train.seed=range(2)",
                           "train.epochs=2", *SMALL], cwd=tmp_path, env=dlrun_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, describe(proc)
    (sweep,) = sweep_dir_of(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    rows = read_csv(sweep / "report.csv")
    assert [r["config"] for r in rows] == ["optim.lr=0.1", "optim.lr=0.0001"]  # ranked
    runs = read_csv(sweep / "runs.csv")
    for row in rows:
        mine = [sweep / r["run"] for r in runs if r["config"] == row["config"]]
        assert len(mine) == 2 and row["seeds"] in ("0 1", "1 0") and row["status"] == "2 done"
        vals = [final(d, "val_error") for d in mine]
        assert float(row["final_val_mean"]) == pytest.approx(sum(vals) / 2)
        assert float(row["final_val_std"]) == pytest.approx(abs(vals[0] - vals[1]) / 2)
        assert float(row["epochs_mean"]) == 2.0
    assert float(rows[0]["final_val_mean"]) < float(rows[1]["final_val_mean"])
    png = (sweep / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    md = (sweep / "report.md").read_text()
    assert "| 1 | optim.lr=0.1 | 2 | 2 done |" in md
    # the command on its own gives the same table, and refuses what is not a sweep
    (sweep / "report.csv").unlink()
    out = subprocess.run([str(REPORT), str(sweep), "--no-plot"], capture_output=True, text=True)
    assert out.returncode == 0 and "best by final_val: optim.lr=0.1" in out.stdout, out.stderr
    assert read_csv(sweep / "report.csv") == rows
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "nowhere", tmp_path / "empty"):
        out = subprocess.run([str(REPORT), str(bad)], capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("dlrun-report: error: ") and "Traceback" not in out.stderr


# ------------------------------------------- a sweep SIGKILLed mid-job, reported, resumed
LONG = ("-m", "optim=sgd", "optim.lr=0.1,0.05,0.02", "train.epochs=150",
        "checkpoint.every_epochs=5", "checkpoint.keep=1", *SMALL)


def wait_for(predicate, timeout: float = 240.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_killed_sweep_is_reported_and_resumed_without_retraining(tmp_path):
    env = dlrun_env(tmp_path)
    proc = subprocess.Popen([str(DLRUN), *LONG, "resume=true"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(sweep_dir_of(tmp_path)) == 1, what="the sweep directory")
        (old,) = sweep_dir_of(tmp_path)
        ckpts = old / "1" / "checkpoints"
        wait_for(lambda: ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()),
                 what="job 1's first checkpoint")
        running = {r["run"]: r["status"] for r in report.run_rows(
            report.group_runs(report.find_runs(old)), old)}
        assert running == {"0": "done", "1": "running"}, running
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    # the crashed sweep: job 0 done, job 1 stopped part-way, job 2 never started
    out = subprocess.run([str(REPORT), str(old)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    crashed = {r["run"]: r for r in read_csv(old / "runs.csv")}
    assert crashed.keys() == {"0", "1"} and crashed["0"]["status"] == "done"
    assert crashed["1"]["status"] == "stopped" and 0 < int(crashed["1"]["epochs"]) < 150
    params0 = (old / "0" / "params.pkl").read_bytes()
    mtime0 = (old / "0" / "params.pkl").stat().st_mtime_ns

    again = subprocess.run([str(DLRUN), *LONG, "resume=true"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, describe(again)
    assert "already finished its 150 epochs; nothing to do" in again.stdout
    new = [d for d in sweep_dir_of(tmp_path) if d != old]
    assert len(new) == 1
    new = new[0]
    # job 0 was not trained again; job 1 continued from its checkpoint in its old directory
    assert (new / "0").is_symlink() and (new / "0").resolve() == (old / "0").resolve()
    assert (old / "0" / "params.pkl").stat().st_mtime_ns == mtime0
    assert (old / "0" / "params.pkl").read_bytes() == params0
    assert (new / "1").is_symlink()
    resumed = json.loads((old / "1" / "summary.json").read_text())
    assert resumed["epochs"] == 150 and resumed["resumed_at_epochs"], resumed["resumed_at_epochs"]
    assert not (new / "2").is_symlink() and (new / "2" / "summary.json").is_file()
    rows = {r["run"]: r["status"] for r in read_csv(new / "runs.csv")}
    assert rows == {"0": "done", "1": "done", "2": "done"}
    # a third time: everything is done, nothing is trained
    third = subprocess.run([str(DLRUN), *LONG, "resume=true"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, describe(third)
    assert third.stdout.count("nothing to do") == 3, describe(third)


# --------------------------------------------------------------------------------- pruning
def test_pruning_stops_trials_worse_than_the_finished_median(tmp_path):
    proc = subprocess.run([str(DLRUN), "-m", "optim=sgd", "optim.lr=0.1,0.00001", "train.epochs=3",
                           "prune.enabled=true", "prune.min_trials=1", *SMALL], cwd=tmp_path,
                          env=dlrun_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, describe(proc)
    (sweep,) = sweep_dir_of(tmp_path)
    good, bad = (json.loads((sweep / j / "summary.json").read_text()) for j in ("0", "1"))
    assert "pruned" not in good and good["epochs"] == 3
    assert bad["pruned"]["epoch"] == 1 and bad["epochs"] == 1
    assert bad["pruned"]["value"] > bad["pruned"]["median"] == pytest.approx(
        json.loads((sweep / "0" / "metrics.jsonl").read_text().splitlines()[0])["val_error"])
    assert len((sweep / "1" / "metrics.jsonl").read_text().splitlines()) == 1
    assert "pruned after epoch 1: best val_error so far" in proc.stdout
    assert "done (pruned after epoch 1): final test_err" in proc.stdout
    runs = {r["run"]: r["status"] for r in read_csv(sweep / "runs.csv")}
    assert runs == {"0": "done", "1": "pruned@1"}
    assert "| 1 pruned |" in (sweep / "report.md").read_text()


def test_pruning_outside_a_sweep_is_refused(tmp_path):
    proc = subprocess.run([str(DLRUN), "prune.enabled=true", "train.epochs=1"], cwd=tmp_path,
                          env=dlrun_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.count("\n") == 1 and "with -m" in proc.stderr, proc.stderr
    assert files_under(tmp_path / "outputs") == []


# ------------------------------------------------ seeds x learning rates in one program
def test_vmapped_grid_is_one_run_per_configuration_in_the_report(tmp_path):
    proc = subprocess.run([str(DLRUN), "train.num_seeds=4", "train.lrs=[0.01,0.0001]",
                           "train.epochs=2", *SMALL], cwd=tmp_path, env=dlrun_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    copies = {s: json.loads((run_dir / f"seed_{s}" / "summary.json").read_text()) for s in range(4)}
    assert [copies[s]["lr"] for s in range(4)] == pytest.approx([0.01, 0.0001, 0.01, 0.0001])
    out = subprocess.run([str(REPORT), str(run_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = {r["config"]: r for r in read_csv(run_dir / "report.csv")}
    assert rows.keys() == {"optim.lr=0.01", "optim.lr=0.0001"}
    assert rows["optim.lr=0.01"]["seeds"] == "0 2" and rows["optim.lr=0.0001"]["seeds"] == "1 3"
    vals = [copies[s]["final"]["val_error"] for s in (0, 2)]
    assert float(rows["optim.lr=0.01"]["final_val_mean"]) == pytest.approx(sum(vals) / 2)
    assert read_csv(run_dir / "report.csv")[0]["config"] == "optim.lr=0.01"  # the better rate
    bad = subprocess.run([str(DLRUN), "train.num_seeds=3", "train.lrs=[0.01,0.001]"],
                         cwd=tmp_path, env=dlrun_env(tmp_path), capture_output=True, text=True)
    assert bad.returncode == 2 and "multiple" in bad.stderr and bad.stderr.count("\n") == 1
