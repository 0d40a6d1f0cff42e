"""Modern recipes (issue 17): BatchNorm and the vgg/resnet family, weight averaging, test-time
augmentation, label smoothing, top-k, exact flips and crops, the new schedules and optimizers,
per-group settings, gradient clipping and mixed precision. In process, on the MNIST sample."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _config import compose

from dlrun import train
from dlrun.data import splits, views
from dlrun.errors import ConfigError
from dlrun.models import objectives
from dlrun.optim import groups
from dlrun.train.state import AVERAGE, loaded_variables, model_variables, saved_params
from dlrun.train.trainer import Context

SMALL = ("model=vgg", "model.widths=[8,16]", "model.depths=[1,1]", "model.stem=0",
         "dataset.train_subset=600", "train.batch_size=100", "train.loop=step")


def trained(*overrides: str, epochs: int = 1):
    """(setup, state, loaded splits) after `epochs` epochs of the SMALL net."""
    setup = train.build_setup(compose(*SMALL, *overrides, f"train.epochs={epochs}"))
    loaded = splits.load_splits(setup.dataset, 1000)
    init_key, train_key = train.run_keys(setup, jax.random.key(0))
    run_epoch, _ = train.make_epoch_runner(setup, loaded["train"], train_key)
    state = train.init_states(setup, init_key)
    for epoch in range(1, epochs + 1):
        state = run_epoch(state, epoch)[0]
    return setup, state, loaded


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_batchnorm_statistics_change_in_training_and_not_in_evaluation():
    setup, state, loaded = trained()
    blank = train.init_state(setup, jax.random.key(0))
    stats = state.extra["batch_stats"]
    assert not leaves_equal(stats, blank.extra["batch_stats"])  # the step updated them
    before = jax.tree.map(np.array, stats)
    ev = train.setup_evaluator(setup)(model_variables(state), loaded["test"])
    assert leaves_equal(before, state.extra["batch_stats"]) and ev["error"] < 0.9
    x = splits.pixels(loaded["test"].x[:50])
    variables = model_variables(state)
    eval_out = setup.model.apply(variables, x, train=False)  # running averages
    train_out = setup.model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    assert not np.allclose(eval_out, train_out)  # batch statistics differ from the running ones


def test_params_pkl_of_a_batchnorm_net_holds_its_statistics():
    setup, state, _ = trained()
    saved = saved_params(state)
    assert set(saved) == {"params", "batch_stats"}
    blank = train.init_state(setup, jax.random.key(1))
    assert leaves_equal(loaded_variables(blank, saved), model_variables(state))


@pytest.mark.parametrize("kind", ["ema", "lookahead"])
def test_averaged_weights_differ_from_the_trained_ones_and_are_what_evaluation_uses(kind):
    extra = ["averaging=ema", "averaging.decay=0.9"] if kind == "ema" else \
        ["averaging=lookahead", "averaging.every=4"]
    setup, state, loaded = trained(*extra)
    average = state.extra[AVERAGE]
    assert model_variables(state)["params"] is average
    if kind == "ema":  # 6 steps: never equal to the raw weights
        assert not leaves_equal(average, state.params)
    else:  # 6 steps, synchronised at step 4: the fast weights moved on after it
        assert not leaves_equal(average, state.params)
    evaluate = train.setup_evaluator(setup)
    raw = {**model_variables(state), "params": state.params}
    assert evaluate(model_variables(state), loaded["test"]) != evaluate(raw, loaded["test"])
    assert leaves_equal(saved_params(state)["params"], average)


def test_lookahead_restarts_the_fast_weights_from_the_slow_ones():
    from dlrun.optim.averaging import lookahead
    la = lookahead(every=2, alpha=0.5)
    slow, fast = {"w": jnp.zeros(3)}, {"w": jnp.ones(3) * 4}
    s1, f1 = la.update(slow, fast, jnp.int32(1))  # not a sync step
    assert leaves_equal(s1, slow) and leaves_equal(f1, fast)
    s2, f2 = la.update(slow, fast, jnp.int32(2))
    assert np.allclose(s2["w"], 2.0) and leaves_equal(s2, f2)


def test_tta_averages_the_logits_over_the_views():
    setup, state, loaded = trained()
    variables, model = model_variables(state), setup.model
    x = splits.pixels(loaded["test"].x[:20])
    apply = lambda v: model.apply(variables, v, train=False)  # noqa: E731
    flip = train.eval_output(model, variables, x, "flip")
    assert np.allclose(flip, (apply(x) + apply(x[:, :, ::-1])) / 2, atol=1e-5)
    six = [apply(v) for v in (x, x[:, :, ::-1])]
    six += [apply(views.shift(v, d, d)) for v in (x, x[:, :, ::-1]) for d in (-1, 1)]
    assert np.allclose(train.eval_output(model, variables, x, "flip_shift"), sum(six) / 6, atol=1e-5)
    plain = train.setup_evaluator(setup)(variables, loaded["test"])
    setup_tta = train.build_setup(compose(*SMALL, "train.tta=flip"))
    assert train.setup_evaluator(setup_tta)(variables, loaded["test"])["loss"] != plain["loss"]


def test_shift_is_a_reflect_padded_translation():
    x = jnp.arange(2 * 5 * 5).reshape(2, 5, 5, 1).astype(jnp.float32)
    s = views.shift(x, 1, 2)
    assert np.array_equal(s[:, 1:, 2:], x[:, :-1, :-2])  # moved down 1, right 2
    assert np.array_equal(s[:, 0, 2:], x[:, 1, :-2])  # the new top row reflects row 1


def test_random_crops_are_whole_pixel_translations_within_the_pad():
    x = jax.random.uniform(jax.random.key(0), (16, 9, 9, 1))
    crops = views.random_crop(x, jax.random.key(1), 2)
    for img, crop in zip(x, crops):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(views.shift(img[None], dy, dx)[0], crop)]
        assert len(matches) == 1
    assert not np.array_equal(crops, x)


def test_alternating_flips_flip_each_example_every_other_epoch():
    rows = jnp.arange(64)
    key = jax.random.key(3)
    e0 = views.flip_mask(("flip_alternate",), key, rows, 64, jnp.int32(0))
    e1 = views.flip_mask(("flip_alternate",), key, rows, 64, jnp.int32(1))
    e2 = views.flip_mask(("flip_alternate",), key, rows[::-1], 64, jnp.int32(2))
    assert np.array_equal(e0, ~e1) and np.array_equal(e2, e0[::-1]) and 10 < int(e0.sum()) < 54
    x = jnp.arange(4 * 3 * 3).reshape(4, 3, 3, 1).astype(jnp.float32)
    out = views.training_views(x, ("flip_alternate",), 0, key, key, jnp.arange(4), 4, jnp.int32(1))
    mask = views.flip_mask(("flip_alternate",), key, jnp.arange(4), 4, jnp.int32(1))
    for i in range(4):
        assert np.array_equal(out[i], x[i, :, ::-1] if mask[i] else x[i])


def test_label_smoothing_and_top_k():
    logits = jnp.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    y = jnp.array([1, 0])
    obj = objectives.of(train.build_setup(compose(*SMALL)).model, label_smoothing=0.2, top_k=2)
    assert obj.metrics == ("loss", "error", "top2_error")
    loss, metrics = obj.per_example(None, logits, y)
    soft = 0.8 * jax.nn.one_hot(y, 4) + 0.2 / 4
    assert np.allclose(loss, -(soft * jax.nn.log_softmax(logits)).sum(-1))
    assert np.array_equal(metrics[1], [1.0, 1.0]) and np.array_equal(metrics[2], [0.0, 1.0])
    with pytest.raises(ConfigError, match="top_k must be smaller"):
        train.build_setup(compose(*SMALL, "train.top_k=10"))


def test_linear_and_onecycle_schedules():
    lin = train.build_setup(compose(*SMALL, "schedule=linear", "schedule.warmup_epochs=1",
                                    "train.epochs=3", "optim.lr=0.6"))
    steps = lin.steps_per_epoch  # 6
    assert lin.lr_schedule(0) == 0.0 and np.isclose(lin.lr_schedule(steps), 0.6)
    assert np.isclose(lin.lr_schedule(2 * steps), 0.3) and np.isclose(lin.lr_schedule(3 * steps), 0.0)
    one = train.build_setup(compose(*SMALL, "schedule=onecycle", "train.epochs=4", "optim.lr=0.5"))
    total = 4 * one.steps_per_epoch
    assert np.isclose(one.lr_schedule(0), 0.5 / 25) and np.isclose(one.lr_schedule(total // 4), 0.5)
    assert one.lr_schedule(total) < 1e-4


def test_param_groups_label_norm_bias_and_kernels_and_scale_their_updates():
    setup = train.build_setup(compose(*SMALL))
    params = train.init_state(setup, jax.random.key(0)).params
    labels = groups.labels(params)
    assert labels["stage0_block0_norm0"] == {"scale": "norm", "bias": "norm"}
    assert labels["out"] == {"kernel": "other", "bias": "bias"}
    plain = train.build_setup(compose(*SMALL, "optim=sgd", "optim.lr=0.1"))
    scaled = train.build_setup(compose(*SMALL, "optim=sgd", "optim.lr=0.1", "param_groups.norm.lr_scale=3",
                                       "param_groups.bias.lr_scale=0.5"))
    grads = jax.tree.map(jnp.ones_like, params)
    u0 = plain.tx.update(grads, plain.tx.init(params), params)[0]
    u1 = scaled.tx.update(grads, scaled.tx.init(params), params)[0]
    assert np.allclose(u1["stage0_block0_norm0"]["scale"], 3 * u0["stage0_block0_norm0"]["scale"])
    assert np.allclose(u1["out"]["bias"], 0.5 * u0["out"]["bias"])
    assert np.allclose(u1["out"]["kernel"], u0["out"]["kernel"])
    with pytest.raises(ConfigError, match="no group"):
        train.build_setup(compose(*SMALL, "+param_groups.conv={lr_scale: 2}"))


def test_clip_norm_bounds_the_gradient_before_the_optimizer():
    setup = train.build_setup(compose(*SMALL, "optim=sgd", "optim.lr=1.0", "train.clip_norm=0.5"))
    params = {"a": jnp.zeros(4)}
    updates = setup.tx.update({"a": jnp.full(4, 3.0)}, setup.tx.init(params), params)[0]
    assert np.isclose(optax.tree.norm(updates), 0.5)


@pytest.mark.slow  # 4 x 2 epochs: the slow set (make test-all, .ci/run)
@pytest.mark.parametrize("name,lr", [("adamw", 0.01), ("lamb", 0.01), ("muon", 0.02), ("nesterov", 0.05)])
def test_modern_optimizers_train_a_batchnorm_net(name, lr):
    reg = "regularizer=[weight_decay]" if name == "nesterov" else "regularizer=[none]"
    setup, state, loaded = trained(f"optim={name}", f"optim.lr={lr}", reg, "model.bn_momentum=0.5", epochs=2)
    evaluate = train.setup_evaluator(setup)
    blank = model_variables(train.init_state(setup, jax.random.key(0)))
    assert evaluate(model_variables(state), loaded["test"])["error"] < evaluate(blank, loaded["test"])["error"] - 0.1


def test_bfloat16_mixed_precision_keeps_float32_weights_and_tracks_float32():
    _, s32, loaded = trained()
    setup, s16, _ = trained("train.precision=bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(s16.params))
    ev16 = train.setup_evaluator(setup)(model_variables(s16), loaded["test"])
    ev32 = train.setup_evaluator(setup)(model_variables(s32), loaded["test"])
    assert not leaves_equal(s16.params, s32.params) and abs(ev16["error"] - ev32["error"]) < 0.1


def test_resnet_builds_for_colour_images_and_refuses_too_many_stages():
    from dlrun.models import resnet
    model = resnet(widths=[8, 16], depths=[2, 1], stem=8, num_classes=7, dropout={}, input_shape=(20, 24, 3))
    v = model.init(jax.random.key(0), jnp.zeros((2, 20, 24, 3)))
    assert model.apply(v, jnp.zeros((2, 20, 24, 3))).shape == (2, 7) and "stage1_block0_proj" in v["params"]
    with pytest.raises(ConfigError, match="to nothing"):
        resnet(widths=[8] * 6, depths=[1] * 6, num_classes=7, dropout={}, input_shape=(20, 24, 3))


def test_a_batchnorm_ema_run_resumes_bit_for_bit(tmp_path):
    common = (*SMALL, "averaging=ema", "dataset.augment=[flip_alternate,crop]", "train.label_smoothing=0.1")
    train.train_and_evaluate(compose(*common, "train.epochs=2"), str(tmp_path / "whole"))
    train.train_and_evaluate(compose(*common, "train.epochs=1"), str(tmp_path / "half"))
    train.train_and_evaluate(compose(*common, "train.epochs=2"), str(tmp_path / "half"), Context(resume=True))
    records = lambda d: [{k: v for k, v in json.loads(line).items() if "second" not in k}  # noqa: E731
                         for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert records("half") == records("whole") and len(records("whole")) == 2
    assert (tmp_path / "half" / "params.pkl").read_bytes() == (tmp_path / "whole" / "params.pkl").read_bytes()


@pytest.mark.slow  # three trainings: the slow set
def test_batchnorm_copies_equal_single_runs(tmp_path):
    """train.num_seeds=2 with BatchNorm: each copy's statistics are its own (vmap), so copy
    seed 5 trains as a single run with seed 5 does (to float rounding)."""
    train.train_and_evaluate(compose(*SMALL, "train.epochs=2", "train.num_seeds=2", "train.seed=4"),
                             str(tmp_path / "two"))
    single = train.train_and_evaluate(compose(*SMALL, "train.epochs=2", "train.seed=5"), str(tmp_path / "one"))
    copy = json.loads((tmp_path / "two" / "seed_5" / "summary.json").read_text())
    for key in ("train_loss", "test_loss", "test_error"):
        assert np.isclose(copy["final"][key], single["final"][key], atol=2e-3), key


def test_speedrun_fashion_bn_preset_builds_with_its_recipe():
    cfg = compose("+experiment=speedrun_fashion_bn")
    setup = train.build_setup(cfg)  # validates everything; loads no data
    assert setup.dataset.name == "fashion_mnist" and setup.model.norm == "batch"
    assert setup.dataset.augment == ("flip_alternate",) and setup.train.tta == "flip"
    assert setup.train.label_smoothing == 0.1 and cfg.schedule.name == "linear"


def test_averaging_is_refused_where_there_is_no_single_training_run():
    for model in ("model=dbn", "model=knn"):
        with pytest.raises(ConfigError, match="averaging=ema"):
            train.build_setup(compose(model, "averaging=ema"))


def test_space_to_depth_keeps_every_pixel():
    from dlrun.models.modern import space_to_depth
    x = jnp.arange(2 * 5 * 6 * 3, dtype=jnp.float32).reshape(2, 5, 6, 3)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 3, 3, 12)
    assert np.array_equal(y[1, 0, 1].reshape(2, 2, 3), x[1, 0:2, 2:4])  # one patch, row by row
    assert np.array_equal(np.sort(y[:, :2].ravel()), np.sort(x[:, :4].ravel()))  # nothing lost
    setup = train.build_setup(compose(*SMALL, "model.patch=2"))
    v = setup.model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert v["params"]["stage0_block0_conv0"]["kernel"].shape == (3, 3, 4, 8)
