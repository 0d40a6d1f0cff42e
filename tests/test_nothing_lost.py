"""Never lose a user's data (README, "Nothing lost"): dlrun run as a user runs it, into
directories that already hold things. Every case starts from fresh fixtures (a directory of the
user's files, a working directory with the user's project, a finished run, a finished sweep, a
symlink to a run) and snapshots every file's bytes, every link and every directory of the
working directory before and after: whatever dlrun did, all that existed is still there, byte
for byte. A refusal is one line, exit 2, that names the directory and the fix, and changes
nothing at all."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DLRUN, describe, dlrun_env, run_dirs
from test_interrupt import one_error_line

pytestmark = pytest.mark.slow  # CLI subprocesses: `pytest -m slow`, run by .ci/run

TINY = ("model=logreg", "dataset.train_subset=512", "train.epochs=1", "plots=false")
SLOW = ("model=mlp", "dataset.train_subset=2048", "train.epochs=40", "train.batch_size=16",
        "checkpoint.every_epochs=1", "plots=false")  # long enough to be stopped mid-run


def run(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(DLRUN), *map(str, args)], cwd=cwd, env=dlrun_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict[str, object]:
    """relative path -> file bytes, ('link', target) or 'dir', for everything under root except
    the test's dataset/compile cache (tmp_path/cache)."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel == "cache" or rel.startswith("cache/"):
            continue
        if p.is_symlink():
            out[rel] = ("link", str(p.readlink()))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def assert_kept(before: dict, after: dict, changed_ok=lambda rel: False) -> None:
    """Everything in `before` is in `after`, the same (except paths `changed_ok` allows to
    change, which must still exist)."""
    lost = [rel for rel in before if rel not in after]
    assert not lost, f"lost: {lost[:10]}"
    differ = [rel for rel in before if before[rel] != after[rel] and not changed_ok(rel)]
    assert not differ, f"changed: {differ[:10]}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    proc = run(cwd, *TINY, "hydra.run.dir=run")
    assert proc.returncode == 0, describe(proc)
    return cwd / "run"


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run(cwd, "-m", *TINY, "optim.lr=0.01,0.001", "hydra.sweep.dir=sweep")
    assert proc.returncode == 0, describe(proc)
    return cwd / "sweep"


def user_files(where: Path) -> None:
    """A user's own things: notes, data, a nested folder, a symlink."""
    (where / "data").mkdir(parents=True, exist_ok=True)
    (where / "notes.md").write_text("my notes\n")
    (where / "data" / "x.npy").write_bytes(bytes(range(256)))
    (where / "link-to-notes").symlink_to("notes.md")


# Each case: (name, set up tmp_path -> the command line, words the error line must hold).
def _user_dir(tmp):
    user_files(tmp / "mine")
    return ["optim.lr=abc", "hydra.run.dir=mine"], ["mine", "not empty", "hydra.run.dir=PATH"]


def _cwd(tmp):
    user_files(tmp)
    (tmp / "train.py").write_text("print('my project')\n")
    return ["optim.lr=abc", "hydra.run.dir=."], ["the working directory", "not empty"]


def _same_config_into_run(tmp):
    return [*TINY, "hydra.run.dir=run"], ["already holds a dlrun run", "resume="]


def _bad_value_into_run(tmp):
    return [*TINY, "train.epochs=-3", "hydra.run.dir=run"], ["already holds a dlrun run"]


def _resume_into_cwd(tmp):
    user_files(tmp)
    return [f"resume={tmp / 'run'}", "hydra.run.dir=."], ["the working directory",
                                                         "leave hydra.run.dir out"]


def _rerun_sweep(tmp):
    return ["-m", *TINY, "optim.lr=0.01,0.001", "hydra.sweep.dir=sweep"], ["sweep", "resume=true"]


def _sweep_with_bad_value(tmp):
    return ["-m", *TINY, "optim.lr=0.01,abc", "hydra.sweep.dir=sweep"], ["resume=true"]


