"""The users' own data and models from the command line: each new source trains, writes the usual
run directory, resumes bit for bit, sweeps, and works with dlrun-eval, dlrun-predict and
dlrun-export; a model from the user's file and a plugin package's components train too. The npz
test is `make test`'s smoke test of the whole chain; the others are in the slow set."""
import json
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _userdata import write_cifar, write_image_folder, write_npz, write_plugin
from conftest import dlrun_env, run_dirs

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SMALL = ("model=mlp", "model.hidden=[64]", "plots=false")


def command(work: Path, name: str, *args, env=None, timeout: float = 300):
    return subprocess.run([str(BIN / name), *map(str, args)], cwd=work, env=env or dlrun_env(work),
                          capture_output=True, text=True, timeout=timeout)


def ok(proc) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def refused(proc, *words) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if "second" not in k}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.smoke
def test_npz_of_100_classes_trains_resumes_evaluates_predicts_and_exports(tmp_path):
    path = write_npz(tmp_path / "hundred.npz", n_train=2000, n_test=500)
    args = ("dataset=npz", f"dataset.path={path}", "dataset.val_size=200", *SMALL)
    whole = run_dirs(ok(command(tmp_path, "dlrun", *args, "train.epochs=2")).stdout)[0]
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["data"]["image_shape"] == [32, 32, 3] and summary["data"]["num_classes"] == 100
    assert summary["data"]["files"][0]["sha256"] and summary["final"]["test_error"] < 0.99
    half = run_dirs(ok(command(tmp_path, "dlrun", *args, "train.epochs=1")).stdout)[0]
    ok(command(tmp_path, "dlrun", f"resume={half}", "train.epochs=2"))
    assert records(half) == records(whole)
    assert (half / "params.pkl").read_bytes() == (whole / "params.pkl").read_bytes()

    ok(command(tmp_path, "dlrun-eval", whole, "--out", tmp_path / "e"))
    out = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert out["metrics"]["error"] == summary["final"]["test_error"] and out["images"] == 500
    best = ok(command(tmp_path, "dlrun-eval", whole, "--params", "best", "--out", tmp_path / "b"))
    assert "best_params.pkl" in best.stdout

    data = np.load(path)
    np.save(tmp_path / "some.npy", data["x_test"][:20])
    Image.fromarray(data["x_test"][0]).resize((96, 96)).save(tmp_path / "big.png")
    ok(command(tmp_path, "dlrun-predict", whole, tmp_path / "some.npy", tmp_path / "big.png",
               "--format", "json", "--output", tmp_path / "p.json"))
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 21 and rows[0]["class"].startswith("class ") and 0 <= rows[0]["label"] < 100
    refused(command(tmp_path, "dlrun-predict", whole, tmp_path / "some.npy", "--output",
                    tmp_path / "p.json"), "already exists")

    ok(command(tmp_path, "dlrun-export", whole, "--out", tmp_path / "x"))
    card = json.loads((tmp_path / "x" / "model.json").read_text())
    assert card["input"]["shape"] == ["batch", 32, 32, 3] and len(card["class_names"]) == 100
    np.save(tmp_path / "x20.npy", data["x_test"][:20].astype(np.float32) / 255)
    script = ("import sys, jax, numpy as np\n"
              "e = jax.export.deserialize(open(sys.argv[1], 'rb').read())\n"
              "p = np.asarray(e.call(np.load(sys.argv[2])))\n"
              "assert 'dlrun' not in sys.modules\n"
              "print(' '.join(map(str, p.argmax(-1))))\n")
    fresh = subprocess.run([sys.executable, "-I", "-c", script, tmp_path / "x" / "model.jax_export",
                            tmp_path / "x20.npy"], cwd="/", capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    assert [int(v) for v in fresh.stdout.split()] == [r["label"] for r in rows[:20]]


@pytest.mark.slow  # dlrun's commands as subprocesses: the slow set (.ci/run)
def test_image_folder_trains_sweeps_and_predicts_a_folder(tmp_path):
    root = write_image_folder(tmp_path / "photos", n_train=300, n_test=100)
    args = ("dataset=image_folder", f"dataset.root={root}", "dataset.image_size=[28,28]", *SMALL,
            "train.epochs=3", "train.batch_size=32")
    proc = ok(command(tmp_path, "dlrun", "-m", *args, "optim.lr=0.003,0.01"))
    jobs = sorted(run_dirs(proc.stdout), key=lambda d: json.loads(
        (d / "summary.json").read_text())["final"]["test_error"])  # the better job first
    assert len(jobs) == 2 and (jobs[0].parent / "report.md").is_file()
    summary = json.loads((jobs[0] / "summary.json").read_text())
    assert summary["data"]["image_shape"] == [28, 28, 3] and summary["data"]["class_names"][-1] == "zero"
    ok(command(tmp_path, "dlrun-eval", jobs[0], "--out", tmp_path / "e"))
    out = ok(command(tmp_path, "dlrun-predict", jobs[0], root / "test" / "seven", "--format", "csv"))
    lines = out.stdout.splitlines()
    assert lines[0] == "input,label,class,probability" and len(lines) == 1 + len(list((root / "test" / "seven").iterdir()))
    assert sum(line.split(",")[2] == "seven" for line in lines[1:]) >= len(lines[1:]) // 2


@pytest.mark.slow  # dlrun's commands as subprocesses: the slow set (.ci/run)
def test_cifar10_batches_train_and_evaluate(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    args = ("dataset=cifar10", f"dataset.data_dir={folder}", "dataset.val_size=200", "model=cnn",
            "model.features=[8,16,16]", "train.epochs=1")
    run_dir = run_dirs(ok(command(tmp_path, "dlrun", *args)).stdout)[0]
    assert (run_dir / "test_images.png").is_file() and (run_dir / "filters.png").is_file()
    header = (run_dir / "confusion_matrix.csv").read_text().splitlines()[0]
    assert header.startswith("true\\predicted,airplane,automobile,bird")
    ok(command(tmp_path, "dlrun-eval", run_dir, "--split", "val", "--out", tmp_path / "v"))
    record = json.loads((tmp_path / "v" / "eval.json").read_text())
    assert record["images"] == 200
    stopped = tmp_path / "stopped"  # a run killed before its end: summary.json never written
    import shutil
    shutil.copytree(run_dir, stopped)
    (stopped / "summary.json").unlink()
    refused(command(tmp_path, "dlrun-eval", stopped), "incomplete", "--params best or checkpoint")
    proc = ok(command(tmp_path, "dlrun-eval", stopped, "--params", "checkpoint", "--out", tmp_path / "c"))
    assert "newest checkpoint (epoch 1)" in proc.stdout
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    assert json.loads((tmp_path / "c" / "eval.json").read_text())["metrics"]["error"] == final["test_error"]
    (folder / "batches.meta").write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    refused(command(tmp_path, "dlrun", *args, "hydra.run.dir=refused"), "batches.meta", "nothing in it was run")
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow  # dlrun's commands as subprocesses: the slow set (.ci/run)
def test_a_model_from_the_users_file_and_an_optax_optimizer(tmp_path):
    env = {**dlrun_env(tmp_path), "PYTHONPATH": str(EXAMPLES)}
    ok(subprocess.run([sys.executable, EXAMPLES / "make_arrays.py", tmp_path / "mine.npz"],
                      cwd=tmp_path, capture_output=True, text=True))
    args = ("dataset=npz", f"dataset.path={tmp_path / 'mine.npz'}", "model=custom",
            "model.target=wide_net:WideNet", "model.width=32", "train.epochs=1", "plots=false")
    proc = ok(command(tmp_path, "dlrun", *args, "optim=custom", "optim.target=optax:adamw",
                      "optim.weight_decay=0.01", env=env))
    run_dir = run_dirs(proc.stdout)[0]
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["model"]["width"] == 32 and config["optim"]["weight_decay"] == 0.01
    assert json.loads((run_dir / "summary.json").read_text())["final"]["test_error"] < 0.6
    ok(command(tmp_path, "dlrun-eval", run_dir, env=env))
    (tmp_path / "plain.py").write_text("import flax.linen as nn\nclass Net(nn.Module):\n"
                                       "    @nn.compact\n    def __call__(self, x):\n"
                                       "        return nn.Dense(10)(x.reshape((x.shape[0], -1)))\n")
    before = sorted((tmp_path / "outputs").rglob("*"))
    refused(command(tmp_path, "dlrun", *args, "model.widht=3", env=env), "model.widht", "width")
    refused(command(tmp_path, "dlrun", *args[:3], "model.target=nowhere.nets:Net", env=env),
            "cannot import nowhere.nets", "ModuleNotFoundError")
    refused(command(tmp_path, "dlrun", *args[:3], "model.target=wide_net:Missing", env=env),
            "wide_net has no attribute Missing")
    env_here = {**env, "PYTHONPATH": f"{EXAMPLES}:{tmp_path}"}
    refused(command(tmp_path, "dlrun", *args[:3], "model.target=plain:Net", env=env_here),
            "takes no `train` argument")
    assert sorted((tmp_path / "outputs").rglob("*")) == before  # refused: nothing written


@pytest.mark.slow  # dlrun's commands as subprocesses: the slow set (.ci/run)
def test_a_plugin_package_adds_a_model_and_a_dataset_through_entry_points(tmp_path):
    """pip install of a package into a fresh virtual environment (which sees this one's
    packages through a .pth file): `dlrun model=tiny_mlp dataset=tiny_digits` then trains."""
    plugin = write_plugin(tmp_path / "plugin")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)  # this pip installs into it (--python)
    site = next(env_dir.glob("lib/python*/site-packages"))
    here = [p for p in sys.path if p.endswith("site-packages")]
    (site / "dlrun_parent.pth").write_text(  # addsitedir: their .pth files (dlrun's editable
        "".join(f"import site; site.addsitedir({p!r})\n" for p in here))  # install) count too
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python",
                          "install", "--no-deps",
                          "--no-build-isolation", "--no-index", "-q", str(plugin)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    runner = ("import sys; sys.argv[0] = 'dlrun'; from dlrun.cli.main import main; main()")
    proc = subprocess.run([env_dir / "bin" / "python", "-c", runner, "model=tiny_mlp",
                           "dataset=tiny_digits", "train.epochs=1", "plots=false"], cwd=tmp_path,
                          env=dlrun_env(tmp_path), capture_output=True, text=True, timeout=300)
    ok(proc)
    run_dir = run_dirs(proc.stdout)[0]
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["model"] == {"name": "tiny_mlp", "hidden": 48}
    assert config["dataset"]["n_train"] == 800 and "800 train" not in proc.stdout  # 700 + 100 val
    assert "700 train / 100 val / 1000 test" in proc.stdout
    outside = command(tmp_path, "dlrun", "model=tiny_mlp")  # this environment has no plugin
    refused(outside, "tiny_mlp")
