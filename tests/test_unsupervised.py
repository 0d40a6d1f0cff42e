"""The models that are not plain classifiers (issue 5): autoencoders, RBMs, stacks pretrained
layer by layer (sda, dbn) and nearest neighbours; what each computes, and each through the CLI."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlrun import models, train
from dlrun.data import splits as data_splits
from dlrun.runs.atomic import load_arrays
from dlrun.config.registry import build
from conftest import describe, files_under, run_dirs
from _config import compose
from test_plots import png_shape

X = jnp.asarray(np.random.RandomState(0).rand(4, 28, 28, 1), jnp.float32)


def make(name, **kw):
    return build("model", models.MODELS, {"name": name, **kw}, num_classes=10, dropout={},
                 input_shape=(28, 28, 1))


def records_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("tied", [True, False])
def test_autoencoder_layout_and_corruption_only_while_training(tied):
    model = make("autoencoder", hidden=50, tied=tied, corruption=0.5)
    variables = model.init({"params": jax.random.key(0)}, X)
    shapes = jax.tree.map(np.shape, variables["params"])
    assert shapes["hidden_0"] == {"kernel": (784, 50), "bias": (50,)}
    assert shapes["visible_0"] == ({"bias": (784,)} if tied else {"kernel": (50, 784), "bias": (784,)})
    clean = model.apply(variables, X)
    assert clean["logits"].shape == (4, 784) and np.allclose(clean["target"], X.reshape(4, 784))
    assert np.array_equal(model.apply(variables, X)["logits"], clean["logits"])  # eval: no noise
    noisy = model.apply(variables, X, train=True, rngs={"sample": jax.random.key(1)})
    assert not np.allclose(noisy["logits"], clean["logits"])
    assert np.allclose(noisy["target"], clean["target"])  # it reconstructs the clean input


def test_frozen_layers_feed_the_layer_being_trained():
    """Layer 2 of a stack sees sigmoid(x W0 + b0) from the 'frozen' collection, not x."""
    model = make("autoencoder", hidden=8, below=[16])
    variables = model.init({"params": jax.random.key(0)}, X)
    assert set(variables["frozen"]) == {"hidden_0"} and set(variables["params"]) == {"hidden_1", "visible_1"}
    w0 = variables["frozen"]["hidden_0"]
    expected = jax.nn.sigmoid(X.reshape(4, 784) @ w0["kernel"] + w0["bias"])
    np.testing.assert_allclose(model.apply(variables, X)["target"], expected, rtol=1e-6)


def rbm_setup(*overrides):
    return train.build_setup(compose("model=rbm", "model.hidden=64", "optim=sgd", "optim.lr=0.1",
                                     "train.batch_size=20", "dataset.train_subset=1000", *overrides))


@pytest.mark.parametrize("persistent", [pytest.param(False, marks=pytest.mark.slow), True])
def test_contrastive_divergence_lowers_reconstruction_error(persistent):
    """CD-1 and PCD-5 (20 chains), 2 epochs on 1,000 sample digits: the validation
    reconstruction error falls to well under half of the untrained RBM's (measured: CD-1
    0.110 -> 0.032, PCD-5 0.110 -> 0.037 mean squared error per pixel), and PCD's persistent
    chains move."""
    extra = ["model.persistent=true", "model.k=5", "model.chains=20"] if persistent else []
    setup = rbm_setup(*extra)
    splits = data_splits.load_splits(setup.dataset, 1000)
    state = train.init_state(setup, jax.random.key(0))
    evaluate = train.make_evaluator(setup.model, 1000)
    before = evaluate(train.model_variables(state), splits["val"])
    run_epoch, _ = train.make_epoch_runner(setup, splits["train"], jax.random.key(1))
    chains0 = np.asarray(state.extra["chains"]["hidden"]) if persistent else None
    for epoch in (1, 2):
        state, _, _ = run_epoch(state, epoch)
    after = evaluate(train.model_variables(state), splits["val"])
    assert after["mse"] < 0.5 * before["mse"], (before, after)
    assert after["loss"] < before["loss"] and after["pseudo_ll"] > before["pseudo_ll"]
    if persistent:
        chains = np.asarray(state.extra["chains"]["hidden"])
        assert chains.shape == (20, 64) and set(np.unique(chains)) <= {0.0, 1.0}
        assert not np.array_equal(chains, chains0)


def test_knn_matches_brute_force_and_the_seed_similarity():
    r = np.random.RandomState(0)
    train_x, queries = r.rand(200, 784).astype(np.float32), r.rand(30, 784).astype(np.float32)
    train_y = r.randint(0, 10, 200).astype(np.int32)
    dist = ((queries[:, None, :] - train_x[None]) ** 2).sum(-1)
    assert np.array_equal(make("knn").predict(train_x, train_y, queries), train_y[dist.argmin(1)])
    nearest3 = np.argsort(dist, 1)[:, :3]
    votes = [np.bincount(train_y[row], minlength=10) for row in nearest3]
    expected = [v.argmax() if v.max() > 1 else train_y[row[0]] for v, row in zip(votes, nearest3)]
    assert np.array_equal(make("knn", k=3).predict(train_x, train_y, queries), expected)
    ink = np.abs(queries.sum(1)[:, None] - train_x.sum(1)[None])  # the seed's 1/sqrt(sum(a-b)**2)
    assert np.array_equal(make("knn", metric="seed").predict(train_x, train_y, queries),
                          train_y[ink.argmin(1)])


# ---- through the command line -----------------------------------------------------------------
def test_denoising_autoencoder_reports_reconstruction_costs(dlrun):
    proc = dlrun("model=autoencoder", "model.hidden=100", "model.corruption=0.3", "optim=sgd",
                 "optim.lr=0.1", "train.batch_size=20", "train.epochs=2")
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    records = records_of(run_dir)
    assert {"train_loss", "train_mse", "val_loss", "val_mse", "test_loss", "test_mse"} <= set(records[0])
    assert not any(k.endswith("_error") for k in records[0])  # unsupervised: no error rates
    assert records[1]["val_loss"] < records[0]["val_loss"] < 120  # measured 84.6, 81.5
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_selected_on"] == "val_loss"
    assert "val_mse" in proc.stdout and "done: final test_loss" in proc.stdout
    assert png_shape(run_dir / "reconstructions.png") == (2 * 29 * 2 + 2, 10 * 29 * 2 + 2)
    assert png_shape(run_dir / "filters.png")[0] > 500 and not (run_dir / "confusion_matrix.csv").exists()


def test_rbm_pcd_reports_pseudo_likelihood(dlrun):
    proc = dlrun("model=rbm", "model.hidden=100", "model.persistent=true", "model.k=3",
                 "model.chains=20", "optim=sgd", "optim.lr=0.1", "train.batch_size=20",
                 "train.epochs=2", "dataset.train_subset=1000")
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    run_dir = run_dirs(proc.stdout)[0]
    records = records_of(run_dir)
    assert {"train_pseudo_ll", "val_pseudo_ll", "test_pseudo_ll", "val_mse"} <= set(records[0])
    assert png_shape(run_dir / "rbm_samples.png") == (10 * 29 * 2 + 2, 10 * 29 * 2 + 2)
    assert records[1]["val_loss"] < records[0]["val_loss"]
    assert all(r["val_pseudo_ll"] < 0 for r in records)  # a log-probability


@pytest.mark.parametrize("name,extra", [
    ("sda", ["model.corruption=[0.1,0.2]"]),
    ("dbn", ["model.k=1", "model.pretrain_lr=0.05", "model.pretrain_batch_size=20"]),
])
def test_stacks_pretrain_each_layer_then_fine_tune_from_it(name, extra, dlrun):
    """Two pretraining phases, each a run of its own in pretrain_<i>/, then fine-tuning. With a
    negligible fine-tuning rate the final hidden layers are the pretrained ones: fine-tuning
    starts from them (and not from a fresh initialisation)."""
    proc = dlrun(f"model={name}", "model.hidden=[64,32]", "model.pretrain_epochs=2", *extra,
                 "optim=sgd", "optim.lr=1e-9", "train.epochs=1", "dataset.train_subset=1000")
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    assert "pretraining layer 2 of 2" in proc.stdout and "fine-tuning the pretrained stack" in proc.stdout
    final = load_arrays(run_dir / "params.pkl")
    assert set(final) == {"hidden_0", "hidden_1", "out"}
    for i in (0, 1):
        phase = run_dir / f"pretrain_{i}"
        assert [r["epoch"] for r in records_of(phase)] == [1, 2]
        assert records_of(phase)[1]["val_loss"] < records_of(phase)[0]["val_loss"]
        layer = load_arrays(phase / "params.pkl")[f"hidden_{i}"]
        np.testing.assert_allclose(final[f"hidden_{i}"]["kernel"], layer["kernel"], atol=1e-6)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [p["dir"] for p in summary["pretraining"]] == ["pretrain_0", "pretrain_1"]


def test_sda_fine_tuning_learns(dlrun):
    proc = dlrun("model=sda", "model.hidden=[200,100]", "model.corruption=[0.1,0.2]",
                 "model.pretrain_epochs=2", "optim=sgd", "optim.lr=0.1", "train.epochs=5")
    assert proc.returncode == 0, describe(proc)
    records = records_of(run_dirs(proc.stdout)[0])
    assert records[-1]["val_error"] < 0.25, records[-1]  # measured 0.164; chance 0.9


@pytest.mark.parametrize("metric,ceiling,floor", [("l2", 0.12, 0.0), ("seed", 1.0, 0.6)])
def test_knn_from_the_command_line(metric, ceiling, floor, dlrun):
    """L2 1-NN on the 3,500 shipped training digits: 6.8 % test error (measured); the seed's
    ink-only similarity: 84 % (it compares total ink, not shapes)."""
    proc = dlrun("model=knn", f"model.metric={metric}")
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    (record,) = records_of(run_dir)
    assert floor <= record["test_error"] < ceiling, record
    assert png_shape(run_dir / "confusion_matrix.png") and png_shape(run_dir / "test_images.png")
    memory = load_arrays(run_dir / "params.pkl")
    assert memory["train_x"].shape == (3500, 28, 28, 1) and memory["train_y"].shape == (3500,)


@pytest.mark.parametrize("args,fragment", [
    (["optim=lbfgs", "regularizer=[weight_decay]"], "use regularizer=l2 or l1"),
    (["model=rbm", "optim=cg"], "use optim=sgd"),
    (["model=autoencoder", "regularizer=[dropout]"], "corrupt their input themselves"),
    (["model=sda", "model.corruption=[0.1]"], "corruption needs one level"),
    (["model=sda", "train.num_seeds=2"], "pretrains layer by layer"),
    (["model=knn", "model.metric=cosine"], "metric must be l2 or seed"),
    (["model=knn", "early_stopping=patience"], "has no training"),
])
def test_bad_combinations_are_refused_in_one_line(args, fragment, dlrun, tmp_path):
    proc = dlrun(*args)
    assert proc.returncode == 2 and fragment in proc.stderr, describe(proc)
    assert len(proc.stderr.strip().splitlines()) == 1 and files_under(tmp_path / "outputs") == []
