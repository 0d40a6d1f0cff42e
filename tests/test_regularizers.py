"""Each regularizer does what it says, where it says (loss term, optax step, model argument)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlrun import regularizers, train
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
        state, _ = step(state, train.epoch_acc(), x, y, jnp.arange(8), jnp.ones(8), jax.random.key(1))
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
