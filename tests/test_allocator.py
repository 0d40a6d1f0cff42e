"""dlrun.runtime.allocator: freed memory stays in the process, so XLA's per-step temporaries stop
faulting fresh pages in (the convnet's 1.6x). Checked by counting page faults in a child."""
import subprocess
import sys

import pytest

from dlrun.cli import main as cli

CHILD = """
import ctypes, resource, threading
from dlrun.runtime.allocator import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def step():  # what an XLA step does with its temporaries, on a worker thread: malloc, touch, free
    for size in (48 * 2**20, 8 * 2**20, 100 * 2**20):
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
def steps(n):
    t = threading.Thread(target=lambda: [step() for _ in range(n)]); t.start(); t.join()
steps(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
steps(10)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(env_extra: dict) -> tuple[str, int]:
    import os
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    applied, tuned = faults({})
    off, untuned = faults({"DLRUN_MALLOC_TUNING": "0"})
    assert applied == "True" and off == "False"
    # 10 x 156 MiB touched: untuned glibc faults the pages in again (4 KiB or 2 MiB ones),
    # tuned it reuses them
    assert untuned > 500 and tuned < untuned / 20, (tuned, untuned)


def test_the_cli_applies_it_before_running(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(cli, "_hydra_main", lambda: calls.append(2))
    monkeypatch.setattr(sys, "argv", ["dlrun"])
    cli.main()
    assert calls == [1, 2]
