"""Each regularizer does what it says, where it says (loss term, optax step, model argument)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlrun import train
from dlrun.optim import regularizers
from dlrun.errors import ConfigError

from _config import compose

PARAMS = {"hidden_0": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]]), "bias": jnp.array([4.0, -4.0])},
          "out": {"kernel": jnp.array([[-1.0], [2.0]])}}


def reg(*names, **node):
    return regularizers.build_all({n: node.get(n, {}) for n in names})


def test_l2_term_equals_its_formula():
    r = reg("l2", l2={"coef": 0.01})
    expected = 0.01 * (1 + 4 + 9 + 0.25 + 1 + 4)  # kernels only
    assert float(r.penalty(PARAMS)) == pytest.approx(expected)
    with_bias = reg("l2", l2={"coef": 0.01, "include_bias": True})
    assert float(with_bias.penalty(PARAMS)) == pytest.approx(expected + 0.01 * 32)


def test_l1_term_equals_its_formula():
    assert float(reg("l1", l1={"coef": 0.1}).penalty(PARAMS)) == pytest.approx(0.1 * 9.5)


def test_combined_terms_add_and_none_is_zero():
    both = reg("l1", "l2", l1={"coef": 0.1}, l2={"coef": 0.01})
    assert float(both.penalty(PARAMS)) == pytest.approx(0.95 + 0.01 * 19.25)
    assert float(reg("none").penalty(PARAMS)) == 0.0


def test_weight_decay_shrinks_weights_not_biases():
    r = reg("weight_decay", weight_decay={"rate": 0.1})
    lr = optax.constant_schedule(0.5)
    tx = optax.chain(optax.sgd(lr), *(s(lr) for s in r.update_steps))
    state = tx.init(PARAMS)
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero, state, PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    np.testing.assert_allclose(new["out"]["kernel"], PARAMS["out"]["kernel"] * (1 - 0.5 * 0.1))
    np.testing.assert_allclose(new["hidden_0"]["bias"], PARAMS["hidden_0"]["bias"])


def test_weight_decay_is_a_step_of_the_training_chain():
    """With weight_decay selected, the training step's update shrinks the weights further."""
    def norm_after_steps(*overrides):
        setup = train.build_setup(compose("model=logreg", "optim=sgd", "model.init=normal",
                                          "train.batch_size=8", *overrides))
        state = train.init_state(setup, jax.random.key(0))
        step = jax.jit(train.make_train_step(setup))
        x, y = jnp.zeros((8, 28, 28, 1)), jnp.zeros(8, jnp.int32)  # zero input: no kernel gradient
        state, _ = step(state, train.epoch_acc(setup), x, y, jnp.arange(8), jnp.ones(8), jax.random.key(1))
        return float(jnp.linalg.norm(state.params["out"]["kernel"]))

    plain = norm_after_steps()
    decayed = norm_after_steps("regularizer=[weight_decay]", "regularizer.weight_decay.rate=0.5")
    assert decayed == pytest.approx(plain * (1 - 0.05 * 0.5), rel=1e-5)


def test_dropout_rates_reach_the_model_and_are_off_at_evaluation():
    setup = train.build_setup(compose("model=mlp", "regularizer=[dropout,l2]"))
    assert setup.model.dropout_input == 0.2 and setup.model.dropout_hidden == 0.5
    assert len(setup.reg.loss_terms) == 1
    params = train.init_state(setup, jax.random.key(0)).params
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    a = setup.model.apply({"params": params}, x, train=False)
    b = setup.model.apply({"params": params}, x, train=False)
    c = setup.model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("node,fragment", [
    ({"dropout": {"input": 1.0}}, "regularizer.dropout.input"),
    ({"dropout": {"hidden": -0.1}}, "hidden"),
    ({"l2": {"coef": -1.0}}, "coef"),
    ({"l2": {"coeff": 1.0}}, "regularizer.l2.coeff is not a setting"),
    ({"bogus": {}}, "unknown regularizer 'bogus'"),
])
def test_bad_regularizer_settings(node, fragment):
    with pytest.raises(ConfigError, match=fragment):
        regularizers.build_all(node)


def test_the_slides_mean_forms_of_l1_and_l2():
    """cost += 0.01 * sum over tensors of mean(|p|) (L1) and mean(p^2) (L2), as the slides write."""
    l1 = reg("l1", l1={"coef": 0.01, "reduce": "mean", "include_bias": True})
    assert float(l1.penalty(PARAMS)) == pytest.approx(0.01 * (6.5 / 4 + 8 / 2 + 3 / 2))
    l2 = reg("l2", l2={"coef": 0.01, "reduce": "mean"})
    assert float(l2.penalty(PARAMS)) == pytest.approx(0.01 * (14.25 / 4 + 5 / 2))


def test_max_norm_caps_each_units_incoming_weights_after_the_update():
    tx = optax.chain(optax.sgd(1.0), *(s(optax.constant_schedule(1.0))
                                       for s in reg("max_norm", max_norm={"max": 2.0}).update_steps))
    params = {"kernel": jnp.array([[3.0, 0.1], [4.0, 0.1]]), "bias": jnp.array([10.0, 10.0])}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"][:, 0], [1.2, 1.6], rtol=1e-6)  # norm 5 -> 2
    np.testing.assert_allclose(new["kernel"][:, 1], [0.1, 0.1])  # already within the bound
    np.testing.assert_allclose(new["bias"], [10.0, 10.0])  # biases untouched


def test_dropconnect_masks_weights_in_training_and_scales_them_at_evaluation():
    cfg = compose("model=mlp", "model.hidden=[64]", "regularizer=[dropconnect]")
    model = train.build_setup(cfg).model
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    params = model.init(jax.random.key(1), x)["params"]
    plain = train.build_setup(compose("model=mlp", "model.hidden=[64]")).model
    scaled = jax.tree.map(lambda p: p, params)
    for layer in ("hidden_0", "out"):
        scaled[layer] = dict(params[layer], kernel=params[layer]["kernel"] * 0.75)
    np.testing.assert_allclose(model.apply({"params": params}, x),
                               plain.apply({"params": scaled}, x), rtol=1e-5, atol=1e-6)
    a = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})
    b = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)  # a new weight mask per step

    # 1 - keep of the weights are dropped: in logreg (no hidden units, pixels all > 0) the
    # gradient of a weight is zero exactly where the mask dropped it
    logreg = train.build_setup(compose("model=logreg", "regularizer=[dropconnect]")).model
    p = logreg.init(jax.random.key(1), x)["params"]
    grad = jax.grad(lambda p: logreg.apply({"params": p}, x, train=True,
                                           rngs={"dropout": jax.random.key(2)}).sum())(p)
    dropped = float(jnp.mean(grad["out"]["kernel"] == 0.0))
    assert abs(dropped - 0.25) < 0.01, dropped  # 7,840 weights


def test_dropconnect_is_refused_for_recurrent_models():
    with pytest.raises(ConfigError, match="dropconnect"):
        train.build_setup(compose("model=lstm", "regularizer=[dropconnect]"))
