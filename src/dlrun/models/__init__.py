"""Models: the `model` config group. Name -> builder of a Flax Linen module.

Every model is called as `module.apply(variables, x, train=bool, rngs={'dropout': k, 'sample': k2})`
with `x` of shape (B, 28, 28, 1) float32. What it returns is what its objective scores
(dlrun.models.objectives, named by the class's `objective`): logits (B, num_classes) for classifiers,
{'logits', 'target'} for autoencoders, {'surrogate', 'logits', 'target', 'pseudo_ll'} for RBMs.
Dropout rates are model arguments (they come from `regularizer=dropout`, see regularizers.py)
and act only when `train=True`; 'sample' feeds the autoencoders' corruption and the RBMs' Gibbs
chains. `variables` holds 'params' (a plain nested dict: {'hidden_0': {'kernel', 'bias'}, ...})
and, for some models, other collections carried in the training state but never trained:
'frozen' (pretrained layers under the one being trained, set by sda/dbn) and 'chains' (PCD's
persistent Gibbs chains, updated by every step: the class's `mutable`).

Two models are not trained by gradient steps alone: `knn` memorises the training split
(NearestNeighbours), and `sda`/`dbn` are classifiers preceded by greedy layer-wise pretraining
phases (`PRETRAINING` gives the config of each phase; dlrun.train runs them).
"""
import functools
import inspect
from dataclasses import dataclass
from typing import Callable, ClassVar, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrun.config.registry import require

ACTIVATIONS: dict[str, Callable] = {"sigmoid": nn.sigmoid, "tanh": nn.tanh, "relu": nn.relu}
INITS = ("normal", "glorot", "zeros")
RECON_LOSSES = ("cross_entropy", "squared")


def kernel_init(init: str, std: float, activation: str) -> Callable:
    """Weight initialiser by name.

    normal: N(0, std^2), the seed notebook's `randn * 0.01`.
    glorot: Uniform(-a, a), a = sqrt(6 / (fan_in + fan_out)); 4a for sigmoid units (the slides,
            after Glorot & Bengio 2010). For convolutions fans count the receptive field.
    zeros:  all zeros (the slides' logistic regression).
    """
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
        x = x.reshape((x.shape[0], -1))  # (B, 784)
        x = nn.Dropout(self.dropout_input, deterministic=not train)(x)
        for i, units in enumerate(self.hidden):
            x = act(dense(units, name=f"hidden_{i}")(x, train))
            x = nn.Dropout(self.dropout_hidden, deterministic=not train)(x)
        if self.zero_output:
            dense = functools.partial(dense, kernel_init=nn.initializers.zeros_init())
        return dense(self.num_classes, name="out")(x, train)


