"""The training loop end to end on the shipped real MNIST sample (no subprocess)."""
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlrun import train
from dlrun.errors import ConfigError
from dlrun.data.splits import Split
from dlrun.runs.atomic import load_arrays

from _config import compose

PRESETS = ["radford_logreg", "radford_net", "radford_modern_net", "radford_convnet"]


@pytest.mark.parametrize("preset", [pytest.param(p, marks=[pytest.mark.slow] if p in ("radford_convnet", "radford_modern_net") else [])
                                    for p in PRESETS])
def test_radford_presets_build_and_run_one_epoch(preset, tmp_path):
    cfg = compose(f"+experiment={preset}", "train.epochs=1")
    setup = train.build_setup(cfg)
    assert not setup.train.shuffle and setup.train.drop_last and setup.train.batch_size == 128
    assert not cfg.model.use_bias and cfg.model.init == "normal" and cfg.model.init_std == 0.01
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    final = summary["final"]
    assert final["step"] == 4000 // 128  # the seed's order: full batches only, unshuffled
    assert {"train_eval_error", "test_error"} <= set(final) and "val_error" not in final
    assert final["test_error"] < 0.9  # one epoch on 3,968 digits beats chance (0.9)


@pytest.mark.parametrize("model", [pytest.param("cnn", marks=pytest.mark.slow), "mlp"])
def test_default_models_learn_with_rmsprop(model, tmp_path):
    """`dlrun model=cnn optim=rmsprop` (README) must learn, not sit at chance (it once did)."""
    cfg = compose(f"model={model}", "optim=rmsprop", "train.epochs=2", "dataset.train_subset=1500")
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    assert summary["final"]["val_error"] < 0.35  # measured 0.16 (cnn), chance is 0.9


def test_seed_hyperparameters_of_the_presets():
    conv = compose("+experiment=radford_convnet")
    assert conv.optim.name == "rmsprop" and conv.optim.lr == 0.001 and conv.optim.eps == 1e-6
    assert dict(conv.regularizer.dropout) == {"input": 0.0, "hidden": 0.5, "conv": 0.2}
    assert list(conv.model.padding) == [2, 0, 0] and conv.train.epochs == 100
    net = compose("+experiment=radford_net")
    assert net.model.activation == "sigmoid" and list(net.model.hidden) == [625]
    assert net.optim.name == "sgd" and net.optim.lr == 0.05


