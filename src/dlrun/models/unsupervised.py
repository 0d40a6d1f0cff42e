"""Unsupervised layers: denoising autoencoders and RBMs (CD-k, PCD)."""
from typing import ClassVar, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrun.config.registry import require
from dlrun.models.layers import RECON_LOSSES, _check_common, kernel_init


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
