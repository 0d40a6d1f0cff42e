"""dlrun-report in-process on run directories written by hand (no training): datasets are
ranked apart, --out writes elsewhere, and the copy rule of train.num_seeds is layout.copies'."""
import csv
import json

import pytest

from dlrun.runs import layout
from dlrun.sweeps import report


def fake_run(path, dataset, lr, val_error, seed=0, num_seeds=1, lrs=()):
    path.mkdir(parents=True)
    config = {"model": {"name": "mlp"}, "optim": {"name": "sgd", "lr": lr},
              "dataset": {"name": dataset}, "train": {"seed": seed, "num_seeds": num_seeds,
                                                      "lrs": list(lrs), "epochs": 1}}
    (path / layout.RUN_INFO).write_text(json.dumps({"format": 1, "config": config}))
    dirs = [path] if num_seeds == 1 else [layout.copy_dir(path, s) for s, _ in
                                          layout.copies(seed, num_seeds, lr, lrs)]
    for d in dirs:
        d.mkdir(exist_ok=True)
        record = {"epoch": 1, "step": 10, "val_error": val_error, "test_error": val_error + 0.01}
        (d / layout.METRICS).write_text(json.dumps(record) + "\n")
        (d / layout.SUMMARY).write_text(json.dumps({"final": record, "best": record,
                                                    "best_selected_on": "val_error"}))


def test_runs_of_different_datasets_are_ranked_apart(tmp_path):
    fake_run(tmp_path / "a", "fashion_mnist", 0.1, 0.20)
    fake_run(tmp_path / "b", "mnist_sample", 0.1, 0.05)
    fake_run(tmp_path / "c", "fashion_mnist", 0.01, 0.15)
    rows = report.write_report(tmp_path, plot=False)
    assert [(r["dataset"], r["rank"], r["config"]) for r in rows] == [
        ("fashion_mnist", 1, "dataset=fashion_mnist optim.lr=0.01"),
        ("fashion_mnist", 2, "dataset=fashion_mnist optim.lr=0.1"),
        ("mnist_sample", 1, "dataset=mnist_sample optim.lr=0.1")]
    text = (tmp_path / "report.md").read_text()
    assert "## Dataset fashion_mnist" in text and "## Dataset mnist_sample" in text


def test_out_writes_the_report_elsewhere_and_leaves_the_runs_alone(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "a", "mnist_sample", 0.1, 0.05)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*"))
    report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "mine" / "rep"), "--no-plot"])
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*")) == before
    assert (tmp_path / "mine" / "rep" / "report.md").read_text().startswith(report.HEADING)
    assert "best by final_val: (one configuration)" in capsys.readouterr().out
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "file")])
    assert exit_.value.code == 2 and (tmp_path / "file").read_text() == "mine"


def test_copies_follow_the_one_copy_rule(tmp_path):
    fake_run(tmp_path / "grid", "mnist_sample", 0.1, 0.05, seed=3, num_seeds=4, lrs=(0.1, 0.01))
    report.write_report(tmp_path / "grid", plot=False)
    rows = list(csv.DictReader(open(tmp_path / "grid" / "runs.csv")))
    assert sorted((r["run"], r["seed"]) for r in rows) == [
        ("seed_3", "3"), ("seed_4", "4"), ("seed_5", "5"), ("seed_6", "6")]
    assert layout.copies(3, 4, 0.5, (0.1, 0.01)) == [(3, 0.1), (4, 0.01), (5, 0.1), (6, 0.01)]
