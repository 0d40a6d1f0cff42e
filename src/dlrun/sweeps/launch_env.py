"""Share one machine between the jobs of a parallel sweep (hydra/launcher=joblib).

Hydra's joblib launcher runs `n_jobs` jobs at once, each in its own worker process, and every
JAX process by default takes the whole machine: XLA:CPU sizes its thread pool by the CPUs the
process may run on (its affinity mask; XLA_FLAGS cannot change that in jax 0.10: with
`--xla_cpu_multi_thread_eigen=false` a 2000x2000 matmul still used 1.97 cores here, pinned to
one core 1.00), and XLA on a GPU preallocates 75 % of the GPU's memory, so a second process
on the same GPU fails to allocate. So, before the job imports JAX, `configure_job` gives the
job its share:

* a slot: the first of `n` slots free among the sweep's running jobs (a slot is held by an
  abstract Unix socket name, which the kernel frees when its process ends, so nothing is left
  on disk and a crashed worker never keeps one);
* CPUs: slot s is pinned (sched_setaffinity, every thread of the process) to its 1/n of the
  CPUs the sweep may use, so n jobs run side by side without oversubscription;
* GPUs: with several visible GPUs, slot s sees GPU s mod G (CUDA_VISIBLE_DEVICES, within what
  the user made visible); when k > 1 jobs share a GPU, each preallocates 0.9/k of its memory
  (XLA_PYTHON_CLIENT_MEM_FRACTION).

Nothing is changed for the basic (sequential) launcher, for a job running in the process that
started the sweep, or for a variable the user already set (CUDA_VISIBLE_DEVICES is only ever
narrowed to one of the GPUs it lists). `DLRUN_LAUNCH_ENV=0` turns all of it off.
submitit_local jobs are pinned the same way when `hydra.launcher.cpus_per_task` is set (slots =
CPUs // cpus_per_task); SLURM and Ray give each job its own CPUs and GPUs themselves.

The parent process also gets a default for GPU machines (`default_overrides`): without an
explicit `hydra.launcher.n_jobs`, `hydra/launcher=joblib` runs one job per visible GPU instead
of joblib's one per CPU core.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import sys
from pathlib import Path

from dlrun.runtime.allocator import keep_freed_memory

log = logging.getLogger("dlrun")
MAIN_PID_VAR = "DLRUN_MAIN_PID"  # set by the `dlrun` process that starts the sweep
SWEEP_ID_VAR = "DLRUN_SWEEP_ID"  # and its unique id (PID + random): names its jobs' error files
ERRORS_DIR = ".dlrun-errors"  # <sweep dir>/.dlrun-errors/<job>.txt: a worker's error line
GPU_MEMORY_SHARED = 0.9  # of a GPU's memory, split among the jobs sharing it
_slot_socket: socket.socket | None = None  # held for the life of the worker process
_applied: dict[str, str] = {}


def in_main_process() -> bool:
    """True in the `dlrun` process itself (the basic launcher runs jobs there)."""
    return os.environ.get(MAIN_PID_VAR) == str(os.getpid())


def concurrent_jobs(launcher) -> int:
    """How many jobs of this sweep run at once on this machine, for the launchers dlrun shares
    the machine for (1 = do nothing)."""
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n_jobs = launcher.get("n_jobs", -1)
        if n_jobs is None:
            return 1
        import joblib  # the launcher's own dependency; cpu_count honours affinity and cgroups

        n_jobs = int(n_jobs)
        return max(1, n_jobs if n_jobs > 0 else joblib.cpu_count() + 1 + n_jobs)
    if target.endswith("submitit_launcher.LocalLauncher") and launcher.get("cpus_per_task"):
        return max(1, len(os.sched_getaffinity(0)) // int(launcher.cpus_per_task))
    return 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, without importing JAX or CUDA: CUDA_VISIBLE_DEVICES if
    set, else the NVIDIA driver's list."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        ids = [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",")]
        return [g for g in ids if g and g != "-1"]
    driver = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []


def claim_slot(n: int, key: str) -> int:
    """The first of n slots no other live process of this sweep holds (n-1 if all are taken,
    which only happens when jobs outnumber n)."""
    global _slot_socket
    if _slot_socket is not None:  # a reused worker keeps its slot (and its pinned CPUs)
        return int(_slot_socket.getsockname()[1:].decode().rsplit("-", 1)[1])
    for slot in range(n):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"\0dlrun-slot-{key}-{slot}")  # Linux abstract namespace: no file
        except OSError:
            sock.close()
            continue
        _slot_socket = sock
        return slot
    return n - 1


def cpu_share(cpus: list[int], n: int, slot: int) -> list[int]:
    """Slot `slot`'s CPUs when n jobs share `cpus`: a contiguous 1/n of them (one CPU, shared
    round-robin, when jobs outnumber CPUs)."""
    if n <= len(cpus):
        return cpus[slot * len(cpus) // n:(slot + 1) * len(cpus) // n]
    return [cpus[slot % len(cpus)]]


def pin_process(cpus: list[int]) -> None:
    """Pin every thread of this process (threads started later inherit it)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that just ended
            pass