def _symlinked_run_dir(tmp):
    (tmp / "link").symlink_to("run", target_is_directory=True)
    return [*TINY, "hydra.run.dir=link"], ["link", "already holds a dlrun run"]


def _dangling_link(tmp):
    (tmp / "link").symlink_to("nowhere", target_is_directory=True)
    return [*TINY, "hydra.run.dir=link"], ["does not exist"]


def _resume_a_file(tmp):
    user_files(tmp)
    return [f"resume={tmp / 'notes.md'}"], ["is a file, not a run directory"]


def _resume_true_other_config(tmp):
    return [*TINY, "optim.lr=0.5", "resume=true", "hydra.run.dir=run"], [
        "holds a run of another config", "optim.lr"]


def _run_dir_is_a_file(tmp):
    user_files(tmp)
    return [*TINY, "hydra.run.dir=notes.md"], ["is a file"]


def _data_dir_is_a_file(tmp):
    user_files(tmp)
    return ["dataset=mnist", f"dataset.data_dir={tmp / 'notes.md'}"], [
        "dataset.data_dir", "notes.md", "not a directory"]


def _sweep_into_user_dir(tmp):
    user_files(tmp / "mine")
    return ["-m", *TINY, "optim.lr=0.01,0.001", "hydra.sweep.dir=mine", "resume=true"], [
        "not a dlrun sweep"]


def _output_subdir_outside(tmp):
    (tmp / "config.yaml").write_text("config: mine\n")
    return [*TINY, "hydra.run.dir=new", "hydra.output_subdir=..", "optim.lr=-1"], [
        "hydra.output_subdir=..", "leave it out"]


def _output_subdir_into_resumed_run(tmp):
    return [*TINY, "hydra.run.dir=run", "resume=true", "hydra.output_subdir=.hydra"], [
        "hydra.output_subdir=.hydra"]


def _log_file_of_the_users(tmp):
    user_files(tmp)
    return [*TINY, "hydra.run.dir=new", f"hydra.job_logging.handlers.file.filename={tmp}/notes.md"], [
        "notes.md exists already", "give a new file name"]


def _unquoted_tilde(tmp):
    return ["resume=~/run"], ["quote the value"]


def _unknown_user_home(tmp):
    return ["resume='~nosuchuser/run'"], ["resume=~nosuchuser/run", "give the full path"]


def _eager_log_handler(tmp):
    return [*TINY, "hydra/job_logging=default", "hydra.run.dir=new"], ["delay: true"]


def _dot_dot_after_a_name(tmp):
    return [*TINY, "hydra.run.dir=a/../b"], ["'..' after a directory name"]


CASES = [_user_dir, _cwd, _same_config_into_run, _bad_value_into_run, _resume_into_cwd,
         _rerun_sweep, _sweep_with_bad_value, _symlinked_run_dir, _dangling_link, _resume_a_file,
         _resume_true_other_config, _run_dir_is_a_file, _data_dir_is_a_file, _sweep_into_user_dir,
         _output_subdir_outside, _output_subdir_into_resumed_run, _log_file_of_the_users,
         _unquoted_tilde, _unknown_user_home, _eager_log_handler, _dot_dot_after_a_name]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[1:] for c in CASES])
def test_a_refused_run_changes_nothing(case, tmp_path, finished, finished_sweep):
    shutil.copytree(finished, tmp_path / "run", symlinks=True)
    shutil.copytree(finished_sweep, tmp_path / "sweep", symlinks=True)
    args, words = case(tmp_path)
    before = snapshot(tmp_path)
    line = one_error_line(run(tmp_path, *args))
    for word in words:
        assert word in line, line
    assert snapshot(tmp_path) == before  # not a byte, not a directory more or less


# ------------------------------------------- a sweep's job directories, each checked by its job
def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert all(line.startswith("dlrun: error: job ") for line in lines), describe(proc)
    return lines


