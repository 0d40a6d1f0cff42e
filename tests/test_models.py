"""Model shapes, parameter layout, initialisers, and the two convolution forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlrun import models
from dlrun.errors import ConfigError
from dlrun.config.registry import build

X = jnp.zeros((4, 28, 28, 1), jnp.float32)


def make(name, dropout=None, **kw):
    return build("model", models.MODELS, {"name": name, **kw}, num_classes=10, input_shape=(28, 28, 1),
                 dropout=dropout or {})


CLASSIFIERS = sorted(n for n in models.MODELS
                     if n not in ("autoencoder", "rbm", "knn", "custom", "gaussian", "rnnrbm"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in ("lenet", "dbn", "sda") else [])
                                  for n in CLASSIFIERS])
def test_logits_shape_and_plain_param_dict(name):
    model = make(name)
    variables = model.init(jax.random.key(0), X)  # BatchNorm nets: also 'batch_stats'
    params = variables["params"]
    assert model.apply(variables, X).shape == (4, 10)
    assert isinstance(params, dict) and all(isinstance(v, dict) for v in params.values())


def test_seed_convnet_layout():
    """The seed convnet: 32@3x3, 64@3x3, 128@3x3, flatten 128*3*3, 625, 10; no biases."""
    model = make("cnn", use_bias=False)
    params = model.init(jax.random.key(0), X)["params"]
    shapes = {k: v["kernel"].shape for k, v in params.items()}
    assert shapes == {"conv_0": (3, 3, 1, 32), "conv_1": (3, 3, 32, 64), "conv_2": (3, 3, 64, 128),
                      "hidden_0": (1152, 625), "out": (625, 10)}
    assert all(set(v) == {"kernel"} for v in params.values())
    assert sum(v["kernel"].size for v in params.values()) == 818_698


def test_conv_matmul_equals_xla_conv():
    r = np.random.RandomState(0)
    x = jnp.asarray(r.randn(3, 9, 9, 4), jnp.float32)
    k = jnp.asarray(r.randn(3, 3, 4, 5), jnp.float32)
    for pad in (0, 2):
        np.testing.assert_allclose(models.conv_matmul(x, k, pad), models.conv_xla(x, k, pad),
                                   rtol=1e-5, atol=1e-5)
    g1 = jax.grad(lambda k: jnp.sum(jnp.sin(models.conv_matmul(x, k, 2))))(k)
    g2 = jax.grad(lambda k: jnp.sum(jnp.sin(models.conv_xla(x, k, 2))))(k)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-4)


def test_conv_shift_matmul_equals_xla_conv_in_value_and_both_gradients():
    r = np.random.RandomState(1)
    x = jnp.asarray(r.randn(2, 8, 8, 1), jnp.float32)  # one input channel: the first layer's case
    k = jnp.asarray(r.randn(3, 3, 1, 6), jnp.float32)
    for pad in (0, 2):
        np.testing.assert_allclose(models.conv_shift_matmul(x, k, pad), models.conv_xla(x, k, pad),
                                   rtol=1e-5, atol=1e-5)
        loss = lambda f: (lambda x, k: jnp.sum(jnp.sin(f(x, k, pad))))
        gs = jax.grad(loss(models.conv_shift_matmul), argnums=(0, 1))(x, k)
        gx = jax.grad(loss(models.conv_xla), argnums=(0, 1))(x, k)
        for a, b in zip(gs, gx):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_train_and_eval_forward_agree_without_dropout():
    model = make("cnn")
    params = model.init(jax.random.key(0), X)["params"]
    x = jax.random.uniform(jax.random.key(1), X.shape)
    a = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})
    b = model.apply({"params": params}, x, train=False)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_max_pool_ceil_keeps_partial_window():
    x = jnp.arange(25, dtype=jnp.float32).reshape(1, 5, 5, 1)
    out = models.max_pool_ceil(x, 2)
    assert out.shape == (1, 3, 3, 1)
    np.testing.assert_array_equal(out[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


def test_initialisers():
    w = lambda **kw: make("mlp", hidden=[300], **kw).init(jax.random.key(0), X)["params"]["hidden_0"]["kernel"]
    assert np.all(np.asarray(w(init="zeros")) == 0)
    assert abs(float(jnp.std(w(init="normal", init_std=0.01))) - 0.01) < 5e-4
    a = np.sqrt(6 / (784 + 300))
    tanh = w(init="glorot", activation="tanh")
    sig = w(init="glorot", activation="sigmoid")
    assert float(jnp.max(jnp.abs(tanh))) <= a and float(jnp.max(jnp.abs(tanh))) > 0.95 * a
    assert float(jnp.max(jnp.abs(sig))) <= 4 * a and float(jnp.max(jnp.abs(sig))) > 3.8 * a


def test_dropout_only_in_training():
    model = make("mlp", dropout={"input": 0.5, "hidden": 0.5})
    params = model.init(jax.random.key(0), X)["params"]
    x = jax.random.uniform(jax.random.key(1), X.shape)
    eval1 = model.apply({"params": params}, x, train=False)
    eval2 = model.apply({"params": params}, x, train=False)
    tr = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(eval1, eval2)
    assert not np.allclose(eval1, tr)


@pytest.mark.parametrize("kw,fragment", [
    ({"name": "mlp", "activation": "swish"}, "activation"),
    ({"name": "mlp", "hidden": []}, "hidden"),
    ({"name": "cnn", "padding": [0, 0]}, "padding"),
    ({"name": "cnn", "kernel_size": 11}, "too large"),
    ({"name": "logreg", "init": "uniform"}, "init"),
    ({"name": "vgg", "norm": "group"}, "norm"),
    ({"name": "resnet", "depths": [1, 1]}, "depths"),
])
def test_bad_model_settings(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make(**kw)


SMALL = {"mlp": {"hidden": [16]}, "cnn": {"features": [4, 8, 8], "hidden": [16]},
         "lenet": {"features": [4, 8], "hidden": [16]}, "rnn": {"hidden": 8}, "lstm": {"hidden": 8},
         "autoencoder": {"hidden": 16}, "rbm": {"hidden": 16, "chains": 4},
         "sda": {"hidden": [16, 16], "corruption": [0.1, 0.2]}, "dbn": {"hidden": [16, 16]}}


@pytest.mark.parametrize("name", sorted(n for n in models.MODELS
                                        if n not in ("knn", "custom", "gaussian", "rnnrbm")))
def test_every_model_is_built_for_the_datas_shape_and_classes(name):  # rnnrbm: test_rnnrbm.py
    """Any H, W, C and class count: 20x24 colour images, 7 classes."""
    shape, k = (20, 24, 3), 7
    model = build("model", models.MODELS, {"name": name, **SMALL.get(name, {})}, num_classes=k,
                  input_shape=shape, dropout={})
    x = jnp.full((2, *shape), 0.5, jnp.float32)
    key = jax.random.key(0)
    variables = model.init({"params": key, "sample": key, "dropout": key}, x, train=False)
    out = model.apply(variables, x, train=False, rngs={"sample": key},
                      mutable=list(getattr(model, "mutable", ())) or False)
    out = out[0] if isinstance(out, tuple) else out
    if isinstance(out, dict):  # autoencoder, rbm: they reconstruct the pixels
        assert out["target"].shape == (2, np.prod(shape)), out["target"].shape
    else:
        assert out.shape == (2, k)
