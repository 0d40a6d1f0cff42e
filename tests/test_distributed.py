"""Data-parallel and multi-process training (dlrun.runtime.distributed), through the real `dlrun` command.

The number of devices is fixed when JAX starts, so every run is a subprocess: several CPU
devices are forced with XLA_FLAGS=--xla_force_host_platform_device_count=N, and the
multi-process runs are two `dlrun` processes on localhost joined by jax.distributed (CPU
collectives over gloo), each with one CPU device. Runs are tiny: 512 training images, 1 epoch.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DLRUN, describe, dlrun_env, files_under, run_dirs
from dlrun.runs.atomic import load_arrays

pytestmark = pytest.mark.slow  # CLI subprocesses: `pytest -m slow`, run by .ci/run

SMALL = ("train.epochs=1", "dataset.train_subset=512", "plots=false")
DENSE = ("model=mlp", "model.hidden=[64]", "train.loop=scan")
CONV = ("model=cnn", "model.features=[4,8]", "model.padding=[2,0]", "model.hidden=[32]",
        "train.loop=step")
BATCHNORM = ("model=vgg", "model.widths=[4,8]", "model.depths=[1,1]", "model.stem=0", "train.loop=step")
# Sums of float32 in another order: the runs agree to rounding, not bit for bit.
TOLERANCE = dict(rtol=1e-4, atol=2e-5)


def run(cwd: Path, *args: str, devices: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = dlrun_env(cwd)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run([str(DLRUN), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def start(cwd: Path, *args: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    env = dlrun_env(cwd)
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([str(DLRUN), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def only_run(proc: subprocess.CompletedProcess) -> Path:
    assert proc.returncode == 0, describe(proc)
    dirs = run_dirs(proc.stdout)
    assert len(dirs) == 1, describe(proc)
    return dirs[0]


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict of arrays as {'a/b/c': array}."""
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {prefix + key: value})
    return out


def assert_same_params(a: Path, b: Path) -> None:
    """params.pkl of both runs agree to rounding (a BatchNorm net's running statistics too:
    the batch mean over the mesh is the whole batch's)."""
    pa, pb = flat(load_arrays(a / "params.pkl")), flat(load_arrays(b / "params.pkl"))
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_allclose(pa[name], pb[name], **TOLERANCE, err_msg=name)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("model", [DENSE, CONV, BATCHNORM], ids=["dense-scan", "cnn-step", "batchnorm"])
def test_two_devices_train_as_one(tmp_path: Path, model: tuple) -> None:
    one = only_run(run(tmp_path / "one", *model, *SMALL, devices=1))
    two_proc = run(tmp_path / "two", *model, *SMALL, devices=2)
    two = only_run(two_proc)
    assert "data parallel over 2 devices" in two_proc.stdout
    assert summary(one)["device"]["data_parallel_devices"] == 1
    assert summary(two)["device"] == {**summary(two)["device"], "count": 2, "processes": 1,
                                      "data_parallel_devices": 2}
    assert_same_params(one, two)
    r1, r2 = summary(one)["final"], summary(two)["final"]
    assert r1["step"] == r2["step"] == 4
    assert abs(r1["train_loss"] - r2["train_loss"]) < 1e-4


def test_batch_not_divisible_by_devices(tmp_path: Path) -> None:
    proc = run(tmp_path, *SMALL, "train.batch_size=127", devices=2)
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith("dlrun: error: train.batch_size (127) is not divisible by the 2 "
                               "devices"), lines[0]
    assert "train.batch_size=128 or 126" in lines[0] and "dist.data_parallel=false" in lines[0]
    assert files_under(tmp_path / "outputs") == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(cwd: Path, *args: str, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """`dlrun ARGS` as processes 0 and 1 of one run on localhost, each with one CPU device."""
    dist = ("dist.enabled=true", "dist.num_processes=2", f"dist.coordinator_address=127.0.0.1:{free_port()}")
    procs = [start(cwd, *args, *dist, f"dist.process_id={i}") for i in range(2)]
    done = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"a process of the two hung: {p.args}") from None
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_two_processes_train_as_two_devices(tmp_path: Path) -> None:
    reference = only_run(run(tmp_path / "ref", *DENSE, *SMALL, devices=2))
    first, second = two_processes(tmp_path / "dist", *DENSE, *SMALL)
    run_dir = only_run(first)
    assert second.returncode == 0, describe(second)
    assert run_dirs(second.stdout) == [], describe(second)  # process 1 writes no run directory
    assert "data parallel over 2 devices (2 processes)" in first.stdout
    runs = {p.parent for p in (tmp_path / "dist" / "outputs").rglob("run.json")}
    assert runs == {run_dir}
    assert [p.parent.parent for p in (tmp_path / "dist" / "outputs").glob("*/*/.hydra")] == [
        run_dir.parent]
    assert summary(run_dir)["device"]["processes"] == 2
    assert summary(run_dir)["device"]["data_parallel_devices"] == 2
    assert_same_params(reference, run_dir)

    # resumed by two processes: process 0 reads the checkpoint and hands it to process 1
    first, second = two_processes(tmp_path / "dist", f"resume={run_dir}", "train.epochs=2")
    assert first.returncode == 0 and second.returncode == 0, describe(first) + describe(second)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert summary(run_dir)["resumed_at_epochs"] == [1]
    assert {p.parent for p in (tmp_path / "dist" / "outputs").rglob("run.json")} == {run_dir}


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path: Path) -> None:
    """jax.distributed takes SIGTERM over; dlrun takes it back, and the processes agree on the
    stop, so both leave the step loop at the same step (a process stopping alone would leave
    the other waiting in the next step's all-reduce)."""
    dist = ("dist.enabled=true", "dist.num_processes=2", f"dist.coordinator_address=127.0.0.1:{free_port()}")
    args = (*CONV, "train.epochs=20", "plots=false")
    procs = [start(tmp_path, *args, *dist, f"dist.process_id={i}") for i in range(2)]
    try:
        deadline = time.monotonic() + 90
        while not list((tmp_path / "outputs").glob("*/*/metrics.jsonl")):  # epoch 1 is done
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.2)
        procs[0].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [143, 143], outs
    stopped = [re.search(r"in epoch (\d+) after step (\d+)|after epoch (\d+)", err).groups()
               for _, err in outs]
    assert stopped[0] == stopped[1], outs
    runs = {p.parent for p in (tmp_path / "outputs").rglob("run.json")}
    assert len(runs) == 1 and list((runs.pop() / "checkpoints").iterdir())
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1
