"""The shared pieces: activations, initialisations, the dense layer and the dense classifier."""
import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrun.config.registry import require


ACTIVATIONS: dict[str, Callable] = {"sigmoid": nn.sigmoid, "tanh": nn.tanh, "relu": nn.relu,
                                    "gelu": nn.gelu}


INITS = ("normal", "glorot", "he", "zeros")


RECON_LOSSES = ("cross_entropy", "squared")


def kernel_init(init: str, std: float, activation: str) -> Callable:
    """Weight initialiser by name.

    normal: N(0, std^2), the seed notebook's `randn * 0.01`.
    glorot: Uniform(-a, a), a = sqrt(6 / (fan_in + fan_out)); 4a for sigmoid units (the slides,
            after Glorot & Bengio 2010). For convolutions fans count the receptive field.
    he:     N(0, 2 / fan_in), truncated (He et al. 2015), for ReLU/GELU nets with normalisation.
    zeros:  all zeros (the slides' logistic regression).
    """
    if init == "he":
        return nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
    if init == "normal":
        return nn.initializers.normal(stddev=std)
    if init == "glorot":
        gain = 4.0 if activation == "sigmoid" else 1.0
        return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")
    return nn.initializers.zeros_init()


class DenseLayer(nn.Module):
    """nn.Dense with optional DropConnect (the slides' weight mask): while training, each
    weight is kept with probability `keep` (a new Bernoulli mask per step, drawn from the
    'dropout' RNG stream); at evaluation the weights are scaled by `keep`. keep=1: plain Dense.
    Parameters are named as nn.Dense's ('kernel', 'bias')."""

    features: int
    use_bias: bool
    kernel_init: Callable
    keep: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        if self.keep < 1.0:
            if train:
                mask = jax.random.bernoulli(self.make_rng("dropout"), self.keep, kernel.shape)
                kernel = jnp.where(mask, kernel, 0.0)
            else:
                kernel = kernel * self.keep
        y = x @ kernel
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return y


class Dense(nn.Module):
    """Multilayer perceptron: [dropout] -> (dense -> act -> dropout) * len(hidden) -> dense."""

    hidden: Sequence[int]
    activation: str
    use_bias: bool
    weight_init: str  # named `init` in the config (Module.init is taken)
    init_std: float
    num_classes: int
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    dropconnect_keep: float = 1.0
    zero_output: bool = False  # the output layer's weights start at zero (the slides' tanh MLP)
    scan_friendly: ClassVar[bool] = True  # dense nets run fastest as a lax.scan over the epoch

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act, k_init = ACTIVATIONS[self.activation], kernel_init(self.weight_init, self.init_std, self.activation)
        dense = functools.partial(DenseLayer, use_bias=self.use_bias, kernel_init=k_init,
                                  keep=self.dropconnect_keep)
        x = x.reshape((x.shape[0], -1))  # (B, H*W*C)
        x = nn.Dropout(self.dropout_input, deterministic=not train)(x)
        for i, units in enumerate(self.hidden):
            x = act(dense(units, name=f"hidden_{i}")(x, train))
            x = nn.Dropout(self.dropout_hidden, deterministic=not train)(x)
        if self.zero_output:
            dense = functools.partial(dense, kernel_init=nn.initializers.zeros_init())
        return dense(self.num_classes, name="out")(x, train)


def _check_common(activation: str, init: str, init_std: float) -> None:
    require(activation in ACTIVATIONS,
            f"activation must be one of {', '.join(ACTIVATIONS)} (got '{activation}')")
    require(init in INITS, f"init must be one of {', '.join(INITS)} (got '{init}')")
    require(init_std > 0, f"init_std must be > 0 (got {init_std})")
