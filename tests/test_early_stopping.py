"""Early stopping: both algorithms of the seed documents, as pure functions and in a run."""
import json

import pytest

from dlrun import train
from dlrun.train import early_stopping
from dlrun.errors import ConfigError
from dlrun.runs.atomic import load_arrays
from test_checkpoint import assert_same_params, metrics

from _config import compose


def history(errors, steps_per_epoch=100):
    return [(e + 1, (e + 1) * steps_per_epoch, err) for e, err in enumerate(errors)]


def test_patience_waits_for_min_epochs_then_max_patience_epochs_without_a_new_best():
    stop = early_stopping.patience(min_epochs=3, max_patience=2)
    assert not stop(history([0.5, 0.4]))
    assert not stop(history([0.5, 0.4, 0.45]))          # 1 epoch since the best
    assert stop(history([0.5, 0.4, 0.45, 0.41]))        # 2 epochs since the best
    assert not stop(history([0.5, 0.4, 0.45, 0.3]))     # a new best
    assert not stop(history([0.1, 0.2]))                # before min_epochs, however bad
    assert stop(history([0.1, 0.2, 0.3]))
    assert early_stopping.patience(min_epochs=50, max_patience=20)(history([0.1] + [0.2] * 49))


def test_dlt_patience_grows_geometrically_with_significant_improvements():
    """patience 500 steps, 100 per epoch: DLT's iter = steps - 1; a significant improvement at
    iter 399 raises patience to 798, so the run stops at the first validation with iter >= 798."""
    stop = early_stopping.dlt(patience=500, patience_increase=2.0, improvement_threshold=0.995)
    improving = [0.5, 0.4, 0.3, 0.2]                      # iters 99, 199, 299, 399
    assert not stop(history(improving + [0.2] * 3))       # iter 699 < 798
    assert stop(history(improving + [0.2] * 4))           # iter 799 >= 798
    tiny = [0.5, 0.4, 0.3, 0.2, 0.1999]                   # not significant: 0.1999 > 0.995 * 0.2
    assert not stop(history(tiny + [0.2] * 2))            # iter 699 < 798
    assert stop(history(tiny + [0.2] * 3))
    flat = [0.5] * 6                       # never improves after the first: patience stays 500
    assert not stop(history(flat[:5])) and stop(history(flat))  # iters 499 < 500 <= 599


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ConfigError, match="validation split"):
        train.build_setup(compose("early_stopping=patience", "dataset.val_size=0"))


def test_a_stopped_run_restores_and_saves_the_best_parameters_and_resumes_to_nothing(tmp_path):
    cfg = compose("optim=sgd", "optim.lr=0.5", "model.hidden=[32]", "dataset.train_subset=512",
                  "train.epochs=40", "early_stopping=patience", "early_stopping.min_epochs=3",
                  "early_stopping.max_patience=2")
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    records = metrics(tmp_path)
    stopped = summary["early_stopping"]["stopped_at_epoch"]
    assert stopped == len(records) < 40
    best = min(records, key=lambda r: r["val_error"])
    assert stopped - best["epoch"] == 2 and summary["early_stopping"]["restored_epoch"] == best["epoch"]
    assert summary["final"]["epoch"] == best["epoch"] and summary["last"]["epoch"] == stopped
    assert_same_params(tmp_path / "params.pkl", tmp_path / "best_params.pkl")
    assert load_arrays(tmp_path / "params.pkl")  # restored parameters are what the run exports
    # resuming the stopped run does nothing more
    again = train.train_and_evaluate(cfg, str(tmp_path), train.Context(resume=True))
    assert again == json.loads((tmp_path / "summary.json").read_text())