@pytest.mark.parametrize("subdir", ["..", "ABSOLUTE"])
def test_job_dirs_outside_the_sweep_dir_that_hold_files_are_refused(subdir, tmp_path):
    user_files(tmp_path)
    user_files(tmp_path / "data")
    (tmp_path / "params.pkl").write_bytes(b"my own params")
    (tmp_path / "dlrun.log").write_text("my log\n")
    subdir = str(tmp_path / "data") if subdir == "ABSOLUTE" else subdir
    before = snapshot(tmp_path)
    lines = error_lines(run(tmp_path, "-m", *TINY, "optim.lr=0.01,0.001", "hydra.sweep.dir=new",
                            f"hydra.sweep.subdir={subdir}"))
    assert len(lines) == 2 and all("not empty" in line for line in lines), lines
    assert snapshot(tmp_path) == before  # and the new sweep directory went again


def test_jobs_sharing_one_directory_never_undo_each_other(tmp_path):
    proc = run(tmp_path, "-m", *TINY, "optim.lr=0.01,0.001", "hydra.sweep.dir=new",
               "hydra.sweep.subdir=same")
    (line,) = error_lines(proc)
    assert "job 1" in line and "already holds a dlrun run" in line, line
    summary = json.loads((tmp_path / "new" / "same" / "summary.json").read_text())
    assert json.loads((tmp_path / "new" / "same" / "run.json").read_text())["config"]["optim"]["lr"] == 0.01
    assert summary["epochs"] == 1  # job 0's run, complete


NESTED = "hydra.sweep.subdir=${model.name}/${hydra.job.num}"


def test_a_sweep_with_nested_job_dirs_keeps_its_runs(tmp_path):
    proc = run(tmp_path, "-m", *TINY, "optim.lr=0.01,abc", "hydra.sweep.dir=sw", NESTED)
    (line,) = error_lines(proc)
    assert "job 1" in line
    assert (tmp_path / "sw" / "logreg" / "0" / "summary.json").is_file()
    assert not (tmp_path / "sw" / "logreg" / "1").exists() and (tmp_path / "sw" / "report.md").is_file()


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_nested_sweep_whose_jobs_all_fail_leaves_nothing(launcher, tmp_path):
    user_files(tmp_path)
    before = snapshot(tmp_path)
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    lines = error_lines(run(tmp_path, "-m", *TINY, "optim.lr=-1,-2", *extra, NESTED))
    assert len(lines) == 2
    assert snapshot(tmp_path) == before  # no outputs/, no empty logreg/ of the failed jobs


