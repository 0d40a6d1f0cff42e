"""The loop's periodic actions (dlrun.train.actions), each on its own, in-process and without
training: a Loop of plain values, and what each action reads and changes."""
import logging
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np

from dlrun.runs.checkpoints import Progress
from dlrun.runtime.signals import StopRequest
from dlrun.train import early_stopping
from dlrun.train.actions import Loop, evaluated
from dlrun.train.actions.checkpointing import Checkpointing, interrupted
from dlrun.train.actions.evaluation import Evaluation
from dlrun.train.actions.records import BestEpoch, Console, MetricsFile
from dlrun.train.actions.stopping import EarlyStopping, StopSignal


def make_loop(copies=1, epochs=5, eval_every=1, stopper=None, every_epochs=0, every_minutes=0.0):
    train = SimpleNamespace(epochs=epochs, eval_every=eval_every, eval_train=False)
    setup = SimpleNamespace(copies=copies, seeds=[7 + i for i in range(copies)], train=train,
                            stopper=stopper, prune=None, steps_per_epoch=10,
                            checkpoint=SimpleNamespace(every_epochs=every_epochs,
                                                       every_minutes=every_minutes))
    state = SimpleNamespace(params={"w": jnp.arange(3.0) if copies == 1 else jnp.ones((copies, 3))},
                            step=jnp.asarray(30), extra={})
    return Loop(setup, {}, None, {}, Progress(copies), state, None, None, StopRequest(), "val_error")


def record(epoch, error, **more):
    return {"epoch": epoch, "step": 10 * epoch, "val_error": error, "nonfinite_steps": 0,
            "lr": 0.1, "epoch_seconds": 1.0, "examples_per_second": 100.0, **more}


def test_evaluation_runs_every_eval_every_epochs_and_after_the_last():
    calls = []
    loop = make_loop(epochs=5, eval_every=2)
    loop.splits = {"test": "TEST"}
    action = Evaluation(lambda variables, split: calls.append(split) or {"error": np.float64(0.25)})
    for epoch in range(1, 6):
        loop.epoch, loop.records = epoch, [{"epoch": epoch}]
        action(loop)
        assert ("test_error" in loop.records[0]) == (epoch in (2, 4, 5))
    assert calls == ["TEST"] * 3 and loop.records[0]["test_error"] == 0.25


def test_metrics_file_appends_to_history_and_writer():
    written = []
    loop = make_loop(copies=2)
    loop.records = [record(1, 0.5), record(1, 0.4)]
    MetricsFile([SimpleNamespace(append_metrics=written.append)] * 2)(loop)
    assert written == loop.records and [h[0]["val_error"] for h in loop.progress.history] == [0.5, 0.4]


def test_best_epoch_keeps_the_lowest_selected_metric_and_its_parameters():
    loop = make_loop()
    loop.best_params = {"w": np.zeros(3)}
    for epoch, error in [(1, 0.5), (2, 0.3), (3, 0.4)]:
        loop.epoch, loop.records = epoch, [record(epoch, error)]
        loop.state.params = {"w": jnp.full(3, float(epoch))}
        BestEpoch()(loop)
    assert loop.progress.best[0]["epoch"] == 2
    np.testing.assert_array_equal(loop.best_params["w"], [2.0, 2.0, 2.0])


def test_console_prints_one_line_per_copy_and_warns_on_skipped_steps(caplog):
    loop = make_loop(copies=2)
    loop.records = [record(1, 0.5), record(1, 0.4, nonfinite_steps=3)]
    with caplog.at_level(logging.INFO, logger="dlrun"):
        Console()(loop)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("[seed 7] epoch 1/5") and lines[1].startswith("[seed 8] epoch 1/5")
    assert "3 training steps had a non-finite loss" in lines[2]


def test_early_stopping_sets_stopped_early_once_the_rule_says_so():
    stopper = early_stopping.patience(min_epochs=2, max_patience=1)
    loop = make_loop(stopper=stopper, epochs=10)
    action = EarlyStopping("patience")
    for epoch, error in enumerate([0.5, 0.4, 0.45, 0.46, 0.47], start=1):
        loop.epoch = epoch
        loop.progress.history[0].append(record(epoch, error))
        action(loop)
        if loop.progress.stopped_early is not None:
            break
    assert loop.progress.stopped_early == epoch < 5 and loop.ends
    assert evaluated(loop.progress.history[0], "val_error")[1] == (2, 20, 0.4)


def test_stop_signal_is_read_once_per_epoch():
    loop = make_loop()
    StopSignal()(loop)
    assert not loop.stopping
    loop.stop = SimpleNamespace(requested=True, name="SIGTERM", signum=15)
    StopSignal()(loop)
    assert loop.stopping
    error = interrupted(loop, 3, 0, __import__("pathlib").Path("/runs/a"))
    assert "stopped by SIGTERM after epoch 2" in str(error) and "resume=/runs/a" in str(error)
    assert error.exit_code == 128 + 15


def test_checkpointing_saves_when_due_stopping_or_at_the_end():
    saved = []
    checkpoints = SimpleNamespace(save=lambda step, tree, meta, error: saved.append((step, error)))
    loop = make_loop(epochs=6, every_epochs=4)
    action = Checkpointing(checkpoints, started_at=0.0, elapsed_before=0.0)
    action.save = lambda loop, acc, error=None: saved.append((loop.epoch, error))
    for epoch in range(1, 7):
        loop.epoch, loop.records = epoch, [record(epoch, 0.1 * epoch)]
        loop.stopping = epoch == 2
        action(loop)
    assert [e for e, _ in saved] == [2, 4, 6] and abs(saved[-1][1] - 0.6) < 1e-12
    assert not action.time_due(loop)