def conv_xla(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """'Same-padded by pad' 2-D convolution (cross-correlation), NHWC x HWIO -> NHWC."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_matmul(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """The same convolution as one matmul: the kh*kw shifted slices of the (padded) input are
    concatenated along channels, (B*OH*OW, kh*kw*Cin) @ (kh*kw*Cin, Cout).

    Measured on the 2-core CPU this project targets (seed convnet, batch 128, one jitted
    training step): 80-87 ms with this form against 135-139 ms with XLA's convolution, whose
    gradient kernels are slow on CPU; XLA's forward pass alone is faster (16 vs 36-43 ms), so
    ConvNet uses this form for training and `conv_xla` for evaluation.
    """
    kh, kw, cin, cout = kernel.shape
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = jnp.concatenate([x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)],
                           axis=-1)  # (B, OH, OW, kh*kw*Cin), channel index = (i*kw + j)*Cin + c
    out = cols.reshape(b * oh * ow, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
    return out.reshape(b, oh, ow, cout)


def conv_shift(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """The same convolution as kh*kw*Cin broadcast multiply-adds of shifted input slices: one
    elementwise loop that XLA fuses with the activation and pooling after it, so a first layer
    with few input channels never writes its large pre-pooling output to memory (seed convnet,
    layer 1 with relu and pool, batch 128: 0.7 ms forward against 4.1 ms as conv_matmul)."""
    kh, kw, cin, _ = kernel.shape
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return sum(x[:, i:i + oh, j:j + ow, c:c + 1] * kernel[i, j, c]
               for i in range(kh) for j in range(kw) for c in range(cin))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_shift_matmul(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """conv_shift's forward pass with conv_matmul's gradient: XLA differentiates the broadcast
    sum into kh*kw*Cin separate reductions, 3x slower than the matmul's gradient. Used for
    layers with at most SHIFT_MAX_TAPS taps; the seed convnet's training step (first layer
    1 -> 32 channels): 58-62 ms against 62-67 ms with conv_matmul (3 interleaved runs each)."""
    return conv_shift(x, kernel, pad)


def _conv_shift_fwd(x, kernel, pad):
    return conv_shift(x, kernel, pad), (x, kernel)


def _conv_shift_bwd(pad, residuals, g):
    x, kernel = residuals
    return jax.vjp(lambda x, k: conv_matmul(x, k, pad), x, kernel)[1](g)


conv_shift_matmul.defvjp(_conv_shift_fwd, _conv_shift_bwd)
SHIFT_MAX_TAPS = 9  # kh*kw*Cin: a 3x3 kernel on one channel (grey images' first layer)


class Conv(nn.Module):
    """3-D kernel (kh, kw, Cin, Cout) 'kernel' + optional 'bias', as flax.linen.Conv stores them."""

    features: int
    kernel_size: int
    pad: int
    use_bias: bool
    kernel_init: Callable

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        if k * k * x.shape[-1] <= SHIFT_MAX_TAPS:
            y = conv_shift_matmul(x, kernel, self.pad)
        else:
            y = (conv_matmul if train else conv_xla)(x, kernel, self.pad)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return y


def max_pool_ceil(x: jax.Array, window: int) -> jax.Array:
    """Non-overlapping max-pool over H and W of (B, H, W, C); a partial border window is kept
    (Theano's `ignore_border=False`, i.e. ceil mode). Written as pad + reshape + max, which XLA
    differentiates faster than reduce_window."""
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    x = x.reshape(b, (h + ph) // window, window, (w + pw) // window, window, c)
    return x.max(axis=(2, 4))


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
        x = nn.Dropout(self.dropout_input, deterministic=not train)(x)  # (B, 28, 28, 1)
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


def _check_common(activation: str, init: str, init_std: float) -> None:
    require(activation in ACTIVATIONS,
            f"activation must be one of {', '.join(ACTIVATIONS)} (got '{activation}')")
    require(init in INITS, f"init must be one of {', '.join(INITS)} (got '{init}')")
    require(init_std > 0, f"init_std must be > 0 (got {init_std})")


def logreg(use_bias: bool = True, init: str = "zeros", init_std: float = 0.01, *,
           num_classes: int, dropout: dict) -> nn.Module:
    """Multinomial logistic regression: 784 -> num_classes softmax."""
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
        num_classes: int, dropout: dict) -> nn.Module:
    """Convolutional net; the default architecture is the seed notebook's convnet."""
    _check_common(activation, init, init_std)
    require(len(features) > 0 and all(f > 0 for f in features),
            f"features must be a non-empty list of positive channel counts (got {list(features)})")
    require(len(padding) == len(features),
            f"padding needs one entry per conv layer ({len(features)}), got {list(padding)}")
    require(kernel_size > 0 and pool >= 1 and all(p >= 0 for p in padding),
            "kernel_size must be > 0, pool >= 1 and padding >= 0")
    require(all(h > 0 for h in hidden), f"hidden sizes must be positive (got {list(hidden)})")
    size = 28
    for pad in padding:
        size = size + 2 * pad - kernel_size + 1
        require(size >= 1, f"the image shrinks to nothing: kernel_size {kernel_size} with padding "
                           f"{list(padding)} is too large for 28x28 input")
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
          init_std: float = 0.01, *, num_classes: int, dropout: dict) -> nn.Module:
    """DLT's LeNet (convolutional_mlp.py): 20@5x5 -> pool 2 -> tanh, 50@5x5 -> pool 2 -> tanh,
    500 tanh, softmax. DLT adds the bias and applies tanh after pooling; max-pooling commutes
    with a per-channel bias and a monotonic tanh, so this is the same function as ConvNet's
    conv -> tanh -> pool. 28 -> 24 -> 12 -> 8 -> 4: 800 features into the hidden layer."""
    return cnn(features, kernel_size, padding, pool, pool_ceil, hidden, activation, use_bias,
               init, init_std, num_classes=num_classes, dropout=dropout)