def setdefault_env(name: str, value: str) -> None:
    if name not in os.environ:
        os.environ[name] = value
        _applied[name] = value


def configure_job(hc) -> dict:
    """Give this job its share of the machine (see the module docstring); returns what was set,
    e.g. {'cpus': '1', 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45'}. Call before JAX is imported."""
    if in_main_process():
        return {}
    keep_freed_memory()  # what main() does for jobs run in the dlrun process (allocator.py)
    if os.environ.get("DLRUN_LAUNCH_ENV") == "0" or not hasattr(os, "sched_getaffinity"):
        return {}
    n = concurrent_jobs(hc.launcher)
    if str(hc.get("sweeper", {}).get("_target_", "")).endswith("OptunaSweeper"):
        n = min(n, int(hc.sweeper.get("n_jobs") or 1))  # trials launched at once
    if n <= 1:
        return {}
    if "jax" in sys.modules and _slot_socket is None:  # (a reused worker has its slot)
        log.warning("dlrun: JAX was imported before the job could be given its share of the "
                    "machine; its CPU/GPU settings are JAX's defaults")
    slot = claim_slot(n, os.environ.get(MAIN_PID_VAR) or str(os.getppid()))
    cpus = cpu_share(sorted(os.sched_getaffinity(0)), n, slot)
    pin_process(cpus)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        setdefault_env(var, str(len(cpus)))  # libraries that start their pools later
    gpus = visible_gpus()
    if gpus:
        if len(gpus) > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            _applied["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        sharing = math.ceil(n / len(gpus))
        if sharing > 1 and not any(v in os.environ for v in (
                "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR")):
            setdefault_env("XLA_PYTHON_CLIENT_MEM_FRACTION",
                           f"{math.floor(GPU_MEMORY_SHARED / sharing * 1000) / 1000:g}")
    info = {"slot": slot, "of": n, "cpus": ",".join(map(str, cpus)), **_applied}
    log.info("job %s (pid %d) shares this machine with up to %d at once: slot %d, CPUs %s%s",
             hc.job.num, os.getpid(), n, slot, info["cpus"],
             "".join(f", {k}={v}" for k, v in _applied.items() if k.startswith(("XLA", "CUDA"))))
    return info


def default_overrides(args: list[str]) -> list[str]:
    """The command line, plus hydra.launcher.n_jobs=<visible GPUs> for hydra/launcher=joblib on
    a GPU machine when n_jobs is not given (one job per GPU: joblib's default, one per CPU
    core, would crowd a GPU with as many processes as there are cores)."""
    if "hydra/launcher=joblib" not in args or any(
            a.lstrip("+").startswith("hydra.launcher.n_jobs=") for a in args):
        return args
    gpus = visible_gpus()
    return [*args, f"hydra.launcher.n_jobs={len(gpus)}"] if gpus else args


def forward_error(line: str, hc) -> None:
    """A job run in another process (joblib, submitit, ray) cannot add its one-line error to
    the `dlrun` process's list: it leaves it in <sweep dir>/.dlrun-errors/<sweep id>-<job>.txt, which
    `collect_errors` reads back there when the sweep ends."""
    if in_main_process():
        return
    from dlrun.runs.atomic import atomic_write_text  # numpy: only now, after the CPU pinning

    errors = Path(str(hc.sweep.dir)) / ERRORS_DIR
    name = f"{os.environ.get(SWEEP_ID_VAR, 'unknown')}-{hc.job.num}.txt"  # this sweep's
    atomic_write_text(errors / name, line)


def collect_errors(sweep_dirs, since: float) -> list[str]:
    """The error lines this sweep's jobs left (see forward_error: files named by this sweep's
    id, so an earlier sweep's leftovers are neither read nor removed; `unknown-<job>` from a
    worker that did not inherit the id, e.g. on a remote Ray node, if written since `since`),
    by job number; removes them, and the folder if this sweep made it (dlrun.runs.ownership) and it
    is empty."""
    from dlrun.runs import ownership

    lines = []
    for sweep_dir in sweep_dirs:
        errors = Path(sweep_dir) / ERRORS_DIR
        found = [*errors.glob(f"{os.environ.get(SWEEP_ID_VAR)}-*.txt"),
                 *(p for p in errors.glob("unknown-*.txt") if p.stat().st_mtime >= since)
                 ] if errors.is_dir() else []
        mine = sorted(found, key=lambda p: int(p.stem.rsplit("-", 1)[1]))
        lines += [p.read_text() for p in mine]
        for p in mine:
            p.unlink()
        if ownership.created(errors):
            ownership.remove_created(errors, parents=False)
    return lines