def test_an_optuna_search_whose_trials_all_fail_is_one_line_each(tmp_path):
    """(Optuna logs its study's creation on stderr too; then one line per failed trial.)"""
    proc = run(tmp_path, "-m", "hparams_search=logreg", "hydra.sweeper.n_trials=2", *TINY,
               "train.batch_size=-1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("dlrun: error: job ")]
    assert len(lines) == 2 and all("train.batch_size" in line for line in lines), lines
    assert not (tmp_path / "outputs").exists()


def test_a_resumed_sweep_refuses_a_users_folder_named_like_a_job(tmp_path, finished_sweep):
    sweep = shutil.copytree(finished_sweep, tmp_path / "sweep", symlinks=True)
    user_files(sweep / "2")
    (sweep / "2" / "params.pkl").write_bytes(b"my own params")
    before = snapshot(tmp_path)
    proc = run(tmp_path, "-m", *TINY, "optim.lr=0.01,0.001,0.1", "hydra.sweep.dir=sweep",
               "resume=true")
    (line,) = error_lines(proc)
    assert "job 2" in line and "not empty" in line, line
    assert proc.stdout.count("nothing to do") == 2, describe(proc)
    records = ("multirun.yaml", "report.md", "report.csv", "runs.csv", "report.png")
    assert_kept(before, snapshot(tmp_path), lambda rel: rel.endswith("dlrun.log")
                or rel.removeprefix("sweep/") in records)
    assert snapshot(sweep / "2") == {k.removeprefix("sweep/2/"): v for k, v in before.items()
                                     if k.startswith("sweep/2/")}


def test_resume_leaves_a_users_temporary_looking_file_alone(tmp_path, finished):
    run_dir = shutil.copytree(finished, tmp_path / "run", symlinks=True)
    (run_dir / "analysis").mkdir()
    (run_dir / "analysis" / ".summary.json.abcd1234.tmp").write_text("mine")
    (run_dir / ".summary.json.k2j4_x9a.tmp").write_text("a write cut short by a kill")
    proc = run(tmp_path, f"resume={run_dir}", "train.epochs=2")
    assert proc.returncode == 0, describe(proc)
    assert (run_dir / "analysis" / ".summary.json.abcd1234.tmp").read_text() == "mine"
    assert not (run_dir / ".summary.json.k2j4_x9a.tmp").exists()


# ---------------------------------------------------------------- runs that do go ahead
def test_resume_true_with_a_fixed_dir_continues_that_dir_only(tmp_path, finished):
    """A run of the same config elsewhere (outputs/...) is not the one continued."""
    elsewhere = run(tmp_path, *TINY, "checkpoint.every_epochs=1")
    assert elsewhere.returncode == 0, describe(elsewhere)
    shutil.copytree(finished, tmp_path / "run", symlinks=True)
    before = snapshot(tmp_path)
    proc = run(tmp_path, *TINY, "train.epochs=2", "resume=true", "hydra.run.dir=run")
    assert proc.returncode == 0, describe(proc)
    assert run_dirs(proc.stdout) == [tmp_path / "run"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["resumed_at_epochs"] == [1]
    # the run's own records grow; everything else, the other run included, is as it was
    own = ("run/metrics.jsonl", "run/summary.json", "run/dlrun.log", "run/params.pkl",
           "run/best_params.pkl")
    assert_kept(before, snapshot(tmp_path), lambda rel: rel in own or rel.startswith("run/checkpoints"))
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_bytes() == \
        before["run/.hydra/overrides.yaml"]  # Hydra wrote nothing into the earlier run


def test_resume_true_into_a_new_fixed_dir_starts_there(tmp_path):
    other = run(tmp_path, *TINY)  # a run of the same config elsewhere
    assert other.returncode == 0, describe(other)
    proc = run(tmp_path, *TINY, "resume=true", "hydra.run.dir=fresh")
    assert proc.returncode == 0, describe(proc)
    assert "no run in" in proc.stdout and run_dirs(proc.stdout) == [tmp_path / "fresh"]
    assert json.loads((tmp_path / "fresh" / "summary.json").read_text())["resumed_at_epochs"] == []


def test_resumed_sweep_skips_finished_jobs_and_keeps_them(tmp_path, finished_sweep):
    shutil.copytree(finished_sweep, tmp_path / "sweep", symlinks=True)
    before = snapshot(tmp_path)
    proc = run(tmp_path, "-m", *TINY, "optim.lr=0.01,0.001,0.1", "hydra.sweep.dir=sweep",
               "resume=true")
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.count("nothing to do") == 2, describe(proc)
    assert (tmp_path / "sweep" / "2" / "summary.json").is_file()
    # jobs 0 and 1: their log says they were looked at, nothing else of theirs changed; the
    # sweep's own records (multirun.yaml, the report) are rewritten for the continued sweep
    records = ("multirun.yaml", "report.md", "report.csv", "runs.csv", "report.png")
    assert_kept(before, snapshot(tmp_path), lambda rel: rel.endswith("dlrun.log")
                or rel.removeprefix("sweep/") in records)


def test_sweep_with_one_bad_job_keeps_the_others_and_the_users_files(tmp_path):
    user_files(tmp_path)
    before = snapshot(tmp_path)
    proc = run(tmp_path, "-m", *TINY, "optim.lr=0.01,abc,0.001", "hydra.sweep.dir=sweep")
    line = one_error_line(proc)
    assert "job 1" in line and "optim.lr" in line
    assert_kept(before, snapshot(tmp_path))
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "2"]


def test_a_refused_multi_process_run_changes_nothing(tmp_path):
    from test_distributed import two_processes
    user_files(tmp_path)
    before = snapshot(tmp_path)
    for proc in two_processes(tmp_path, "model=logreg", "train.epochs=0"):
        assert proc.returncode == 2, describe(proc)
        assert "train.epochs" in proc.stderr
    after = snapshot(tmp_path)
    assert_kept(before, after)
    # the two processes are two invocations: outputs/<date>/ made by one while the other's run
    # directory was still in it is left (empty) by both
    new = {rel: kind for rel, kind in after.items() if rel not in before}
    assert set(new.values()) <= {"dir"} and all(rel.startswith("outputs") and rel.count("/") <= 1
                                                for rel in new), new


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_stopped_run_beside_the_users_files_keeps_them(sig, tmp_path):
    """The run goes into a new directory inside a folder of the user's; stopped by Ctrl-C (a
    checkpoint, the stop line in dlrun.log too) or killed outright."""
    user_files(tmp_path)
    user_files(tmp_path / "mine")
    before = snapshot(tmp_path)
    proc = subprocess.Popen([str(DLRUN), *SLOW, "hydra.run.dir=mine/run"], cwd=tmp_path,
                            env=dlrun_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "mine" / "run" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else -9), err
    assert_kept(before, snapshot(tmp_path))
    log = (tmp_path / "mine" / "run" / "dlrun.log").read_text()
    if sig == signal.SIGINT:
        assert "stopped by SIGINT" in err and "stopped by SIGINT" in log and "Resume with" in log


# ------------------------------------------------------- random sequences into few directories
STEPS = {
    "good": lambda d: [*TINY, f"hydra.run.dir={d}"],
    "bad": lambda d: [*TINY, "optim.lr=abc", f"hydra.run.dir={d}"],
    "bad-range": lambda d: [*TINY, "train.batch_size=-1", f"hydra.run.dir={d}"],
    "resume-true": lambda d: [*TINY, "train.epochs=2", "resume=true", f"hydra.run.dir={d}"],
    "resume-path": lambda d: [f"resume={d}", "train.epochs=2"],
    "other-config": lambda d: [*TINY, "optim.lr=0.3", "resume=true", f"hydra.run.dir={d}"],
}


@pytest.mark.parametrize("seed", [0, 1])
def test_random_sequences_never_lose_a_file(seed, tmp_path):
    """Good runs, bad inputs, reruns and resumes, in a random order, into the same few
    directories (two run dirs, a folder of the user's, the working directory): no file that
    existed before a step is lost by it, and none changes but the records of a run that the
    step resumed."""
    rng = random.Random(seed)
    user_files(tmp_path)
    user_files(tmp_path / "mine")
    dirs = ["a", "b", "mine", "."]
    for i in range(6):
        step, where = rng.choice(sorted(STEPS)), rng.choice(dirs)
        before = snapshot(tmp_path)
        proc = run(tmp_path, *STEPS[step](where))
        assert proc.returncode in (0, 2), f"step {i} {step} {where}: " + describe(proc)
        assert "Traceback" not in proc.stderr, describe(proc)
        resumed = {p.relative_to(tmp_path) for p in run_dirs(proc.stdout)
                   if proc.returncode == 0 and step.startswith("resume")}
        grows = {"metrics.jsonl", "summary.json", "dlrun.log", "params.pkl", "best_params.pkl"}
        assert_kept(before, snapshot(tmp_path), lambda rel: any(
            rel == f"{r}/{g}" or rel.startswith(f"{r}/checkpoints/") for r in resumed for g in grows))


# ------------------------------------------------------------ dlrun-eval and dlrun-report
def test_eval_and_report_never_replace_a_users_file(tmp_path, finished, finished_sweep):
    bin_dir = DLRUN.parent
    run_dir = shutil.copytree(finished, tmp_path / "run", symlinks=True)
    sweep = shutil.copytree(finished_sweep, tmp_path / "sweep", symlinks=True)
    user_files(tmp_path / "out")
    user_files(tmp_path)
    (tmp_path / "out" / "eval.json").write_text('{"mine": true}\n')
    (sweep / "report.md").write_text("# my own notes on this sweep\n")
    before = snapshot(tmp_path)
    for cmd, words in (([bin_dir / "dlrun-eval", run_dir, "--out", tmp_path / "out"], "eval.json"),
                       ([bin_dir / "dlrun-eval", run_dir, "--out", tmp_path / "notes.md"],
                        "is a file"),
                       ([bin_dir / "dlrun-report", sweep], "report.md")):
        proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300,
                              env=dlrun_env(tmp_path))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, describe(proc)
        assert words in proc.stderr and "nothing was changed" in proc.stderr, describe(proc)
        assert len(proc.stderr.strip().splitlines()) == 1, describe(proc)
    assert snapshot(tmp_path) == before
    # beside the user's other files, and over its own earlier output, dlrun-eval writes
    (tmp_path / "out" / "eval.json").unlink()
    for _ in range(2):
        proc = subprocess.run([str(bin_dir / "dlrun-eval"), str(run_dir), "--out",
                               str(tmp_path / "out")], capture_output=True, text=True,
                              timeout=300, env=dlrun_env(tmp_path))
        assert proc.returncode == 0, describe(proc)
    assert_kept({k: v for k, v in before.items() if k != "out/eval.json"}, snapshot(tmp_path))


