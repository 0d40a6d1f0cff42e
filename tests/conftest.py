"""Shared test fixtures. The command-line tests (test_cli.py) run `dlrun` exactly as a user does:
the console script of the current virtual environment, as a subprocess, in a temporary working
directory so that every outputs/ directory lands in pytest's tmp_path."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
# The console script installed next to the interpreter running the tests (.venv/bin/dlrun).
DLRUN = Path(sys.executable).parent / "dlrun"
RUN_DIR_RE = re.compile(r"^run dir: (.+)$", re.MULTILINE)




def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow set (`-m slow`: `make test-all`, .ci/run) is every test that runs dlrun's
    commands as subprocesses (the `dlrun`/`dlrun_popen` fixtures, or a module's `pytestmark`),
    except those marked `smoke`: the few that `make test` keeps to try the real command."""
    for item in items:
        cli = {"dlrun", "dlrun_popen"} & set(item.fixturenames)
        if cli and not item.get_closest_marker("smoke") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


# In-process tests share their compiled programs across sessions: JAX's persistent compilation
# cache (keyed by the program, the compile options and the jax version, so an entry never
# serves another program) in the git-ignored .pytest_cache. A second `make test` skips most of
# the compiling that dominates the first (an MLP run: 11 s to the first step, 1 s from cache).
XLA_CACHE = REPO / ".pytest_cache" / "dlrun-xla"


@pytest.fixture(autouse=True)
def _isolated_dlrun_cache(tmp_path_factory, monkeypatch) -> None:
    """In-process runs keep datasets in one cache per test session, never in the user's
    ~/.cache/dlrun, and compiled programs in XLA_CACHE."""
    cache = tmp_path_factory.getbasetemp() / "dlrun-cache"
    if not (cache / "xla").exists():
        XLA_CACHE.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "xla").symlink_to(XLA_CACHE, target_is_directory=True)
    monkeypatch.setenv("DLRUN_CACHE_DIR", str(cache))


def dlrun_env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment, with the dataset cache inside tmp_path (never ~/.cache) and
    without the switches that change how dlrun reports errors."""
    env = dict(os.environ)
    env["DLRUN_CACHE_DIR"] = str(tmp_path / "cache")
    for var in ("DLRUN_DEBUG", "HYDRA_FULL_ERROR"):
        env.pop(var, None)
    return env


@pytest.fixture
def dlrun(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`dlrun(*args, timeout=120)` runs the dlrun console script with cwd=tmp_path."""
    if not DLRUN.exists():
        pytest.fail(f"no dlrun console script next to {sys.executable}; run `make test`")

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(DLRUN), *map(str, args)], cwd=tmp_path, env=dlrun_env(tmp_path),
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def dlrun_popen(tmp_path: Path) -> Callable[..., subprocess.Popen]:
    """`dlrun_popen(*args)` starts dlrun in the background (cwd=tmp_path, output captured)."""

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen([str(DLRUN), *map(str, args)], cwd=tmp_path,
                                env=dlrun_env(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    return start


def run_dirs(stdout: str) -> list[Path]:
    """Every distinct `run dir: PATH` dlrun printed, in order."""
    seen: list[Path] = []
    for match in RUN_DIR_RE.finditer(stdout):
        path = Path(match.group(1).strip())
        if path not in seen:
            seen.append(path)
    return seen


def files_under(root: Path) -> list[Path]:
    """All files (not directories) below root; [] if root does not exist."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if not p.is_dir())


def describe(proc: subprocess.CompletedProcess) -> str:
    """The end of a finished process's output, for assertion messages."""
    return (f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
            f"\n--- stderr ---\n{proc.stderr[-3000:]}")
