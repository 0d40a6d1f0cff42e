"""Command-line tests: `dlrun` run as a user runs it, a subprocess in a temporary directory.

Every run is tiny (train.epochs=1 or 2, dataset.train_subset=512 where the model does not matter)
because each dlrun process spends seconds importing JAX and compiling.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, describe, files_under, run_dirs

TINY = ("train.epochs=1", "dataset.train_subset=512")
IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
METRIC_KEYS = {"epoch", "train_loss", "train_error", "val_error", "test_error", "lr",
               "epoch_seconds", "examples_per_second"}
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIME_UID_RE = re.compile(r"^\d{2}-\d{2}-\d{2}-[0-9a-f]+$")


def only_run_dir(proc: subprocess.CompletedProcess, tmp_path: Path) -> Path:
    """The one run directory a successful single run printed; it must be under outputs/."""
    assert proc.returncode == 0, describe(proc)
    dirs = run_dirs(proc.stdout)
    assert len(dirs) == 1, describe(proc)
    run_dir = dirs[0]
    assert run_dir.is_dir()
    assert run_dir.resolve().is_relative_to((tmp_path / "outputs").resolve())
    return run_dir


def resolved_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())


# ------------------------------------------------------------------------ a default run


# Runs without dlrun, JAX or Flax: the parameter files must be plain pickles of numpy arrays.
LOAD_PARAMS = textwrap.dedent("""
    import json, pickle, sys
    import numpy as np

    def shapes(tree, prefix=""):
        assert type(tree) is dict, type(tree)
        out = {}
        for key, value in tree.items():
            assert type(key) is str, key
            if isinstance(value, dict):
                out.update(shapes(value, prefix + key + "/"))
            else:
                assert type(value) is np.ndarray, (key, type(value))
                assert np.isfinite(value).all(), key
                out[prefix + key] = list(value.shape)
        return out

    result = {}
    for name in sys.argv[1:]:
        with open(name, "rb") as f:
            result[name] = shapes(pickle.load(f))
    banned = sorted(m for m in sys.modules if m.split(".")[0] in ("dlrun", "jax", "jaxlib", "flax"))
    assert not banned, banned
    print(json.dumps(result))