class Recurrent(nn.Module):
    """Reads the image as a sequence of its 28 rows (28 pixels each), top to bottom, and
    classifies from the last hidden state: (B, 28, 28, 1) -> cell over 28 steps -> dense -> logits.
    Trained by backpropagation through time (the gradient of the lax.scan over the rows)."""

    cell: str  # "simple" (Elman: h = act(W x + U h + b)) | "lstm"
    hidden: int
    activation: str
    num_classes: int
    weight_init: str = "glorot"  # input and output weights; recurrent weights stay orthogonal
    init_std: float = 0.01
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    scan_friendly: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], 28, 28))  # (B, time = rows, features = pixels)
        x = nn.Dropout(self.dropout_input, deterministic=not train)(x)
        k_init = kernel_init(self.weight_init, self.init_std, self.activation)
        if self.cell == "lstm":
            cell = nn.OptimizedLSTMCell(self.hidden, kernel_init=k_init, name="lstm")
        else:
            cell = nn.SimpleCell(self.hidden, activation_fn=ACTIVATIONS[self.activation],
                                 kernel_init=k_init, name="rnn")
        h = nn.RNN(cell)(x)[:, -1]  # (B, hidden): the state after the last row
        h = nn.Dropout(self.dropout_hidden, deterministic=not train)(h)
        return nn.Dense(self.num_classes, kernel_init=k_init, name="out")(h)


def _no_dropconnect(dropout: dict) -> None:
    require("dropconnect_keep" not in dropout,
            "regularizer dropconnect masks dense-layer weights: use it with logreg, mlp, cnn or "
            "lenet, not with a recurrent model (regularizer=[dropout] drops its input and state)")


def rnn(hidden: int = 128, activation: str = "tanh", init: str = "glorot", init_std: float = 0.01,
        *, num_classes: int, dropout: dict) -> nn.Module:
    """Elman recurrent net over the image rows (Recurrent with a simple cell)."""
    require(hidden > 0, f"hidden must be > 0 (got {hidden})")
    _no_dropconnect(dropout)
    _check_common(activation, init, init_std)
    return Recurrent("simple", hidden, activation, num_classes, init, init_std,
                     dropout_input=dropout.get("input", 0.0), dropout_hidden=dropout.get("hidden", 0.0))


def lstm(hidden: int = 128, init: str = "glorot", init_std: float = 0.01, *, num_classes: int,
         dropout: dict) -> nn.Module:
    """LSTM over the image rows (Recurrent with an LSTM cell: input, forget and output gates)."""
    require(hidden > 0, f"hidden must be > 0 (got {hidden})")
    _no_dropconnect(dropout)
    _check_common("tanh", init, init_std)
    return Recurrent("lstm", hidden, "tanh", num_classes, init, init_std,
                     dropout_input=dropout.get("input", 0.0), dropout_hidden=dropout.get("hidden", 0.0))


