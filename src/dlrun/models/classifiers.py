"""The feed-forward classifiers: logistic regression, the MLP, the seed's convnet and LeNet."""
import functools
from typing import ClassVar, List, Sequence

import flax.linen as nn
import jax

from dlrun.config.registry import require
from dlrun.models.conv import Conv, max_pool_ceil
from dlrun.models.layers import ACTIVATIONS, Dense, DenseLayer, _check_common, kernel_init


class ConvNet(nn.Module):
    """Convnet: (conv -> act -> maxpool -> dropout) per conv layer, flatten, dense hidden, dense out.

    With the defaults of conf/model/cnn.yaml this is the seed notebook's convnet:
    32@3x3 pad 2 -> pool -> 64@3x3 -> pool -> 128@3x3 -> pool (ceil) -> 1152 -> 625 -> 10.
    Layout NHWC (XLA:CPU's fast convolution layout).
    """

    features: Sequence[int]
    kernel_size: int
    padding: Sequence[int]
    pool: int
    pool_ceil: bool
    hidden: Sequence[int]
    activation: str
    use_bias: bool
    weight_init: str  # named `init` in the config (Module.init is taken)
    init_std: float
    num_classes: int
    dropout_input: float = 0.0
    dropout_conv: float = 0.0
    dropout_hidden: float = 0.0
    dropconnect_keep: float = 1.0
    scan_friendly: ClassVar[bool] = False  # XLA:CPU runs convolutions inside loops far slower

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act, k_init = ACTIVATIONS[self.activation], kernel_init(self.weight_init, self.init_std, self.activation)
        x = nn.Dropout(self.dropout_input, deterministic=not train)(x)  # (B, H, W, C)
        k = self.kernel_size
        for i, (feat, pad) in enumerate(zip(self.features, self.padding)):
            x = Conv(feat, k, pad, self.use_bias, k_init, name=f"conv_{i}")(x, train)
            x = act(x)
            if self.pool > 1:
                if self.pool_ceil:
                    x = max_pool_ceil(x, self.pool)
                else:
                    x = nn.max_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool))
            x = nn.Dropout(self.dropout_conv, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))  # (B, H*W*C)
        dense = functools.partial(DenseLayer, use_bias=self.use_bias, kernel_init=k_init,
                                  keep=self.dropconnect_keep)
        for i, units in enumerate(self.hidden):
            x = act(dense(units, name=f"hidden_{i}")(x, train))
            x = nn.Dropout(self.dropout_hidden, deterministic=not train)(x)
        return dense(self.num_classes, name="out")(x, train)


def logreg(use_bias: bool = True, init: str = "zeros", init_std: float = 0.01, *,
           num_classes: int, dropout: dict) -> nn.Module:
    """Multinomial logistic regression: H*W*C pixels -> num_classes softmax."""
    _check_common("tanh", init, init_std)  # no hidden units: plain Glorot
    return Dense((), "tanh", use_bias, init, init_std, num_classes,
                 dropout_input=dropout.get("input", 0.0),
                 dropconnect_keep=dropout.get("dropconnect_keep", 1.0))


def mlp(hidden: List[int] = (625,), activation: str = "relu", use_bias: bool = True,
        init: str = "glorot", init_std: float = 0.01, zero_output: bool = False, *,
        num_classes: int, dropout: dict) -> nn.Module:
    """Fully connected net with `hidden` layer sizes; zero_output starts the output layer's
    weights at zero (the slides' tanh MLP: W_hy = 0)."""
    _check_common(activation, init, init_std)
    require(len(hidden) > 0 and all(h > 0 for h in hidden),
            f"hidden must be a non-empty list of positive sizes (got {list(hidden)})")
    return Dense(tuple(hidden), activation, use_bias, init, init_std, num_classes,
                 dropout_input=dropout.get("input", 0.0), dropout_hidden=dropout.get("hidden", 0.0),
                 dropconnect_keep=dropout.get("dropconnect_keep", 1.0), zero_output=zero_output)


def cnn(features: List[int] = (32, 64, 128), kernel_size: int = 3, padding: List[int] = (2, 0, 0),
        pool: int = 2, pool_ceil: bool = True, hidden: List[int] = (625,), activation: str = "relu",
        use_bias: bool = True, init: str = "glorot", init_std: float = 0.01, *,
        num_classes: int, dropout: dict, input_shape: tuple) -> nn.Module:
    """Convolutional net; the default architecture is the seed notebook's convnet.
    input_shape: (height, width, channels) of the dataset's images (dlrun.data.sources)."""
    _check_common(activation, init, init_std)
    require(len(features) > 0 and all(f > 0 for f in features),
            f"features must be a non-empty list of positive channel counts (got {list(features)})")
    require(len(padding) == len(features),
            f"padding needs one entry per conv layer ({len(features)}), got {list(padding)}")
    require(kernel_size > 0 and pool >= 1 and all(p >= 0 for p in padding),
            "kernel_size must be > 0, pool >= 1 and padding >= 0")
    require(all(h > 0 for h in hidden), f"hidden sizes must be positive (got {list(hidden)})")
    size = min(input_shape[:2])
    for pad in padding:
        size = size + 2 * pad - kernel_size + 1
        require(size >= 1, f"the image shrinks to nothing: kernel_size {kernel_size} with padding "
                           f"{list(padding)} is too large for {input_shape[0]}x{input_shape[1]} input")
        size = -(-size // pool) if pool_ceil else size // pool
        require(size >= 1, f"pooling by {pool} shrinks the image to nothing")
    return ConvNet(tuple(features), kernel_size, tuple(padding), pool, pool_ceil, tuple(hidden),
                   activation, use_bias, init, init_std, num_classes,
                   dropout_input=dropout.get("input", 0.0), dropout_conv=dropout.get("conv", 0.0),
                   dropout_hidden=dropout.get("hidden", 0.0),
                   dropconnect_keep=dropout.get("dropconnect_keep", 1.0))


def lenet(features: List[int] = (20, 50), kernel_size: int = 5, padding: List[int] = (0, 0),
          pool: int = 2, pool_ceil: bool = False, hidden: List[int] = (500,),
          activation: str = "tanh", use_bias: bool = True, init: str = "glorot",
          init_std: float = 0.01, *, num_classes: int, dropout: dict, input_shape: tuple) -> nn.Module:
    """DLT's LeNet (convolutional_mlp.py): 20@5x5 -> pool 2 -> tanh, 50@5x5 -> pool 2 -> tanh,
    500 tanh, softmax. DLT adds the bias and applies tanh after pooling; max-pooling commutes
    with a per-channel bias and a monotonic tanh, so this is the same function as ConvNet's
    conv -> tanh -> pool. 28 -> 24 -> 12 -> 8 -> 4: 800 features into the hidden layer."""
    return cnn(features, kernel_size, padding, pool, pool_ceil, hidden, activation, use_bias,
               init, init_std, num_classes=num_classes, dropout=dropout, input_shape=input_shape)
