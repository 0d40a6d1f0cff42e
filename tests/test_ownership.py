"""dlrun.runs.ownership and dlrun.runs.guard in-process: what `remove_created` removes (only what was noted, each only as
what it was noted as), the run/sweep directory checks, and the replace checks of dlrun-eval and
dlrun-report. The command-line cases are in test_nothing_lost.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dlrun.runs import guard
from dlrun.runs import ownership
from dlrun.errors import ConfigError, FileError


@pytest.fixture(autouse=True)
def _fresh_ledger(monkeypatch):
    monkeypatch.setattr(ownership, "_CREATED", {})
    monkeypatch.delenv(ownership.PREEXISTING_VAR, raising=False)


def test_mkdirs_notes_only_the_directories_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    ownership.mkdirs(tmp_path / "kept" / "a" / "b")
    assert not ownership.created(tmp_path / "kept")
    assert ownership.created(tmp_path / "kept" / "a") and ownership.created(tmp_path / "kept" / "a" / "b")
    ownership.remove_created(tmp_path / "kept" / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and (tmp_path / "kept").is_dir()


def test_a_noted_directory_that_holds_a_foreign_file_stays_with_it(tmp_path):
    run = ownership.mkdirs(tmp_path / "run")
    (run / "ours.txt").write_text("ours")
    ownership.note(run / "ours.txt", "file")
    (run / "theirs.txt").write_text("a file someone else put here meanwhile")
    ownership.remove_created(run)
    assert sorted(p.name for p in run.iterdir()) == ["theirs.txt"]


def test_a_tree_goes_whole_a_dir_only_when_empty(tmp_path):
    tree = tmp_path / "checkpoints"
    ownership.note(tree, "tree")
    (tree / "7" / "state").mkdir(parents=True)
    (tree / "7" / "state" / "data").write_bytes(b"x")
    ownership.remove_created(tree, parents=False)
    assert not tree.exists() and tmp_path.is_dir()


def test_a_link_noted_as_a_file_goes_but_never_what_it_points_to(tmp_path):
    target = tmp_path / "earlier-run"
    target.mkdir()
    (target / "params.pkl").write_bytes(b"params")
    link = tmp_path / "job"
    link.symlink_to(target, target_is_directory=True)
    ownership.note(link, "file")
    ownership.remove_created(link)
    assert not os.path.lexists(link) and (target / "params.pkl").read_bytes() == b"params"


def test_a_path_noted_as_a_directory_that_became_a_link_is_left(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep").write_text("k")
    ownership.note(tmp_path / "d", "dir")
    (tmp_path / "d").symlink_to(other, target_is_directory=True)
    ownership.remove_created(tmp_path / "d")
    assert (tmp_path / "d").is_symlink() and (other / "keep").exists()


def test_expect_hydra_outputs_skips_files_that_exist(tmp_path):
    (tmp_path / "dlrun.log").write_text("an earlier run's log")
    ownership.expect_hydra_outputs(tmp_path, str(tmp_path / "dlrun.log"))
    assert not ownership.created(tmp_path / "dlrun.log")
    assert all(ownership.created(tmp_path / ".hydra" / n) for n in ownership.HYDRA_FILES)


def test_hydra_subdir_writes_nothing_into_a_directory_that_holds_something(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    assert guard.hydra_subdir(str(tmp_path), str(tmp_path.parent), log_file=None) is None
    assert ownership._CREATED == {}
    job = tmp_path / "sweep" / "3"
    job.mkdir(parents=True)
    assert guard.hydra_subdir(str(job), str(job.parent), log_file=str(job / "dlrun.log")) == ".hydra"
    assert ownership.created(job) and ownership.created(job / "dlrun.log")


def test_hydra_subdir_leaves_an_empty_job_dir_a_resumed_sweep_had(tmp_path, monkeypatch):
    sweep = ownership.absolute(tmp_path / "sweep")
    (sweep / "0").mkdir(parents=True)
    (sweep / "1").mkdir()
    (sweep / "1" / "run.json").write_text("{}")
    ownership.note_sweep_start(sweep)
    assert json.loads(os.environ[ownership.PREEXISTING_VAR]) == [str(sweep / "0")]
    assert guard.hydra_subdir(str(sweep / "0"), str(sweep), log_file=None) == ".hydra"
    assert not ownership.created(sweep / "0")


@pytest.mark.parametrize("case, resume, expect", [
    ("absent", False, None), ("empty", False, None),
    ("user-files", False, "is not empty (it holds notes.txt)"),
    ("a-run", False, "already holds a dlrun run"), ("a-run", True, None),
    ("a-run", "SELF", None), ("a-run", "/elsewhere", "already holds a dlrun run"),
    ("file", False, "is a file"), ("dangling-link", False, "does not exist"),
    ("user-files", "/some/run", "leave hydra.run.dir out"),
])
def test_check_run_dir(tmp_path, case, resume, expect):
    run_dir = tmp_path / "run"
    if case == "empty":
        run_dir.mkdir()
    elif case == "user-files":
        run_dir.mkdir()
        (run_dir / "notes.txt").write_text("n")
    elif case == "a-run":
        run_dir.mkdir()
        (run_dir / "run.json").write_text("{}")
    elif case == "file":
        run_dir.write_text("f")
    elif case == "dangling-link":
        run_dir.symlink_to(tmp_path / "gone")
    resume = str(run_dir) if resume == "SELF" else resume
    if expect is None:
        guard.check_run_dir(run_dir, resume)
    else:
        with pytest.raises(ConfigError, match=expect.replace("(", r"\(").replace(")", r"\)")):
            guard.check_run_dir(run_dir, resume)


def test_the_working_directory_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "setup.py").write_text("")
    with pytest.raises(ConfigError, match=r"\(the working directory\) is not empty"):
        guard.check_run_dir(ownership.absolute("."), False)


@pytest.mark.parametrize("case, resume, expect", [
    ("a-sweep", False, "Add resume=true"), ("a-sweep", True, None),
    ("user-files", True, "is not a dlrun sweep"), ("empty", False, None),
])
def test_check_sweep_dir(tmp_path, case, resume, expect):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    if case == "a-sweep":
        (sweep / "0").mkdir()
        (sweep / "0" / "summary.json").write_text("{}")
    elif case == "user-files":
        (sweep / "notes.txt").write_text("n")
    if expect is None:
        guard.check_sweep_dir(sweep, resume)
    else:
        with pytest.raises(ConfigError, match=expect):
            guard.check_sweep_dir(sweep, resume)


def test_check_replaceable_refuses_a_foreign_file_of_the_same_name(tmp_path):
    names, ours = ("report.md", "report.csv"), (lambda p: p.read_text().startswith("# Sweep"))
    ownership.check_replaceable(tmp_path, names, "report.md", ours, "dlrun-report")  # none there
    (tmp_path / "report.csv").write_text("my own table")
    with pytest.raises(FileError, match="report.csv, not written by dlrun-report"):
        ownership.check_replaceable(tmp_path, names, "report.md", ours, "dlrun-report")
    (tmp_path / "report.md").write_text("# Sweep report: earlier")
    ownership.check_replaceable(tmp_path, names, "report.md", ours, "dlrun-report")


def test_atomic_writes_note_new_files_only(tmp_path):
    from dlrun.runs.atomic import atomic_write_text
    (tmp_path / "old.txt").write_text("old")
    atomic_write_text(tmp_path / "old.txt", "replaced")
    atomic_write_text(tmp_path / "sub" / "new.txt", "new")
    assert not ownership.created(tmp_path / "old.txt")
    assert ownership.created(tmp_path / "sub") and ownership.created(tmp_path / "sub" / "new.txt")


def test_remove_created_parents_stops_at_the_first_directory_not_made(tmp_path):
    ownership.mkdirs(tmp_path / "outputs" / "2026-12-01" / "run")
    ownership.remove_created(tmp_path / "outputs" / "2026-12-01" / "run")
    assert list(tmp_path.iterdir()) == []
    assert Path(tmp_path).is_dir()


def test_a_job_dir_outside_the_sweep_dir_is_never_taken_for_the_jobs(tmp_path):
    outside = tmp_path / "data"
    outside.mkdir()  # empty, the user's
    assert guard.hydra_subdir(str(outside), str(tmp_path / "sweep"), log_file=None) == ".hydra"
    assert not ownership.created(outside)


def test_the_second_process_of_a_run_writes_no_hydra_files(tmp_path):
    assert guard.hydra_subdir(str(tmp_path), None, None, secondary=True) is None
    assert guard.secondary_process({"enabled": True, "process_id": 1})
    assert not guard.secondary_process({"enabled": True, "process_id": 0})
    assert not guard.secondary_process({"enabled": False, "process_id": 1})


def test_new_empty_dirs_under_a_sweep_go_at_its_end_old_ones_stay(tmp_path):
    sweep = ownership.absolute(tmp_path / "sweep")
    (sweep / "old-empty").mkdir(parents=True)
    ownership.note_sweep_start(sweep)
    (sweep / "mlp" / "3").mkdir(parents=True)  # a failed job's leftovers in a worker
    (sweep / "kept" / "1").mkdir(parents=True)
    (sweep / "kept" / "1" / "run.json").write_text("{}")
    ownership.remove_new_empty_dirs(sweep)
    assert sorted(p.name for p in sweep.iterdir()) == ["kept", "old-empty"]


def test_a_lone_multirun_yaml_of_another_app_is_not_a_dlrun_sweep(tmp_path):
    (tmp_path / "multirun.yaml").write_text("hydra:\n  job:\n    name: other_app\n")
    with pytest.raises(ConfigError, match="is not a dlrun sweep"):
        guard.check_sweep_dir(tmp_path, True)


def test_held_logs_reach_the_file_only_when_let_through(tmp_path):
    """runlog.HeldLogs: a job's log lines are kept back until it may write where it is."""
    import logging
    from dlrun.runs.runlog import HeldLogs
    root, log = logging.getLogger(), logging.getLogger("dlrun.test")
    handler = logging.FileHandler(tmp_path / "dlrun.log", delay=True)
    root.addHandler(handler)
    try:
        held = HeldLogs()
        log.warning("first")
        log.warning("second")
        assert not (tmp_path / "dlrun.log").exists()
        held.let_through()
        log.warning("third")
        assert (tmp_path / "dlrun.log").read_text().split() == ["first", "second", "third"]
        refused = HeldLogs()
        log.warning("never written")
        refused.drop()
        assert handler not in root.handlers
        assert "never" not in (tmp_path / "dlrun.log").read_text()
    finally:
        root.removeHandler(handler)
        handler.close()
