"""Checkpoints and resume, in process: a resumed run ends bitwise where an uninterrupted one does.

Interruptions here come from a StopRequest that turns on after a given number of polls (the
training loop asks it after every step with loop=step and at every epoch end); real signals
and SIGKILL are in test_interrupt.py.
"""
import json
import signal

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from dlrun import train
from dlrun.config import identity
from dlrun.runs import checkpoints as checkpoint
from dlrun.errors import ConfigError, FileError, Interrupted
from dlrun.runs.atomic import load_arrays
from dlrun.runtime.signals import StopRequest

from _config import compose

TIMING = ("epoch_seconds", "examples_per_second", "eval_seconds")


class StopAfter(StopRequest):
    """A stop request that arrives, as SIGINT would, at the `polls`-th time it is asked."""

    def __init__(self, polls: int):
        super().__init__()
        self.left = polls

    @property
    def requested(self) -> bool:
        self.left -= 1
        if self.left <= 0:
            self.signum = signal.SIGINT
        return self.signum is not None


def metrics(run_dir):
    """metrics.jsonl without the timing fields (which differ between any two runs)."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_params(a, b):
    la, lb = load_arrays(a), load_arrays(b)
    flat_a, flat_b = identity.flatten(la), identity.flatten(lb)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        assert flat_a[key].tobytes() == flat_b[key].tobytes(), key  # bitwise


CASES = {  # overrides, polls before the stop, where it must land
    "mlp-scan-epoch-end": (["model.hidden=[32]", "dataset.train_subset=600", "train.epochs=4",
                            "regularizer=[dropout]"], 2, "after epoch"),
    "cnn-step-mid-epoch": (["model=cnn", "dataset.train_subset=640", "train.epochs=2",
                            "optim=momentum", "schedule=cosine"], 7, "in epoch 2 after step 2 of 5"),
    "mlp-2-copies-step": (["model.hidden=[16]", "dataset.train_subset=512", "train.epochs=3",
                           "train.num_seeds=2", "train.loop=step", "train.lrs=[0.01,0.001]"], 6,
                          "in epoch 2 after step 2 of 4"),
    # PCD's persistent chains are part of the state: resumed mid-epoch, the chains go on
    "rbm-pcd-step-mid-epoch": (["model=rbm", "model.hidden=32", "model.persistent=true", "model.k=2",
                                "model.chains=10", "optim=sgd", "optim.lr=0.05",
                                "train.batch_size=20", "dataset.train_subset=200",
                                "train.epochs=3", "train.loop=step"], 15,
                               "in epoch 2 after step 5 of 10"),
    # a stack stopped in its second pretraining phase resumes that phase, then fine-tunes
    "sda-in-pretraining": (["model=sda", "model.hidden=[32,16]", "model.corruption=[0.1,0.2]",
                            "model.pretrain_epochs=2", "dataset.train_subset=400",
                            "train.epochs=2", "optim=sgd", "optim.lr=0.1"], 3, "after epoch 1"),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=[] if c in ("mlp-scan-epoch-end", "mlp-2-copies-step")
                                               else [pytest.mark.slow]) for c in CASES])
def test_resumed_run_is_bitwise_identical_to_an_uninterrupted_one(case, tmp_path):
    overrides, polls, where = CASES[case]
    cfg = compose(*overrides)
    train.train_and_evaluate(cfg, str(tmp_path / "whole"))

    part = tmp_path / "part"
    with pytest.raises(Interrupted) as stopped:
        train.train_and_evaluate(cfg, str(part), train.Context(stop=StopAfter(polls)))
    assert where in str(stopped.value) and f"resume={part}" in str(stopped.value)
    assert stopped.value.exit_code == 130
    assert not (part / "params.pkl").exists() and not (part / "summary.json").exists()
    train.train_and_evaluate(cfg, str(part), train.Context(resume=True))

    seed_dirs = [p.name for p in (tmp_path / "whole").glob("seed_*")] or ["."]
    phase_dirs = [p.name for p in (tmp_path / "whole").glob("pretrain_*")]
    for sub in seed_dirs + phase_dirs:
        assert metrics(part / sub) == metrics(tmp_path / "whole" / sub)
        for name in ("params.pkl", "best_params.pkl"):
            assert_same_params(part / sub / name, tmp_path / "whole" / sub / name)
    stopped_dir = part / (phase_dirs[-1] if phase_dirs else ".")  # the phase that was stopped
    summary = json.loads((stopped_dir / "summary.json").read_text())
    assert summary["resumed_at_epochs"] and 0 < summary["resumed_at_epochs"][0] < cfg.train.epochs


def test_resume_extends_a_finished_run_and_refuses_fewer_epochs(tmp_path):
    short = compose("model.hidden=[32]", "dataset.train_subset=512", "train.epochs=2")
    train.train_and_evaluate(short, str(tmp_path / "run"))
    longer = compose("model.hidden=[32]", "dataset.train_subset=512", "train.epochs=4")
    summary = train.train_and_evaluate(longer, str(tmp_path / "run"), train.Context(resume=True))
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4]
    train.train_and_evaluate(longer, str(tmp_path / "whole"))
    assert metrics(tmp_path / "run") == metrics(tmp_path / "whole")
    assert summary["resumed_at_epochs"] == [2]
    # a finished run resumed again: nothing to do, the same summary
    again = train.train_and_evaluate(longer, str(tmp_path / "run"), train.Context(resume=True))
    assert again == json.loads((tmp_path / "run" / "summary.json").read_text())
    with pytest.raises(ConfigError, match="already trained 4 epochs"):
        train.train_and_evaluate(short, str(tmp_path / "run"), train.Context(resume=True))


def test_resume_refuses_another_config(tmp_path):
    cfg = compose("model.hidden=[32]", "dataset.train_subset=512", "train.epochs=1")
    train.train_and_evaluate(cfg, str(tmp_path))
    other = compose("model.hidden=[32]", "dataset.train_subset=512", "train.epochs=1",
                    "optim.lr=0.5")
    with pytest.raises(ConfigError, match=r"optim\.lr \(0\.001 there, 0\.5 here\)"):
        train.train_and_evaluate(other, str(tmp_path), train.Context(resume=True))


def test_checkpoints_kept_are_the_newest_and_the_best(tmp_path):
    """keep=2 and a checkpoint after every step (every_minutes tiny, loop=step): the newest two
    remain, plus the one at the best validation epoch; each holds the full state and meta."""
    cfg = compose("model.hidden=[16]", "dataset.train_subset=512", "train.epochs=4",
                  "train.loop=step", "optim=sgd", "optim.lr=2.0", "checkpoint.keep=2",
                  "checkpoint.every_minutes=1e-9")
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    history = metrics(tmp_path)
    best = min(history, key=lambda r: r["val_error"])
    assert summary["best"]["epoch"] == best["epoch"]
    assert steps == sorted({best["step"], 15, 16}), (steps, best)
    meta = json.loads((tmp_path / "checkpoints" / "16" / "meta" / "metadata").read_text())
    assert meta["epoch"] == 4 and meta["step_in_epoch"] == 0 and meta["step"] == 16
    assert meta["config_hash"] == identity.config_hash(meta["config"])
    assert [r["epoch"] for r in meta["history"][0]] == [1, 2, 3, 4]
    assert meta["best"][0]["epoch"] == best["epoch"]


def test_nan_raise_keeps_the_last_good_checkpoint(tmp_path):
    """An L2 penalty with lr x coef > 2 makes every weight flip sign and grow 9x per step,
    so the run overflows after a few epochs (epoch 4 here): find the first bad epoch with skip,
    then raise stops there, keeping the checkpoint of the epoch before."""
    base = ["optim=sgd", "optim.lr=1", "regularizer=[l2]", "regularizer.l2.coef=10",
            "model.hidden=[64]", "dataset.train_subset=512", "train.epochs=6",
            "checkpoint.every_epochs=1"]
    train.train_and_evaluate(compose(*base, "train.nan_policy=skip"), str(tmp_path / "skip"))
    bad = [r["epoch"] for r in metrics(tmp_path / "skip") if r["nonfinite_steps"]]
    assert bad and bad[0] >= 2, "the lr must diverge after the first epoch for this test"
    with pytest.raises(train.TrainingDiverged) as diverged:
        train.train_and_evaluate(compose(*base, "train.nan_policy=raise"), str(tmp_path / "raise"))
    last_good = (tmp_path / "raise" / "checkpoints").resolve()
    steps = sorted(int(p.name) for p in last_good.iterdir())
    assert f"epoch {bad[0]}," in str(diverged.value)
    assert f"last good checkpoint is {last_good}/{steps[-1]}" in str(diverged.value)
    meta = json.loads((last_good / str(steps[-1]) / "meta" / "metadata").read_text())
    assert meta["epoch"] == bad[0] - 1


def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path):
    args = ("model.hidden=[32]", "dataset.train_subset=512")
    train.train_and_evaluate(compose(*args, "train.epochs=1"), str(tmp_path))
    cfg = compose(*args, "train.epochs=2")
    (step,) = (tmp_path / "checkpoints").iterdir()
    data = max((p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(FileError) as err:
        train.train_and_evaluate(cfg, str(tmp_path), train.Context(resume=True))
    assert str(step) in str(err.value) and "delete that directory" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_new_run_will_not_overwrite_a_checkpointed_directory(tmp_path):
    cfg = compose("model.hidden=[32]", "dataset.train_subset=512", "train.epochs=1")
    train.train_and_evaluate(cfg, str(tmp_path))
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(FileError, match="already holds a checkpointed run"):
        train.train_and_evaluate(cfg, str(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_config_hash_ignores_only_the_run_length_and_neutral_keys():
    def cfg(*overrides):
        return OmegaConf.to_container(compose(*overrides), resolve=True)

    base = identity.config_hash(cfg())
    assert identity.config_hash(cfg("train.epochs=99", "checkpoint.keep=5",
                                      "train.compile_cache=false")) == base
    for change in ("optim.lr=0.5", "train.seed=1", "model=cnn", "train.batch_size=64",
                   "dataset.train_subset=100"):
        assert identity.config_hash(cfg(change)) != base, change


def test_host_copy_does_not_alias_device_buffers():
    x = jax.numpy.arange(4.0)
    copy = checkpoint.host_copy({"x": x})["x"]
    assert isinstance(copy, np.ndarray) and copy.flags.owndata
