"""The one place dlrun deletes anything, and the rule it keeps: only what this invocation created.

docs/guide.md, "Nothing lost": dlrun removes a path only if this very invocation (this process, since
it started) created it. Whatever existed before, a user's files, an earlier run, the working
directory, stays byte for byte, whatever fails. So every path dlrun or Hydra creates for a run
is noted here when it is created (or, for what Hydra is about to create, just before), and
`remove_created` is the only function that removes run outputs: it removes exactly the noted
paths under a directory, deepest first, each one only as what it was noted as:

  file  a file or symlink this invocation wrote (dlrun.runs.atomic's atomic writes, Hydra's .hydra/*.yaml
        and the job log, a resumed sweep's link to an earlier job)
  dir   a directory this invocation made; removed only once empty
  tree  a directory this invocation made and handed whole to a library that fills it (Orbax's
        checkpoints/, tensorboardX's tb/): removed with its contents, which are all this
        invocation's because the directory did not exist before

Refusing before anything is touched is the other half, in dlrun.runs.guard: a run, sweep or job
directory that already holds files is refused before Hydra or dlrun writes into it, unless it
is the run being resumed. The audit of every write and delete in dlrun is in docs/design.md
("Never lose a user's data").
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable


# absolute path -> (kind: "file" | "dir" | "tree", the job that made it: see begin_job)
_CREATED: dict[Path, tuple[str, object]] = {}
_JOB: list = [None]  # the job running in this process now (its run directory and number)
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes in .hydra/
HYDRA_SUBDIR = "${dlrun_hydra_subdir:}"  # hydra.output_subdir in conf/config.yaml
PREEXISTING_VAR = "DLRUN_PREEXISTING_JOB_DIRS"  # JSON list: empty job dirs a resumed sweep had


def absolute(path: str | os.PathLike) -> Path:
    """`path` made absolute without following symlinks (a link is a path of its own)."""
    return Path(os.path.abspath(os.fspath(path)))


def begin_job(run_dir: str | os.PathLike, number=None) -> None:
    """From now on, what is created is job `number`'s in `run_dir` (a sweep's jobs may run one
    after another in one process: each removes only its own)."""
    _JOB[0] = (absolute(run_dir), number)


def current_job():
    return _JOB[0]


def end_job() -> None:
    _JOB[0] = None


def note(path: str | os.PathLike, kind: str) -> None:
    """Record that this invocation (the current job) created `path` (kind: file, dir, tree)."""
    assert kind in ("file", "dir", "tree"), kind
    _CREATED.setdefault(absolute(path), (kind, _JOB[0]))


def created(path: str | os.PathLike, by_this_job: bool = False) -> bool:
    entry = _CREATED.get(absolute(path))
    return entry is not None and (not by_this_job or entry[1] == _JOB[0])


def missing_dirs(path: str | os.PathLike) -> list[Path]:
    """`path` and its ancestors that do not exist yet, outermost first."""
    out, p = [], absolute(path)
    while not os.path.lexists(p) and p != p.parent:
        out.append(p)
        p = p.parent
    return out[::-1]


def mkdirs(path: str | os.PathLike) -> Path:
    """mkdir -p `path`, noting every directory it made."""
    path = absolute(path)
    made = missing_dirs(path)
    path.mkdir(parents=True, exist_ok=True)
    for d in made:
        note(d, "dir")
    return path


def expect_dirs(path: str | os.PathLike) -> None:
    """Note the directories about to be made for `path` by someone else (Hydra's mkdir -p)."""
    for d in missing_dirs(path):
        note(d, "dir")


def expect_hydra_outputs(run_dir: Path, log_file: str | None) -> None:
    """Note what Hydra is about to write into run_dir (.hydra/*.yaml, the job's log file),
    each only if it does not exist yet."""
    expect_dirs(run_dir / ".hydra")
    for name in HYDRA_FILES:
        if not os.path.lexists(run_dir / ".hydra" / name):
            note(run_dir / ".hydra" / name, "file")
    if log_file and not os.path.lexists(log_file):
        note(log_file, "file")


def remove_created(root: str | os.PathLike, parents: bool = True,
                   this_job_only: bool = False) -> None:
    """Remove what this invocation (with this_job_only: the current job) created at or below
    `root`, deepest first (see the module docstring); then, with parents=True, the directories
    above `root` it made, while empty. Nothing else is touched; a path that changed kind (a
    link where a directory was) is left."""
    root = absolute(root)
    mine = [p for p, (_, job) in _CREATED.items() if (p == root or root in p.parents)
            and (not this_job_only or job == _JOB[0])]
    for path in sorted(mine, key=lambda p: len(p.parts), reverse=True):
        _remove(path, _CREATED.pop(path)[0])
    if parents:
        remove_created_parents(root.parent)


def remove_created_parents(path: Path) -> None:
    """Remove `path` and its ancestors while each is a directory this invocation made and is
    empty."""
    path = absolute(path)
    while path in _CREATED and _CREATED[path][0] == "dir" and _remove(path, _CREATED[path][0]):
        del _CREATED[path]
        path = path.parent


def _remove(path: Path, kind: str) -> bool:
    """Remove one noted path as what it was noted as; True if it is gone."""
    try:
        if kind == "file":
            if path.is_symlink() or path.is_file():
                path.unlink()
        elif path.is_symlink():
            return False  # a link where this invocation made a directory: not ours
        elif kind == "tree" and path.is_dir():
            shutil.rmtree(path)
        elif kind == "dir" and path.is_dir():
            if any(path.iterdir()):
                return False
            path.rmdir()
    except OSError:
        return False
    return not os.path.lexists(path)


# ---- a sweep's directory: what it held when it started ----------------------------------
_SWEEP_START: dict[Path, set[Path]] = {}  # sweep dir -> the directories under it at its start


def note_sweep_start(sweep_dir: Path) -> None:
    """Remember the directories a sweep directory holds when the sweep starts (none: a new
    one), and tell the jobs (in this process or in launcher workers, through the environment)
    which of them are empty, so no job takes one for its own. (A job directory that holds
    anything is recognised as pre-existing by `hydra_subdir`.)"""
    dirs = {absolute(root) for root, _, _ in os.walk(sweep_dir)} if sweep_dir.is_dir() else set()
    _SWEEP_START[sweep_dir] = dirs
    os.environ[PREEXISTING_VAR] = json.dumps(sorted(
        str(d) for d in dirs if d != sweep_dir and not d.is_symlink() and not any(d.iterdir())))


def remove_new_empty_dirs(sweep_dir: Path) -> None:
    """At the end of a sweep: the empty directories under its directory that were not there
    when it started (what failed jobs in launcher workers leave of a nested
    hydra.sweep.subdir, e.g. mlp/ of mlp/3/), deepest first. Only empty ones."""
    before = _SWEEP_START.get(absolute(sweep_dir))
    if before is None or not sweep_dir.is_dir():
        return
    for root, _, _ in os.walk(sweep_dir, topdown=False):
        path = absolute(root)
        if path != absolute(sweep_dir) and path not in before and not path.is_symlink():
            try:
                if not any(path.iterdir()):
                    path.rmdir()
            except OSError:
                pass


# ---- tools that write named files into a directory the user gives (dlrun-eval, dlrun-report)
def check_replaceable(directory: Path, names: tuple[str, ...], marker: str,
                      is_ours: Callable[[Path], bool], prog: str) -> None:
    """Before `prog` writes `names` into `directory`: refuse (FileError, nothing written) if
    any of them exists and is not an earlier output of `prog`, recognised by its `marker` file
    (one of `names`, written with the others) passing `is_ours`. Other files there are never
    touched."""
    from dlrun.errors import FileError

    if os.path.lexists(directory) and not directory.is_dir():
        raise FileError(f"{directory} is a file, not a directory; nothing was changed. Give "
                        f"a directory (new, or holding an earlier {prog} output)")
    existing = [n for n in names if os.path.lexists(directory / n)]
    if not existing:
        return
    mark = directory / marker
    try:
        ours = mark.is_file() and not mark.is_symlink() and is_ours(mark)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise FileError(f"{directory} already holds {', '.join(existing)}, not written by {prog}; "
                        f"nothing was changed. Move them, or give another directory")