# ---- unsupervised layers: autoencoders and RBMs -----------------------------------------------
def frozen_layers(module: nn.Module, x: jax.Array, sizes: Sequence[int]) -> jax.Array:
    """Sigmoid layers whose weights are constants (the 'frozen' collection, filled from earlier
    pretraining phases; Glorot-random if nothing fills them), with the gradient stopped: the
    input of a layer in greedy layer-wise pretraining (DLT's sigmoid_layers[-1].output)."""
    for j, units in enumerate(sizes):
        def init(d=x.shape[-1], u=units):
            k = kernel_init("glorot", 0.01, "sigmoid")(module.make_rng("params"), (d, u))
            return {"kernel": k, "bias": jnp.zeros((u,), jnp.float32)}
        layer = module.variable("frozen", f"hidden_{j}", init).value
        x = nn.sigmoid(x @ layer["kernel"] + layer["bias"])
    return jax.lax.stop_gradient(x)


class Bias(nn.Module):
    """A lone bias vector {'bias': (size,)}: the visible units' bias of autoencoders and RBMs."""

    size: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("bias", nn.initializers.zeros_init(), (self.size,))


class Autoencoder(nn.Module):
    """(Denoising) autoencoder with sigmoid units (DLT's dA): corrupt x by zeroing each input
    with probability `corruption` (training only), h = sigmoid(W x~ + b), reconstruction
    z = sigmoid(W' h + b'), W' = W^T (tied) or its own matrix; trained to reconstruct the clean
    x. Parameters: hidden_<i> {kernel (D, H), bias}, visible_<i> {bias (D,)[, kernel (H, D)]},
    i = len(below): the layer's place in a stack (sda pretrains them one at a time)."""

    hidden: int
    below: Sequence[int]
    tied: bool
    corruption: float
    loss: str  # cross_entropy | squared (dlrun.models.objectives)
    weight_init: str
    init_std: float
    objective: ClassVar[str] = "reconstruct"
    scan_friendly: ClassVar[bool] = True
    mutable: ClassVar[tuple] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict:
        x = frozen_layers(self, x.reshape((x.shape[0], -1)), self.below)  # (B, D)
        i, d = len(self.below), x.shape[-1]
        k_init = kernel_init(self.weight_init, self.init_std, "sigmoid")
        noisy = x
        if train and self.corruption > 0:
            keep = jax.random.bernoulli(self.make_rng("sample"), 1.0 - self.corruption, x.shape)
            noisy = jnp.where(keep, x, 0.0)
        encoder = nn.Dense(self.hidden, kernel_init=k_init, name=f"hidden_{i}")
        h = nn.sigmoid(encoder(noisy))
        if self.tied:
            logits = h @ encoder.variables["params"]["kernel"].T + Bias(d, name=f"visible_{i}")()
        else:
            logits = nn.Dense(d, kernel_init=k_init, name=f"visible_{i}")(h)
        return {"logits": logits, "target": x}


def free_energy(v: jax.Array, w: jax.Array, hb: jax.Array, vb: jax.Array) -> jax.Array:
    """F(v) = -v.vb - sum_j softplus((v W + hb)_j) of a binary RBM, per row of v."""
    return -v @ vb - jnp.sum(jax.nn.softplus(v @ w + hb), axis=-1)