# ------------------------------------------------------------------ records that tell the truth
def test_each_sweep_job_is_timed_from_its_own_start(finished_sweep):
    first, second = (json.loads((finished_sweep / job / "summary.json").read_text())["timings"]
                     for job in ("0", "1"))
    # timed from the sweep's start, job 1 would have started after all of job 0
    assert second["start_to_first_step_seconds"] < first["total_seconds"], (first, second)


def test_summary_records_where_the_data_came_from(finished):
    from dlrun.data.sources import MNIST_SAMPLE_FILE, MNIST_SAMPLE_SHA256, sha256_file
    data = json.loads((finished / "summary.json").read_text())["data"]
    assert data["dataset"] == "mnist_sample"
    (record,) = data["files"]
    assert record["file"] == MNIST_SAMPLE_FILE and record["sha256"] == MNIST_SAMPLE_SHA256
    assert Path(record["path"]).is_file() and sha256_file(Path(record["path"])) == MNIST_SAMPLE_SHA256


def test_a_write_that_fails_after_a_checkpoint_keeps_the_resumable_run(tmp_path):
    """RLIMIT_FSIZE as a disk that fills up mid-run: metrics.jsonl outgrows 256 KiB after a few
    hundred epochs, long after the first checkpoints. The run this invocation started is kept,
    resumable, with the error line in its dlrun.log too."""
    from dlrun.runs.checkpoints import has_checkpoint
    limited = ["bash", "-c", 'ulimit -f 256 && exec "$@"', "bash", str(DLRUN)]  # KiB
    proc = subprocess.run([*limited, "model=logreg", "optim=sgd", "dataset.train_subset=512",
                           "train.epochs=3000", "checkpoint.every_epochs=20", "plots=false",
                           "train.compile_cache=false", "hydra.run.dir=run"], cwd=tmp_path,
                          env=dlrun_env(tmp_path), capture_output=True, text=True, timeout=600)
    line = one_error_line(proc)
    assert "cannot write" in line and "metrics.jsonl" in line, line
    run_dir = tmp_path / "run"
    assert has_checkpoint(run_dir) and (run_dir / "run.json").is_file()
    assert line.removeprefix("dlrun: error: ") in (run_dir / "dlrun.log").read_text()