""")


@pytest.mark.smoke
def test_default_run_writes_complete_run_dir(dlrun, tmp_path):
    proc = dlrun("train.epochs=2", "dataset.train_subset=512")
    run_dir = only_run_dir(proc, tmp_path)
    assert str(run_dir) in proc.stdout
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"], describe(proc)
    assert proc.stderr.strip() == "", describe(proc)
    done = [line for line in proc.stdout.splitlines() if line.startswith("done: final test_err")]
    assert len(done) == 1 and "best val_error" in done[0] and "s total" in done[0], describe(proc)
    for name in ("params.pkl", "best_params.pkl", "summary.json", "metrics.jsonl"):
        assert (run_dir / name).stat().st_mode & 0o044 == 0o044, name  # group/other readable

    # Hydra's record of the run
    config = resolved_config(run_dir)
    assert config["train"]["epochs"] == 2 and config["dataset"]["train_subset"] == 512
    assert config["model"]["name"] == "mlp" and config["dataset"]["name"] == "mnist_sample"
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert overrides == ["train.epochs=2", "dataset.train_subset=512"]

    # metrics.jsonl: one complete JSON line per epoch
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert METRIC_KEYS <= set(r), sorted(METRIC_KEYS - set(r))
        for key in METRIC_KEYS - {"epoch"}:
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (key, r[key])
        for key in ("train_error", "val_error", "test_error"):
            assert 0.0 <= r[key] <= 1.0
        assert r["lr"] == pytest.approx(0.001)  # adam's default, constant schedule

    # parameters: plain pickles, loadable without dlrun/JAX (-I: no cwd, no PYTHONPATH)
    load = subprocess.run([sys.executable, "-I", "-c", LOAD_PARAMS, "params.pkl",
                           "best_params.pkl"], cwd=run_dir, capture_output=True, text=True,
                          timeout=60)
    assert load.returncode == 0, describe(load)
    mlp_shapes = {"hidden_0/kernel": [784, 625], "hidden_0/bias": [625],
                  "out/kernel": [625, 10], "out/bias": [10]}
    assert json.loads(load.stdout) == {"params.pkl": mlp_shapes, "best_params.pkl": mlp_shapes}

    # summary.json
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"] == records[-1]
    assert summary["best"] in records
    assert summary["best"]["val_error"] == min(r["val_error"] for r in records)
    timings = summary["timings"]
    for key in ("compile_seconds", "steady_epoch_seconds"):
        assert isinstance(timings[key], float) and timings[key] > 0, (key, timings)
    assert timings["steady_epoch_seconds"] == pytest.approx(records[1]["epoch_seconds"])
    for lib in ("jax", "flax", "optax"):
        assert isinstance(summary["versions"][lib], str) and summary["versions"][lib], lib
    assert summary["device"]["platform"] and summary["device"]["count"] >= 1

    # dlrun.log: the console's epoch lines, timestamped
    log = (run_dir / "dlrun.log").read_text()
    for line in epoch_lines:
        assert line in log


# ------------------------------------------------------------- the commands from the issue


def check_cnn_rmsprop(config: dict, summary: dict) -> None:
    assert config["model"]["name"] == "cnn" and config["optim"]["name"] == "rmsprop"
    assert summary["loop"] == "step"


def check_mlp_sgd_dropout_l2(config: dict, summary: dict) -> None:
    assert config["model"]["name"] == "mlp"
    assert config["optim"] == {"name": "sgd", "lr": 0.1}
    assert set(config["regularizer"]) == {"dropout", "l2"}
    assert config["regularizer"]["dropout"]["hidden"] == 0.5
    assert config["regularizer"]["l2"]["coef"] == pytest.approx(1e-4)
    assert summary["final"]["lr"] == pytest.approx(0.1)


def check_radford_convnet(config: dict, summary: dict) -> None:
    assert config["model"]["name"] == "cnn" and config["model"]["use_bias"] is False
    assert config["optim"]["name"] == "rmsprop"
    assert config["train"]["shuffle"] is False
    assert config["train"]["epochs"] == 1  # the command line wins over the preset's 100
    assert config["dataset"]["val_size"] == 0
    assert summary["best_selected_on"] == "test_error"  # no validation split
    assert "train_eval_error" in summary["final"]


def check_fashion_mnist(config: dict, summary: dict) -> None:
    assert config["dataset"]["name"] == "fashion_mnist"
    assert 0.0 <= summary["final"]["test_error"] < 0.9


@pytest.mark.parametrize("args, check", [
    pytest.param(["model=cnn", "optim=rmsprop"], check_cnn_rmsprop, id="cnn-rmsprop"),
    pytest.param(["model=mlp", "optim=sgd", "optim.lr=0.1", "regularizer=[dropout,l2]"],
                 check_mlp_sgd_dropout_l2, id="mlp-sgd-dropout-l2"),
    pytest.param(["+experiment=radford_convnet"], check_radford_convnet, id="radford-convnet"),
    pytest.param(["dataset=fashion_mnist"], check_fashion_mnist, id="fashion-mnist",
                 marks=pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                          reason=f"{FASHION_DIR} not installed")),
])
def test_issue_commands(dlrun, tmp_path, args, check):
    proc = dlrun(*args, *TINY)
    run_dir = only_run_dir(proc, tmp_path)
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 1 and epoch_lines[0].startswith("epoch 1/1"), describe(proc)
    for name in ("metrics.jsonl", "params.pkl", "best_params.pkl", "summary.json", "dlrun.log"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1
    check(resolved_config(run_dir), summary)


# ------------------------------------------------------------------------ --help and --cfg


@pytest.mark.smoke
def test_help_and_cfg_job_print_and_write_nothing(dlrun, tmp_path):
    proc = dlrun("--help")
    assert proc.returncode == 0, describe(proc)
    groups = {}
    for line in proc.stdout.splitlines():
        name, sep, options = line.partition(": ")
        if sep and name in ("model", "optim", "regularizer", "dataset", "schedule"):
            groups[name] = set(options.split(", "))
    assert set(groups) == {"model", "optim", "regularizer", "dataset", "schedule"}, proc.stdout
    assert groups["model"] == {"cnn", "logreg", "mlp", "lenet", "vgg", "resnet", "rnn", "lstm",
                               "autoencoder", "rbm", "sda", "dbn", "knn", "custom", "gaussian", "rnnrbm"}
    optims = {"sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adadelta", "adam", "rprop",
              "sign_agreement", "lbfgs", "cg", "adamw", "lamb", "muon"}
    assert optims <= groups["optim"]
    assert {"none", "l1", "l2", "weight_decay", "max_norm", "dropout",
            "dropconnect"} <= groups["regularizer"]
    assert {"mnist_sample", "mnist", "fashion_mnist", "npz", "image_folder", "cifar10", "cifar100",
            "custom"} <= groups["dataset"]
    assert {"constant", "step", "cosine"} <= groups["schedule"]

    proc = dlrun("--cfg", "job")
    assert proc.returncode == 0, describe(proc)
    config = yaml.safe_load(proc.stdout)
    assert isinstance(config, dict) and {"model", "optim", "train"} <= set(config)
    assert config["model"]["name"] == "mlp" and config["optim"]["name"] == "adam"
    assert config["train"]["epochs"] == 10
    assert not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------------------- bad input


def empty_dir(tmp_path: Path) -> Path:
    path = tmp_path / "empty_data"
    path.mkdir()
    return path


def corrupt_dir(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt_data"
    path.mkdir()
    for name in IDX_NAMES:
        (path / name).write_bytes(b"this is not a gzip IDX file\n")
    return path


# (id, args, what the one error line must contain, case-insensitively: each entry a string or a
# tuple of alternatives). "{empty}", "{corrupt}" and "{cache}" are replaced by the temporary
# directories made for the case.
BAD_INPUTS = [
    ("unknown-model", ["model=foo"], ["foo", "cnn", "logreg", "mlp"]),
    ("misspelt-key", ["optim.lrr=0.1"], ["optim.lrr"]),
    ("added-unknown-key", ["+optim.foo=1"], ["optim.foo"]),
    ("lr-not-a-number", ["optim.lr=abc"], ["optim.lr", "abc"]),
    ("batch-size-negative", ["train.batch_size=-1"], ["batch_size", "0 for the whole training split"]),
    ("epochs-negative", ["train.epochs=-1"], ["epochs"]),
    ("lr-zero", ["optim.lr=0"], ["optim.lr"]),
    ("lr-negative", ["optim.lr=-0.1"], ["optim.lr"]),
    ("dropout-input-1", ["regularizer=[dropout]", "regularizer.dropout.input=1.0"],
     ["regularizer.dropout.input"]),
    ("dropout-hidden-negative", ["regularizer=[dropout]", "regularizer.dropout.hidden=-0.1"],
     ["regularizer.dropout.hidden"]),
    ("batch-larger-than-train-set", ["train.batch_size=5000"], ["train.batch_size", "5000"]),
    ("epochs-overflow", ["train.epochs=1000000000000"], ["train.epochs"]),
    ("mnist-absent-offline",
     ["dataset=mnist", "dataset.download=false", "dataset.data_dir={empty}"],
     ["{empty}", "{cache}", "dataset.data_dir"]),
    ("mnist-corrupt", ["dataset=mnist", "dataset.data_dir={corrupt}", "dataset.download=false"],
     [("SHA-256", "checksum"), "{corrupt}"]),
    ("unknown-experiment", ["+experiment=nope"], ["nope", "radford_convnet"]),
    ("warmup-longer-than-run", ["schedule=cosine", "schedule.warmup_epochs=5", "train.epochs=1"],
     ["warmup_epochs"]),
    ("misspelt-group", ["optimizer=adam"], ["did you mean optim?"]),
    ("misspelt-top-level-key", ["epochs=5"], ["did you mean train.epochs?"]),
    ("scalar-for-a-list", ["model.hidden=256"], ["model.hidden=[256]"]),
    ("sweep-values-without-m", ["optim.lr=0.1,0.01"], ["--multirun"]),
    ("experiment-without-plus", ["experiment=radford_net"], ["+experiment=radford_net"]),
    ("sweep-with-unknown-option", ["-m", "model=foo,logreg", *TINY], ["unknown model 'foo'"]),
    ("lrs-length-differs-from-num-seeds", ["train.num_seeds=3", "train.lrs=[0.1,0.01]"],
     ["train.lrs", "train.num_seeds=2"]),
    ("num-seeds-zero", ["train.num_seeds=0"], ["train.num_seeds"]),
    ("data-dir-for-the-shipped-sample", ["dataset.data_dir={empty}"],
     ["data_dir does not apply to mnist_sample", "dataset=mnist dataset.data_dir=DIR"]),
]
SMOKE = ("unknown-model", "lr-not-a-number", "misspelt-key", "data-dir-for-the-shipped-sample")  # in make test
LR_INF = pytest.param(["optim.lr=inf", *TINY], ["optim.lr", "finite"], id="lr-infinite")


@pytest.mark.parametrize("args, expected",
                         [pytest.param(a, e, id=i, marks=[pytest.mark.smoke] if i in SMOKE else [])
                          for i, a, e in BAD_INPUTS] + [LR_INF])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(dlrun, tmp_path, args, expected):
    dirs = {}
    if any("{empty}" in a for a in args):
        dirs["empty"] = empty_dir(tmp_path)
    if any("{corrupt}" in a for a in args):
        dirs["corrupt"] = corrupt_dir(tmp_path)
    dirs["cache"] = tmp_path / "cache" / "mnist"
    fill = lambda s: s.format(**dirs)  # noqa: E731

    proc = dlrun(*map(fill, args))
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith("dlrun: error: ") and len(lines[0]) > len("dlrun: error: ")
    for want in expected:
        alternatives = [fill(w) for w in (want if isinstance(want, tuple) else (want,))]
        assert any(w.lower() in lines[0].lower() for w in alternatives), (alternatives, lines[0])
    assert "run dir:" not in proc.stdout, describe(proc)
    assert files_under(tmp_path / "outputs") == []


# -------------------------------------------------------------------------------- sweeps


def test_sweep_whose_jobs_all_fail_leaves_nothing(dlrun, tmp_path):
    proc = dlrun("-m", "optim=sgd,rmsprop", "optim.lr=abc", *TINY)
    assert proc.returncode == 2, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line.split(" (")[0] for line in lines] == ["dlrun: error: job 0", "dlrun: error: job 1"]
    assert "sweep report" not in proc.stdout + proc.stderr
    assert files_under(tmp_path / "outputs") == []


@pytest.mark.smoke
def test_version(dlrun):
    proc = dlrun("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("dlrun 0."), describe(proc)


def sweep_dirs(tmp_path: Path) -> list[Path]:
    """outputs/multirun/<date>/<time-uid> directories."""
    root = tmp_path / "outputs" / "multirun"
    found = sorted(root.glob("*/*")) if root.is_dir() else []
    for d in found:
        assert DATE_RE.match(d.parent.name) and TIME_UID_RE.match(d.name), d
    return found


def read_runs_csv(sweep_dir: Path) -> list[dict]:
    """The sweep report's run table (dlrun.sweeps.report), one row per job."""
    with open(sweep_dir / "runs.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_runs_every_job_and_writes_report(dlrun, tmp_path):
    proc = dlrun("-m", "optim=sgd,rmsprop", *TINY)
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr.strip() == "", describe(proc)
    (sweep,) = sweep_dirs(tmp_path)
    assert sorted(d.name for d in sweep.iterdir() if d.is_dir()) == ["0", "1"]
    for job, optim in (("0", "sgd"), ("1", "rmsprop")):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["epochs"] == 1
        assert resolved_config(sweep / job)["optim"]["name"] == optim

    rows = read_runs_csv(sweep)
    assert len(rows) == 2
    assert {r["run"]: r["config"] for r in rows} == {"0": "optim=sgd", "1": "optim=rmsprop"}
    assert all(r["status"] == "done" and r["epochs"] == "1" for r in rows)
    assert all(0.0 <= float(r["final_val"]) <= 1.0 for r in rows)
    assert "sweep report (2 configuration(s)" in proc.stdout
    md = (sweep / "report.md").read_text()
    for optim in ("optim=sgd", "optim=rmsprop"):
        assert f"| {optim} | 1 | 1 done |" in md


def test_sweep_with_bad_job_keeps_good_job_and_exits_2(dlrun, tmp_path):
    proc = dlrun("-m", "optim.lr=0.01,-1", *TINY)
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlrun: error: job 1 "), describe(proc)
    assert "optim.lr" in lines[0]
    (sweep,) = sweep_dirs(tmp_path)
    assert not (sweep / "1").exists()
    good = sweep / "0"
    for name in (".hydra/config.yaml", "metrics.jsonl", "params.pkl", "best_params.pkl",
                 "summary.json", "dlrun.log"):
        assert (good / name).is_file(), name
    rows = read_runs_csv(sweep)
    assert [(r["run"], r["status"]) for r in rows] == [("0", "done")]


def test_sweep_whose_first_job_is_bad_keeps_multirun_yaml(dlrun, tmp_path):
    proc = dlrun("-m", "optim.lr=-1,0.01", *TINY)
    assert proc.returncode == 2, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlrun: error: job 0 "), describe(proc)
    (sweep,) = sweep_dirs(tmp_path)
    assert not (sweep / "0").exists()
    assert (sweep / "1" / "summary.json").is_file()
    assert [(r["run"], r["status"]) for r in read_runs_csv(sweep)] == [("1", "done")]
    assert (sweep / "multirun.yaml").is_file()  # fails: removed with the sweep directory


# ---------------------------------------------------------------------- concurrent runs


def test_runs_started_together_get_distinct_run_dirs(dlrun_popen, tmp_path):
    args = ("train.epochs=1", "dataset.train_subset=256")
    procs = [dlrun_popen(*args), dlrun_popen(*args)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    dirs = [only_run_dir(r, tmp_path) for r in results]
    assert dirs[0] != dirs[1]
    for d in dirs:
        assert (d / "summary.json").is_file()
        assert len((d / "metrics.jsonl").read_text().splitlines()) == 1


# -------------------------------------------------------------------------------- packaging


# Runs with PYTHONPATH=<the extracted wheel> and cwd=tmp_path: the repository's src/ and conf/
# must not be used, only what the wheel installs.
FROM_WHEEL = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import dlrun, dlrun.conf, dlrun.data
    from hydra import compose, initialize_config_module
    from dlrun.data.sources import load_raw

    with initialize_config_module("dlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model=cnn"])
    x_train, y_train, x_test, y_test = load_raw("mnist_sample")
    print(json.dumps({
        "files": [dlrun.__file__, dlrun.conf.__file__, dlrun.data.__file__],
        "model": cfg.model.name, "features": list(cfg.model.features),
        "optim": cfg.optim.name, "dataset": cfg.dataset.name,
        "shapes": [list(a.shape) for a in (x_train, y_train, x_test, y_test)],
    }))
""")


def build_wheel(src: Path, dest: Path) -> tuple[Path, str]:
    """Build a wheel of `src` into `dest` with the venv's pip, without reinstalling anything.

    --no-build-isolation is fastest but needs a recent setuptools (with bdist_wheel) in the
    venv; if that fails, pip builds in an isolated environment with the declared backend."""
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest)]
    tried = []
    for extra in (["--no-build-isolation"], []):
        proc = subprocess.run([*base, *extra, str(src)], capture_output=True, text=True,
                              timeout=300)
        wheels = sorted(dest.glob("dlrun-*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[-1], " ".join(extra) or "isolated build"
        tried.append(describe(proc))
    pytest.fail("could not build a wheel:\n" + "\n\n".join(tried))


@pytest.mark.slow  # builds a wheel (pip, seconds to minutes)
def test_wheel_ships_configs_and_sample(tmp_path):
    # Build from a copy: building in place would write build/ and *.egg-info into the repo.
    src = tmp_path / "src_copy"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "outputs", "build", "dist", "*.egg-info", "__pycache__",
        ".pytest_cache", "tests", "benchmarks"))
    t0 = time.perf_counter()
    wheel, how = build_wheel(src, tmp_path / "wheelhouse")
    print(f"wheel built in {time.perf_counter() - t0:.1f}s ({how})")

    names = set(zipfile.ZipFile(wheel).namelist())
    conf_files = {f"dlrun/conf/{p.relative_to(REPO / 'conf').as_posix()}"
                  for p in (REPO / "conf").rglob("*.yaml")}
    assert len(conf_files) >= 20, conf_files  # every group's options, not an empty glob
    expected = conf_files | {
        "dlrun/conf/config.yaml", "dlrun/conf/hydra/job_logging/dlrun.yaml",
        "dlrun/conf/model/cnn.yaml", "dlrun/conf/experiment/radford_convnet.yaml",
        "dlrun/data/mnist_sample.npz", "dlrun/data/MNIST_SAMPLE_LICENSE.txt"}
    assert not expected - names, sorted(expected - names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", FROM_WHEEL], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, describe(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in result["files"]:
        assert Path(path).resolve().is_relative_to(site.resolve()), path
    assert result["model"] == "cnn" and result["features"] == [32, 64, 128]
    assert result["optim"] == "adam" and result["dataset"] == "mnist_sample"
    assert result["shapes"] == [[4000, 28, 28], [4000], [1000, 28, 28], [1000]]

    # the command line too, from the wheel: compose and print without training
    proc = subprocess.run([sys.executable, "-m", "dlrun.cli", "--cfg", "job", "model=logreg"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, describe(proc)
    assert yaml.safe_load(proc.stdout)["model"]["name"] == "logreg"
    assert not (work / "outputs").exists()


def test_second_run_reuses_compiled_programs(dlrun, tmp_path):
    """train.compile_cache: the first run fills <cache>/xla, a rerun of the same config adds
    nothing (every program is a cache hit); compile_cache=false writes no cache."""
    xla = tmp_path / "cache" / "xla"
    off = dlrun("train.compile_cache=false", *TINY)
    assert off.returncode == 0 and not xla.exists(), describe(off)
    first = dlrun(*TINY)
    assert first.returncode == 0, describe(first)
    entries = sorted(p.name for p in xla.iterdir())
    assert entries, "the first run cached nothing"
    second = dlrun(*TINY)
    assert second.returncode == 0, describe(second)
    assert sorted(p.name for p in xla.iterdir()) == entries


def test_diverged_run_is_one_line_exit_2_and_keeps_its_directory(dlrun, tmp_path):
    proc = dlrun("optim=sgd", "optim.lr=1e30", "model.hidden=[16]", *TINY)
    assert proc.returncode == 2, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert lines[0].startswith("dlrun: error: training diverged at epoch 1, step 2")
    files = {p.name for p in files_under(tmp_path / "outputs")}
    assert "metrics.jsonl" in files and "params.pkl" not in files, files