class RBM(nn.Module):
    """Binary restricted Boltzmann machine (DLT's rbm.py), trained by contrastive divergence.

    Each training step runs k steps of block Gibbs sampling h -> v -> h, starting from hidden
    units sampled from the data (CD-k) or from `chains` persistent chains carried from step to
    step (PCD-k, the 'chains' collection), and returns the surrogate F(v_data) - mean F(v_end)
    whose gradient is the CD estimate (dlrun.models.objectives). Also returns the mean-field
    reconstruction sigmoid(sigmoid(v W + hb) W^T + vb) and the log pseudo-likelihood of the
    rounded input with bit (389 n mod D) of the batch's n-th example flipped (deterministic, so
    evaluation is repeatable). Parameters: hidden_<i> {kernel (D, H), bias}, visible_<i> {bias}."""

    hidden: int
    below: Sequence[int]
    k: int
    persistent: bool
    chains: int
    weight_init: str
    init_std: float
    objective: ClassVar[str] = "cd"
    scan_friendly: ClassVar[bool] = True

    @property
    def mutable(self) -> tuple:
        return ("chains",) if self.persistent else ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict:
        v0 = frozen_layers(self, x.reshape((x.shape[0], -1)), self.below)  # (B, D)
        i, d = len(self.below), v0.shape[-1]
        up = nn.Dense(self.hidden, kernel_init=kernel_init(self.weight_init, self.init_std, "sigmoid"),
                      name=f"hidden_{i}")
        ph0 = nn.sigmoid(up(v0))
        w, hb = up.variables["params"]["kernel"], up.variables["params"]["bias"]
        vb = Bias(d, name=f"visible_{i}")()
        chain = (self.variable("chains", "hidden", jnp.zeros, (self.chains, self.hidden), jnp.float32)
                 if self.persistent else None)
        surrogate = jnp.zeros(v0.shape[0], jnp.float32)
        if train:
            sw, shb, svb = (jax.lax.stop_gradient(a) for a in (w, hb, vb))
            start_key, key = jax.random.split(self.make_rng("sample"))
            start = chain.value if self.persistent else jax.random.bernoulli(
                start_key, jax.lax.stop_gradient(ph0)).astype(jnp.float32)

            def gibbs(t, carry):  # one h -> v -> h step; keeps the last visible sample
                h, _ = carry
                kv, kh = jax.random.split(jax.random.fold_in(key, t))
                v = jax.random.bernoulli(kv, nn.sigmoid(h @ sw.T + svb)).astype(jnp.float32)
                h = jax.random.bernoulli(kh, nn.sigmoid(v @ sw + shb)).astype(jnp.float32)
                return h, v

            h_end, v_end = jax.lax.fori_loop(0, self.k, gibbs,
                                             (start, jnp.zeros((start.shape[0], d), jnp.float32)))
            if self.persistent and not self.is_initializing():
                chain.value = h_end
            surrogate = free_energy(v0, w, hb, vb) - jnp.mean(free_energy(v_end, w, hb, vb))
        xi = jnp.round(v0)
        rows = jnp.arange(v0.shape[0])
        bit = (rows * 389) % d
        flipped = xi.at[rows, bit].set(1.0 - xi[rows, bit])
        pseudo_ll = d * jax.nn.log_sigmoid(free_energy(flipped, w, hb, vb) - free_energy(xi, w, hb, vb))
        return {"surrogate": surrogate, "logits": ph0 @ w.T + vb, "target": v0,
                "pseudo_ll": jax.lax.stop_gradient(pseudo_ll)}


def _check_layer(hidden: int, below: Sequence[int], init: str, init_std: float) -> None:
    require(hidden > 0 and all(b > 0 for b in below),
            f"hidden and below must be positive sizes (got {hidden}, {list(below)})")
    _check_common("sigmoid", init, init_std)


def autoencoder(hidden: int = 500, corruption: float = 0.0, tied: bool = True,
                loss: str = "cross_entropy", below: List[int] = (), init: str = "glorot",
                init_std: float = 0.01, *, num_classes: int, dropout: dict) -> nn.Module:
    """(Denoising) autoencoder; unsupervised: reports reconstruction costs, not error rates.
    `below`: sizes of frozen sigmoid layers under it (filled by sda's pretraining; alone they
    stay Glorot-random)."""
    _check_layer(hidden, below, init, init_std)
    require(0 <= corruption < 1, f"corruption must be in [0, 1) (got {corruption})")
    require(loss in RECON_LOSSES, f"loss must be one of {', '.join(RECON_LOSSES)} (got '{loss}')")
    require(not dropout, "autoencoders corrupt their input themselves (model.corruption); "
                         "regularizer dropout/dropconnect do not apply to them")
    return Autoencoder(hidden, tuple(below), tied, corruption, loss, init, init_std)


