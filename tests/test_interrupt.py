"""Real processes, real signals: SIGINT, SIGTERM, a second Ctrl-C, and SIGKILL at several points
(before the first checkpoint, during a checkpoint write, between checkpoints). Every resumed
run must end bitwise where the uninterrupted run ends; every killed run directory must stay
readable. Also the command-line side of resume and the bad inputs that come with it.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DLRUN, describe, dlrun_env, files_under, run_dirs
from dlrun.runs.atomic import load_arrays
from test_checkpoint import assert_same_params, metrics

pytestmark = pytest.mark.slow  # CLI subprocesses: `pytest -m slow`, run by .ci/run

# A convnet run long enough to be interrupted (8 steps per epoch, loop=step: mid-epoch stops).
CNN = ("model=cnn", "dataset.train_subset=1024", "train.epochs=4")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    cwd = tmp_path_factory.mktemp("baseline")
    proc = subprocess.run([str(DLRUN), *CNN], cwd=cwd, env=dlrun_env(cwd), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    return run_dir


def start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(DLRUN), *args], cwd=cwd, env=dlrun_env(cwd), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(proc: subprocess.Popen, prefix: str) -> list[str]:
    """Read stdout until a line starting with `prefix`; return the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no line starting {prefix!r}; got {lines}")


def finish(proc: subprocess.Popen, read: list[str] = (), timeout: float = 300
           ) -> subprocess.CompletedProcess:
    """Wait for the process; stdout includes the lines already `read`."""
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(read) + out, err)


def run(cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(DLRUN), *args], cwd=cwd, env=dlrun_env(cwd), capture_output=True,
                          text=True, timeout=300, **kw)


def assert_same_result(run_dir: Path, baseline: Path) -> None:
    assert metrics(run_dir) == metrics(baseline)
    for name in ("params.pkl", "best_params.pkl"):
        assert_same_params(run_dir / name, baseline / name)