def test_run_writes_metrics_params_and_summary(tmp_path):
    cfg = compose("model=mlp", "model.hidden=[32]", "train.epochs=3", "dataset.train_subset=1000")
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["val_error"] < records[0]["val_error"]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    params = pickle.loads((tmp_path / "params.pkl").read_bytes())
    assert params["hidden_0"]["kernel"].shape == (784, 32) and isinstance(params["out"]["bias"], np.ndarray)
    best = pickle.loads((tmp_path / "best_params.pkl").read_bytes())
    safe = load_arrays(tmp_path / "params.pkl")  # the restricted reader takes dlrun's own files
    np.testing.assert_array_equal(safe["hidden_0"]["kernel"], params["hidden_0"]["kernel"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["best"]["val_error"] == min(r["val_error"] for r in records)
    assert on_disk["best_selected_on"] == "val_error" and set(best) == set(params)
    assert on_disk["timings"]["compile_seconds"] > 0 and on_disk["versions"]["jax"] == jax.__version__
    assert summary["final"]["epoch"] == 3


def test_same_seed_same_metrics_different_seed_different(tmp_path):
    def errors(seed, sub):
        cfg = compose("model.hidden=[32]", "train.epochs=2", "dataset.train_subset=600",
                      f"train.seed={seed}", "regularizer=[dropout]")
        train.train_and_evaluate(cfg, str(tmp_path / sub))
        return (tmp_path / sub / "metrics.jsonl").read_text()

    strip = lambda text: [{k: v for k, v in json.loads(l).items() if "second" not in k}
                          for l in text.splitlines()]
    assert strip(errors(0, "a")) == strip(errors(0, "b"))
    assert strip(errors(0, "d")) != strip(errors(1, "c"))


def test_scan_and_step_loops_compute_the_same_training():
    def params_after(loop):
        cfg = compose("model.hidden=[16]", "train.epochs=1", f"train.loop={loop}",
                      "regularizer=[dropout]")
        setup = train.build_setup(cfg)
        x = jax.random.randint(jax.random.key(0), (300, 28, 28, 1), 0, 256).astype(jnp.uint8)
        y = jax.random.randint(jax.random.key(1), (300,), 0, 10)
        split = Split(x, y, 300)
        run_epoch, _ = train.make_epoch_runner(setup, split, jax.random.key(2))
        state, acc, _ = run_epoch(train.init_state(setup, jax.random.key(3)), 1)
        return state.params, acc

    (p_scan, a_scan), (p_step, a_step) = params_after("scan"), params_after("step")
    for a, b in zip(jax.tree.leaves(p_scan), jax.tree.leaves(p_step)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(a_scan), jax.tree.leaves(a_step)):
        np.testing.assert_allclose(a, b, rtol=1e-4)


def test_epoch_order_drop_last_and_shuffle():
    key = jax.random.key(0)
    idx, w = train.epoch_order(key, 300, 128, shuffle=False, drop_last=True)
    assert idx.shape == (2, 128) and np.array_equal(np.asarray(idx).ravel(), np.arange(256))
    idx, w = train.epoch_order(key, 300, 128, shuffle=False, drop_last=False)
    assert idx.shape == (3, 128) and float(w.sum()) == 300 and float(w[2].sum()) == 300 - 256
    idx, _ = train.epoch_order(key, 300, 100, shuffle=True, drop_last=True)
    flat = np.asarray(idx).ravel()
    assert sorted(flat) == list(range(300)) and not np.array_equal(flat, np.arange(300))


def test_empty_regularizer_list_means_none():
    setup = train.build_setup(compose("regularizer=[]"))
    assert setup.reg.loss_terms == () and setup.reg.update_steps == () and setup.reg.dropout == {}


def test_loop_auto_picks_step_for_convnets_and_scan_for_dense():
    assert train.build_setup(compose("model=cnn")).loop == "step"
    assert train.build_setup(compose("model=mlp")).loop == "scan"
    assert train.build_setup(compose("model=cnn", "train.loop=scan")).loop == "scan"


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) for m in ("mlp", "cnn")])
def test_num_seeds_copies_equal_single_runs_with_those_seeds_and_lrs(model, tmp_path):
    """train.num_seeds=N (one vmapped program) writes per copy what a run with that seed and
    learning rate writes on its own: same metrics and parameters up to float rounding."""
    common = [f"model={model}", "optim=sgd", "train.epochs=2", "dataset.train_subset=640",
              "regularizer=[dropout]", "train.seed=5"]
    if model == "mlp":
        common.append("model.hidden=[32]")
    else:
        common += ["model.features=[4,8]", "model.padding=[1,0]", "model.hidden=[16]"]
    lrs = [0.05, 0.2]
    summary = train.train_and_evaluate(compose(*common, "train.num_seeds=2", f"train.lrs={lrs}"),
                                       str(tmp_path / "vmap"))
    assert [c["seed"] for c in summary["copies"]] == [5, 6] and summary["epochs"] == 2
    for seed, lr in zip((5, 6), lrs):
        alone = tmp_path / f"alone_{seed}"
        train.train_and_evaluate(compose(*common, f"train.seed={seed}", f"optim.lr={lr}"), str(alone))
        copy = tmp_path / "vmap" / f"seed_{seed}"
        got = [json.loads(l) for l in (copy / "metrics.jsonl").read_text().splitlines()]
        want = [json.loads(l) for l in (alone / "metrics.jsonl").read_text().splitlines()]
        for g, w in zip(got, want, strict=True):
            assert g["lr"] == pytest.approx(w["lr"]) and g["step"] == w["step"]
            for key in ("train_loss", "val_loss", "test_loss"):
                assert g[key] == pytest.approx(w[key], rel=1e-4), key
            for key in ("train_error", "val_error", "test_error"):
                assert abs(g[key] - w[key]) <= 0.004, key  # at most a couple of examples flip
        p_copy = pickle.loads((copy / "params.pkl").read_bytes())
        p_alone = pickle.loads((alone / "params.pkl").read_bytes())
        for a, b in zip(jax.tree.leaves(p_copy), jax.tree.leaves(p_alone), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)
        assert json.loads((copy / "summary.json").read_text())["lr"] == pytest.approx(lr)
    finals = [c["final"]["test_error"] for c in summary["copies"]]
    assert summary["final"]["test_error"] == pytest.approx(np.mean(finals))