def rbm(hidden: int = 500, k: int = 1, persistent: bool = False, chains: int = 100,
        below: List[int] = (), init: str = "glorot", init_std: float = 0.01, *,
        num_classes: int, dropout: dict) -> nn.Module:
    """Binary RBM trained by CD-k (persistent=false) or PCD-k with `chains` persistent chains."""
    _check_layer(hidden, below, init, init_std)
    require(k >= 1, f"k (Gibbs steps per update) must be >= 1 (got {k})")
    require(chains >= 1, f"chains must be >= 1 (got {chains})")
    require(not dropout, "regularizer dropout/dropconnect do not apply to an RBM")
    return RBM(hidden, tuple(below), k, persistent, chains, init, init_std)


# ---- greedily pretrained stacks: the classifier, and the config of each pretraining phase ----
def sda(hidden: List[int] = (1000, 1000, 1000), corruption: List[float] = (0.1, 0.2, 0.3),
        tied: bool = True, loss: str = "cross_entropy", pretrain_epochs: int = 15,
        pretrain_lr: float = 0.001, pretrain_batch_size: int = 20, init: str = "glorot",
        init_std: float = 0.01, *, num_classes: int, dropout: dict) -> nn.Module:
    """Stacked denoising autoencoders (DLT's SdA): each sigmoid layer is first trained as a
    denoising autoencoder on the output of the layers under it (one pretraining phase per
    layer: plain SGD, pretrain_lr, pretrain_epochs, pretrain_batch_size), then the whole stack
    with a softmax on top is fine-tuned as a classifier by the run's own optim and train."""
    _check_stack(hidden, init, init_std, pretrain_epochs, pretrain_lr, pretrain_batch_size)
    require(len(corruption) == len(hidden) and all(0 <= c < 1 for c in corruption),
            f"corruption needs one level in [0, 1) per layer ({len(hidden)}), got {list(corruption)}")
    require(loss in RECON_LOSSES, f"loss must be one of {', '.join(RECON_LOSSES)} (got '{loss}')")
    return _stack_classifier(hidden, init, init_std, num_classes, dropout)


def dbn(hidden: List[int] = (1000, 1000, 1000), k: int = 1, persistent: bool = False,
        chains: int = 100, pretrain_epochs: int = 100, pretrain_lr: float = 0.01,
        pretrain_batch_size: int = 10, init: str = "glorot", init_std: float = 0.01, *,
        num_classes: int, dropout: dict) -> nn.Module:
    """Deep belief net (DLT's DBN): each sigmoid layer is first trained as an RBM by CD-k/PCD-k
    on the mean activations of the layers under it (one phase per layer, plain SGD), then the
    stack with a softmax on top is fine-tuned as a classifier by the run's optim and train."""
    _check_stack(hidden, init, init_std, pretrain_epochs, pretrain_lr, pretrain_batch_size)
    require(k >= 1 and chains >= 1, f"k and chains must be >= 1 (got {k}, {chains})")
    return _stack_classifier(hidden, init, init_std, num_classes, dropout)


def _check_stack(hidden, init, init_std, epochs, lr, batch_size) -> None:
    require(len(hidden) > 0 and all(h > 0 for h in hidden),
            f"hidden must be a non-empty list of positive sizes (got {list(hidden)})")
    _check_common("sigmoid", init, init_std)
    require(epochs >= 0, f"pretrain_epochs must be >= 0 (0: no pretraining; got {epochs})")
    require(lr > 0 and batch_size >= 1, "pretrain_lr must be > 0 and pretrain_batch_size >= 1")


def _stack_classifier(hidden, init, init_std, num_classes, dropout) -> nn.Module:
    """The fine-tuned network: the pretrained sigmoid layers (same parameter names) + softmax."""
    return Dense(tuple(hidden), "sigmoid", True, init, init_std, num_classes,
                 dropout_input=dropout.get("input", 0.0), dropout_hidden=dropout.get("hidden", 0.0),
                 dropconnect_keep=dropout.get("dropconnect_keep", 1.0))