def assert_readable(run_dir: Path) -> None:
    """Every file a killed run left is complete: no partial metrics line, parameter file or
    JSON; no temporary file that could be taken for a result."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []:
        json.loads(line)
    json.loads((run_dir / "run.json").read_text())
    for pkl in run_dir.glob("*.pkl"):
        load_arrays(pkl)
    leftovers = [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers or all(p.name.startswith(".") for p in leftovers), leftovers


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlrun: error: "), describe(proc)
    return lines[0]


# ------------------------------------------------------------------------------ signals
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_with_a_checkpoint_and_resume_ends_where_an_uninterrupted_run_does(
        sig, tmp_path, baseline):
    proc = start(tmp_path, *CNN)
    read = wait_for_line(proc, "epoch 1/4")
    proc.send_signal(sig)
    done = finish(proc, read)
    assert done.returncode == 128 + sig, describe(done)
    assert "Traceback" not in done.stderr, describe(done)
    (run_dir,) = run_dirs(done.stdout)
    hint = f"Resume with: dlrun resume={run_dir.resolve()}"
    assert hint in done.stderr and f"stopped by {sig.name}" in done.stderr, describe(done)
    assert (run_dir / "checkpoints").is_dir() and not (run_dir / "summary.json").exists()
    assert_readable(run_dir)
    resumed = run(tmp_path, f"resume={run_dir.resolve()}")
    assert resumed.returncode == 0, describe(resumed)
    assert "resuming" in resumed.stdout and run_dirs(resumed.stdout)[0] == run_dir.resolve()
    assert_same_result(run_dir, baseline)
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1  # no second run directory
    assert "resuming" in (run_dir / "dlrun.log").read_text()  # the log goes on in the run's file


def test_second_ctrl_c_quits_at_once_and_leaves_a_readable_run(tmp_path):
    """Both signals land while XLA compiles (seconds in C++, where Python runs no handlers):
    the first asks for a stop, the second ends the process at once."""
    proc = start(tmp_path, *CNN)
    read = wait_for_line(proc, "run dir:")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals sent back to back may be delivered as one
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    done = finish(proc, read)
    assert done.returncode == 130 and time.monotonic() - t0 < 3, describe(done)
    assert "SIGINT received: stopping after the current step" in done.stderr, describe(done)
    assert "second SIGINT: quitting at once" in done.stderr, describe(done)
    (run_dir,) = run_dirs(done.stdout)
    assert_readable(run_dir)


# ------------------------------------------------------------------------------ SIGKILL
def kill_during_checkpoint_write(proc: subprocess.Popen, run_dir: Path) -> None:
    """SIGKILL the moment a checkpoint is being written (Orbax's temporary directory exists),
    once an earlier one is complete."""
    ckpt = run_dir / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = [p.name for p in os.scandir(ckpt)] if ckpt.is_dir() else []
        if any(n.isdigit() for n in names) and any("tmp" in n for n in names):
            proc.kill()
            return
        time.sleep(0.0005)
    raise AssertionError("never saw a checkpoint being written")


def test_sigkill_at_several_points_loses_at_most_the_work_since_the_last_checkpoint(
        tmp_path, baseline):
    # 1. killed before its first checkpoint: readable, and resuming it says why it cannot
    proc = start(tmp_path, *CNN)
    run_dir = Path(wait_for_line(proc, "run dir:")[-1].split("run dir:")[1].strip())
    proc.kill()
    finish(proc)
    assert not (run_dir / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (run_dir / "checkpoints").iterdir())
    line = one_error_line(run(tmp_path, f"resume={run_dir}"))
    assert "no complete checkpoint" in line

    # 2. killed while writing a checkpoint (one after every step), then resumed
    every_step = "checkpoint.every_minutes=1e-9"
    proc = start(tmp_path, *CNN, every_step)
    run_dir = Path(wait_for_line(proc, "run dir:")[-1].split("run dir:")[1].strip())
    kill_during_checkpoint_write(proc, run_dir)
    finish(proc)
    assert_readable(run_dir)
    assert any("tmp" in p.name for p in (run_dir / "checkpoints").iterdir()), "not mid-write"

    # 3. the resumed run killed again between checkpoints (after its next epoch line)
    proc = start(tmp_path, f"resume={run_dir}")
    wait_for_line(proc, "epoch ")
    proc.kill()
    finish(proc)
    assert_readable(run_dir)

    # 4. resume=true finds it by its config and finishes it
    last = run(tmp_path, *CNN, "resume=true")
    assert last.returncode == 0, describe(last)
    assert run_dirs(last.stdout)[0] == run_dir.resolve()
    assert not any("tmp" in p.name for p in (run_dir / "checkpoints").iterdir())
    assert_same_result(run_dir, baseline)


# ------------------------------------------------------------------ resume from the command line
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A short finished mlp run to resume, extend and damage (copied per test)."""
    cwd = tmp_path_factory.mktemp("finished")
    proc = subprocess.run([str(DLRUN), "model.hidden=[32]", "dataset.train_subset=512",
                           "train.epochs=2"], cwd=cwd, env=dlrun_env(cwd), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, describe(proc)
    return run_dirs(proc.stdout)[0]


def copy_run(src: Path, tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / "outputs" / "old" / name
    shutil.copytree(src, dst)
    return dst


def snapshot(run_dir: Path) -> dict:
    return {p: p.read_bytes() for p in files_under(run_dir)}


def test_resume_by_path_with_only_the_run_length_extends_the_run(tmp_path, finished):
    run_dir = copy_run(finished, tmp_path)
    proc = run(tmp_path, f"resume={run_dir}", "train.epochs=3")
    assert proc.returncode == 0, describe(proc)
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["resumed_at_epochs"] == [2]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["old"]


@pytest.mark.parametrize("case", ["config-differs", "another-model", "truncated", "not-a-run",
                                  "damaged-run-json", "locked", "fewer-epochs"])
def test_bad_resume_is_one_line_exit_2_and_changes_nothing(case, tmp_path, finished):
    run_dir = copy_run(finished, tmp_path)
    args = [f"resume={run_dir}"]
    expect = []
    if case == "config-differs":
        args += ["model.hidden=[32]", "dataset.train_subset=512", "optim.lr=0.5"]
        expect = ["optim.lr (0.001 there, 0.5 here)", "only train.epochs may change"]
    elif case == "another-model":  # a logreg run's checkpoints in this mlp run's directory
        other = run(tmp_path / "outputs", "model=logreg", "dataset.train_subset=512", "train.epochs=1")
        shutil.rmtree(run_dir / "checkpoints")
        shutil.copytree(run_dirs(other.stdout)[0] / "checkpoints", run_dir / "checkpoints")
        args += ["train.epochs=3"]
        expect = ["written by another config", "model.name (logreg there, mlp here)"]
    elif case == "truncated":
        step = max((run_dir / "checkpoints").iterdir(), key=lambda p: int(p.name))
        data = max((p for p in (step / "state").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
        data.write_bytes(data.read_bytes()[:100])
        args += ["train.epochs=3"]
        expect = [f"checkpoint {step.resolve()} cannot be read", "delete that directory"]
    elif case == "not-a-run":
        args = [f"resume={tmp_path}"]
        expect = ["not a dlrun run directory"]
    elif case == "damaged-run-json":
        (run_dir / "run.json").write_text('{"config": ')
        expect = [f"cannot read {run_dir / 'run.json'}", "damaged"]
    elif case == "locked":
        expect = ["being trained by another dlrun process"]
        args += ["train.epochs=3"]
    elif case == "fewer-epochs":
        args += ["train.epochs=1"]
        expect = ["already trained 2 epochs", "train.epochs=1"]
    before = snapshot(tmp_path / "outputs")
    if case == "locked":  # another process holds the run
        with open(run_dir / "run.json") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            line = one_error_line(run(tmp_path, *args))
    else:
        line = one_error_line(run(tmp_path, *args))
    for want in expect:
        assert want in line, line
    after = snapshot(tmp_path / "outputs")
    if case != "another-model":
        assert after.keys() == before.keys() and after == before
    else:  # only the other run's directory, which the test made, is new
        assert {p for p in after if run_dir in p.parents} == {p for p in before if run_dir in p.parents}


def test_resume_true_without_an_earlier_run_starts_a_new_one(tmp_path):
    proc = run(tmp_path, "model.hidden=[16]", "dataset.train_subset=512", "train.epochs=1",
               "resume=true")
    assert proc.returncode == 0 and "starting a new one" in proc.stdout, describe(proc)
    assert len(run_dirs(proc.stdout)) == 1


# ------------------------------------------------------------------------ output problems
def test_output_directory_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    line = one_error_line(run(tmp_path, "hydra.run.dir=afile/run", "train.epochs=1"))
    assert "afile" in line and "hydra.run.dir" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes every write past 256 KiB fail (EFBIG) as a full disk would (ENOSPC):
    the first checkpoint cannot be written."""
    limited = ["bash", "-c", 'ulimit -f 256 && exec "$@"', "bash", str(DLRUN)]  # KiB
    proc = subprocess.run([*limited, "dataset.train_subset=512", "train.epochs=2",
                           "train.compile_cache=false"], cwd=tmp_path, env=dlrun_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    line = one_error_line(proc)
    assert "cannot write" in line and "hydra.run.dir" in line
    assert files_under(tmp_path / "outputs") == []


# ------------------------------------------------------------------------ dataset directories
def test_dataset_directory_with_extra_files_is_fine_and_missing_files_are_named(tmp_path):
    fashion = Path("/usr/share/datasets/fashion-mnist")
    if not (fashion / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (.ci/run installs it)")
    data = tmp_path / "data"
    data.mkdir()
    for f in fashion.glob("*-ubyte.gz"):
        os.symlink(f, data / f.name)
    (data / "README.txt").write_text("notes")
    (data / "train-images-idx3-ubyte").write_bytes(b"an unpacked copy, ignored")
    proc = run(tmp_path, "dataset=fashion_mnist", f"dataset.data_dir={data}",
               "dataset.train_subset=512", "train.epochs=1")
    assert proc.returncode == 0, describe(proc)

    partial = tmp_path / "partial"  # other files, but not the four MNIST files
    partial.mkdir()
    (partial / "train-images.gz").write_bytes(b"misnamed")
    (partial / "notes.txt").write_text("extra")
    line = one_error_line(run(tmp_path, "dataset=mnist", f"dataset.data_dir={partial}",
                              "dataset.download=false"))
    assert "train-labels-idx1-ubyte.gz" in line and str(partial) in line