def test_speedrun_preset_builds_with_its_recipe():
    cfg = compose("+experiment=speedrun_fashion")
    setup = train.build_setup(cfg)  # validates everything; loads no data
    assert setup.dataset.name == "fashion_mnist" and setup.train.batch_size == 256
    assert setup.train.shuffle and setup.loop == "step" and cfg.schedule.name == "cosine"
    assert cfg.model.use_bias and cfg.model.init == "glorot" and cfg.optim.lr == 0.002


@pytest.mark.parametrize("loop", ["scan", "step"])
def test_nan_policy_raise_stops_naming_epoch_and_step(tmp_path, loop):
    """lr 1e30: the first step overflows the weights, the second step's loss is not finite."""
    cfg = compose("model.hidden=[32]", "optim=sgd", "optim.lr=1e30", "train.epochs=3",
                  "dataset.train_subset=1280", f"train.loop={loop}", "train.shuffle=false")
    with pytest.raises(train.TrainingDiverged, match=r"epoch 1, step 2: non-finite") as err:
        train.train_and_evaluate(cfg, str(tmp_path))
    assert "train.nan_policy=skip" in str(err.value) and "\n" not in str(err.value)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and records[0]["nonfinite_steps"] == 9
    assert not (tmp_path / "params.pkl").exists()  # no final parameters of a failed run


def test_nan_policy_raise_never_checkpoints_the_diverged_epoch(tmp_path):
    """Under raise the step applies a non-finite update (the epoch is dropped): a checkpoint
    after every step (loop=step) keeps step 1, the last finite one, and none after it."""
    cfg = compose("model.hidden=[32]", "optim=sgd", "optim.lr=1e30", "train.epochs=2",
                  "dataset.train_subset=1280", "train.loop=step", "train.shuffle=false",
                  "checkpoint.every_minutes=1e-9")
    with pytest.raises(train.TrainingDiverged, match=r"step 2: non-finite") as err:
        train.train_and_evaluate(cfg, str(tmp_path))
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [1]
    assert str(err.value).endswith("The last good checkpoint is " + str(tmp_path / "checkpoints" / "1"))


def test_nan_policy_skip_goes_on_and_counts(tmp_path):
    cfg = compose("model.hidden=[32]", "optim=sgd", "optim.lr=1e30", "train.epochs=2",
                  "dataset.train_subset=1280", "train.nan_policy=skip")
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["nonfinite_steps"] > 0 for r in records) and summary["epochs"] == 2
    params = load_arrays(tmp_path / "params.pkl")
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(params))  # bad steps never applied


def test_node_errors_name_the_key_path_once():
    """A node's schema (a dataclass, dlrun.config.registry.build_node) prefixes its key path."""
    with pytest.raises(ConfigError) as bad:
        train.build_setup(compose("train.num_seeds=3", "train.lrs=[0.1,0.01]"))
    assert str(bad.value).startswith("train.lrs gives 2 learning rates for train.num_seeds=3")
    with pytest.raises(ConfigError, match=r"^checkpoint\.keep must be >= 1 \(got 0\)$"):
        train.build_setup(compose("checkpoint.keep=0"))
