"""The seed documents' methods (issue 5) as a user runs them: each new model, optimizer and
regularizer through the CLI on the shipped sample, plus what each model must compute."""
import json

import jax
import numpy as np
import pytest

from dlrun.errors import ConfigError
from dlrun import train
from conftest import describe, run_dirs
from _config import compose

pytestmark = pytest.mark.slow  # CLI subprocesses: `pytest -m slow`, run by .ci/run

# Every new option appears in at least one command; each must learn (chance is 0.9).
COMMANDS = {
    "lenet-sign_agreement-dropconnect-max_norm": (
        ["model=lenet", "optim=sign_agreement", "optim.lr=0.1", "train.batch_size=64",
         "regularizer=[dropconnect,max_norm]",
         "train.epochs=2", "dataset.train_subset=1024"], 0.5),
    "lstm-adam-slides_l2": (
        ["model=lstm", "optim.lr=0.005", "regularizer=[l2]", "regularizer.l2.reduce=mean",
         "regularizer.l2.coef=0.01", "train.epochs=3"], 0.6),
    "mlp-dlt_early_stopping": (
        ["model.hidden=[64]", "optim=sgd", "optim.lr=0.1", "early_stopping=dlt",
         "early_stopping.patience=60", "early_stopping.improvement_threshold=0.9",
         "train.epochs=60", "dataset.train_subset=1024"], 0.3),
    "logreg-lbfgs": (["model=logreg", "optim=lbfgs", "train.epochs=20"], 0.15),  # measured 0.098
    "mlp-cg-l2": (["model.hidden=[64]", "optim=cg", "regularizer=[l2]", "train.epochs=20"], 0.2),
    "rnn-rprop-fullbatch-slides_l1": (
        ["model=rnn", "optim=rprop", "train.batch_size=3500", "train.epochs=15",
         "regularizer=[l1]", "regularizer.l1.reduce=mean", "regularizer.l1.coef=0.001"], 0.75),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_new_options_run_from_the_command_line_and_learn(name, dlrun, tmp_path):
    args, ceiling = COMMANDS[name]
    proc = dlrun(*args, timeout=300)
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_error"] < ceiling, records[-1]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    if any(a.startswith("early_stopping=") for a in args):  # it stops, and says so
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["early_stopping"]["stopped_at_epoch"] == len(records) < 60
        assert "early stopping (dlt) after epoch" in proc.stdout


def test_lenet_is_dlts_architecture():
    setup = train.build_setup(compose("model=lenet"))
    params = train.init_state(setup, jax.random.key(0)).params
    shapes = {k: {n: v.shape for n, v in layer.items()} for k, layer in params.items()}
    assert shapes == {"conv_0": {"kernel": (5, 5, 1, 20), "bias": (20,)},
                      "conv_1": {"kernel": (5, 5, 20, 50), "bias": (50,)},
                      "hidden_0": {"kernel": (800, 500), "bias": (500,)},  # 50 x 4 x 4
                      "out": {"kernel": (500, 10), "bias": (10,)}}
    assert setup.model.activation == "tanh" and setup.loop == "step"


@pytest.mark.parametrize("model", ["rnn", "lstm"])
def test_recurrent_models_read_the_rows_in_order(model):
    setup = train.build_setup(compose(f"model={model}"))
    params = train.init_state(setup, jax.random.key(0)).params
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    logits = setup.model.apply({"params": params}, x)
    assert logits.shape == (2, 10)
    flipped = setup.model.apply({"params": params}, x[:, ::-1])  # same rows, other order
    assert not np.allclose(logits, flipped, atol=1e-4)
    first_row = setup.model.apply({"params": params}, x.at[:, 0].set(0.0))
    assert not np.allclose(logits, first_row, atol=1e-6)  # the state carries the first row
    n = train.count_params(params)
    assert n == ({"rnn": 28 * 128 + 128 * 128 + 128, "lstm": 4 * (28 * 128 + 128 * 128 + 128)}[model]
                 + 128 * 10 + 10)


def test_train_lrs_is_refused_for_rprop():
    with pytest.raises(ConfigError, match="rprop"):
        train.build_setup(compose("optim=rprop", "train.num_seeds=2", "train.lrs=[0.1,0.01]"))


def test_batch_size_zero_is_full_batch_and_line_search_methods_take_one_step_per_epoch():
    for overrides in (["train.batch_size=0"], ["optim=lbfgs"], ["optim=cg", "train.batch_size=64"]):
        setup = train.build_setup(compose("model=logreg", *overrides))
        assert setup.train.batch_size == 3500 and setup.steps_per_epoch == 1, overrides
    assert train.build_setup(compose("optim=lbfgs")).full_batch
    assert not train.build_setup(compose("train.batch_size=0")).full_batch
