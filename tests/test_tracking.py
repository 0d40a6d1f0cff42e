"""Experiment tracking (logger=[tensorboard,mlflow]) and the live progress display, used as a
user does: the dlrun command as a subprocess (under a pseudo-terminal for the display), and
what it wrote read back with the loggers' own readers."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from conftest import DLRUN, describe, dlrun_env, run_dirs

pytestmark = pytest.mark.slow  # CLI subprocesses: `pytest -m slow`, run by .ci/run

TINY = ("train.epochs=2", "dataset.train_subset=512", "plots=false", "model.hidden=[32]")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the TFRecord event files in log_dir (read with
    tensorboardX's protobuf definitions, no TensorFlow)."""
    from tensorboardX.proto import event_pb2
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # record: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_and_mlflow_read_back(dlrun, tmp_path):
    proc = dlrun("logger=[tensorboard,mlflow]", *TINY)
    assert proc.returncode == 0, describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    metrics = records(run_dir)
    assert [r["epoch"] for r in metrics] == [1, 2]

    scalars = tensorboard_scalars(run_dir / "tb")
    for key in ("val_error", "test_error", "train_loss", "lr"):
        assert [s for s, _ in scalars[key]] == [1, 2], key
        assert [v for _, v in scalars[key]] == pytest.approx([r[key] for r in metrics], rel=1e-6)

    import mlflow
    db = tmp_path / "outputs" / "mlflow.db"
    assert db.is_file()
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("dlrun")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert float(run.data.params["optim.lr"]) == 0.001 and run.data.params["model.name"] == "mlp"
    for key in ("val_error", "test_error", "train_loss"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([r[key] for r in metrics], rel=1e-6)
    assert not (tmp_path / "mlruns").exists()  # nothing written outside outputs/


def test_resumed_run_logs_only_its_new_epochs(dlrun, tmp_path):
    base = ("logger=[mlflow]", "dataset.train_subset=512", "plots=false", "model.hidden=[32]")
    first = dlrun(*base, "train.epochs=1")
    assert first.returncode == 0, describe(first)
    second = dlrun(*base, "train.epochs=2", "resume=true")
    assert second.returncode == 0, describe(second)
    (run_dir,) = run_dirs(first.stdout)
    assert run_dirs(second.stdout) == [run_dir]
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dlrun").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_error")
    assert sorted(m.step for m in history) == [1, 2]  # epoch 1 once, epoch 2 added
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [r["val_error"] for r in records(run_dir)], rel=1e-6)
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("logger,package", [("mlflow", "mlflow"), ("tensorboard", "tensorboardX")])
def test_missing_package_stops_before_training(logger, package, tmp_path):
    shim = tmp_path / "shim"
    (shim / package).mkdir(parents=True)
    (shim / package / "__init__.py").write_text(f"raise ImportError('no module named {package}')\n")
    env = dlrun_env(tmp_path)
    env["PYTHONPATH"] = str(shim)
    proc = subprocess.run([str(DLRUN), f"logger=[{logger}]", *TINY], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"dlrun: error: logger={logger} needs the track extra: "
                     f"pip install -e '.[track]'"], describe(proc)
    assert not list(tmp_path.glob("outputs/**/metrics.jsonl"))


# ---- the live progress display ---------------------------------------------------------------
def run_in_pty(args: list[str], cwd: Path, extra_env: dict[str, str]) -> tuple[int, str]:
    """Run dlrun with stdin, stdout and stderr on a pseudo-terminal (120 columns); return its
    exit code and everything it wrote there."""
    env = dlrun_env(cwd)
    env.pop("CI", None)
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40", **extra_env)
    env.pop("NO_COLOR", None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([str(DLRUN), *args], cwd=cwd, env=env, stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError as exc:  # EIO: the child closed the terminal
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


def epoch_lines(text: str) -> list[str]:
    return [line for line in text.replace("\r\n", "\n").splitlines() if line.startswith("epoch ")]


STEP_RUN = (*TINY, "train.loop=step", "checkpoint.every_minutes=0")


def test_progress_display_on_a_terminal_keeps_the_log_file_plain(tmp_path):
    code, out = run_in_pty(list(STEP_RUN), tmp_path, {})
    assert code == 0, out[-3000:]
    assert "\x1b[" in out and "steps  loss" in out and "ex/s" in out and "left" in out, out[-3000:]
    (run_dir,) = run_dirs(out.replace("\r\n", "\n"))
    log_text = (run_dir / "dlrun.log").read_text()
    assert not any(ord(c) < 32 and c != "\n" for c in log_text), repr(log_text[:500])
    logged = [line.split("] ", 1)[1] for line in log_text.splitlines() if "] epoch " in line]
    assert len(logged) == 2 and all(" ex/s" in line for line in logged)
    assert all(line in out for line in logged)  # the same lines on the terminal


def plain_shape(lines: list[str]) -> list[str]:
    return [line.split("  ")[0] for line in lines]


@pytest.mark.parametrize("how", ["pipe", "CI=1", "progress=false"])
def test_no_progress_display_off_terminal_under_ci_or_when_off(how, dlrun, tmp_path):
    if how == "pipe":
        proc = dlrun(*STEP_RUN)
        code, out = proc.returncode, proc.stdout + proc.stderr
    elif how == "CI=1":
        code, out = run_in_pty(list(STEP_RUN), tmp_path, {"CI": "1"})
    else:
        code, out = run_in_pty([*STEP_RUN, "progress=false"], tmp_path, {})
    assert code == 0, out[-3000:]
    assert "\x1b" not in out and "steps  loss" not in out, repr(out[-2000:])
    lines = epoch_lines(out)
    assert plain_shape(lines) == ["epoch 1/2", "epoch 2/2"], out
    (run_dir,) = run_dirs(out.replace("\r\n", "\n"))
    logged = [line.split("] ", 1)[1] for line in (run_dir / "dlrun.log").read_text().splitlines()
              if "] epoch " in line]
    assert logged == lines