def pretraining_phases(node: dict) -> list[dict]:
    """The model config of each pretraining phase of an sda/dbn config node (plain dict), in
    order; [] for every other model or with pretrain_epochs 0. Phase i trains layer i on top of
    layers 0..i-1, which it receives frozen from the phases before."""
    name = node.get("name")
    if name not in PRETRAINING or node.get("pretrain_epochs", 1) == 0:
        return []
    hidden = list(node.get("hidden", inspect.signature(PRETRAINING[name]).parameters["hidden"].default))
    common = {k: node[k] for k in ("init", "init_std") if k in node}
    phases = []
    for i, units in enumerate(hidden):
        if name == "sda":
            layer = {"name": "autoencoder", "hidden": units, "below": hidden[:i],
                     "corruption": list(node.get("corruption", (0.1, 0.2, 0.3)))[i],
                     **{k: node[k] for k in ("tied", "loss") if k in node}}
        else:
            layer = {"name": "rbm", "hidden": units, "below": hidden[:i],
                     **{k: node[k] for k in ("k", "persistent", "chains") if k in node}}
        phases.append({**layer, **common})
    return phases


def pretraining_settings(node: dict) -> dict:
    """(epochs, lr, batch_size) of an sda/dbn node's pretraining phases, defaults filled in."""
    builder = PRETRAINING[node["name"]]
    defaults = {p.name: p.default for p in inspect.signature(builder).parameters.values()}
    return {k: node.get(k, defaults[k]) for k in ("pretrain_epochs", "pretrain_lr", "pretrain_batch_size")}


# ---- nearest neighbours: no training ---------------------------------------------------------
@dataclass(frozen=True)
class NearestNeighbours:
    """k-nearest-neighbour classifier: memorises the training split, labels a query by a
    majority vote of its k nearest training images (ties go to the class of the nearer
    neighbours), computed on the device in chunks of train.eval_batch_size queries.

    metric l2:   Euclidean distance between pixel vectors (what users expect).
    metric seed: the seed notebook's own similarity 1/sqrt(sum(a-b)**2), i.e. the distance
                 |sum(a) - sum(b)| between total ink; it squares the *sum*, a bug kept for
                 teaching (SPEC.md section 2).
    """

    k: int
    metric: str
    scan_friendly: ClassVar[bool] = False
    objective: ClassVar[str] = "classify"

    def predict(self, train_x: jax.Array, train_y: jax.Array, queries: jax.Array) -> jax.Array:
        """Labels (Q,) of queries (Q, D) given the memorised train_x (N, D) float32, train_y (N,)."""
        if self.metric == "l2":  # |q - t|^2 up to |q|^2, which does not change the ranking
            dist = jnp.sum(train_x * train_x, -1)[None, :] - 2.0 * queries @ train_x.T
        else:
            dist = jnp.abs(queries.sum(-1)[:, None] - train_x.sum(-1)[None, :])
        _, nearest = jax.lax.top_k(-dist, self.k)  # (Q, k), nearest first
        rank_weight = 1.0 + 1e-3 * (self.k - jnp.arange(self.k)) / self.k  # ties: nearer wins
        votes = jnp.sum(jax.nn.one_hot(train_y[nearest], 10) * rank_weight[None, :, None], axis=1)
        return jnp.argmax(votes, -1)


def knn(k: int = 1, metric: str = "l2", *, num_classes: int, dropout: dict) -> NearestNeighbours:
    """Nearest-neighbour classifier (the seed notebook's 'naive model' with metric=seed, k=1)."""
    require(k >= 1, f"k must be >= 1 (got {k})")
    require(metric in ("l2", "seed"), f"metric must be l2 or seed (got '{metric}')")
    require(not dropout, "regularizers do not apply to knn: it has no weights")
    return NearestNeighbours(k, metric)


PRETRAINING = {"sda": sda, "dbn": dbn}
MODELS: dict[str, Callable] = {"logreg": logreg, "mlp": mlp, "cnn": cnn, "lenet": lenet,
                               "rnn": rnn, "lstm": lstm, "autoencoder": autoencoder, "rbm": rbm,
                               "sda": sda, "dbn": dbn, "knn": knn}
