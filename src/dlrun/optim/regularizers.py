"""Regularizers: the `regularizer` config group, combinable as a list (`regularizer=[dropout,l2]`).

Each regularizer acts where it belongs (STYLE.md, principle 4):
  l1, l2                terms added to the loss     -> `Regularization.loss_terms`
  weight_decay,         steps of the optax chain    -> `Regularization.update_steps`
  max_norm
  dropout, dropconnect  arguments of the model      -> `Regularization.dropout`
Weight penalties apply to weight matrices and convolution kernels only (arrays of rank >= 2),
not to biases, unless `include_bias=true`.
"""
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from dlrun.config.registry import build, require

LossTerm = Callable[[dict], jax.Array]


@dataclass(frozen=True)
class Regularization:
    """What the selected regularizers contribute, grouped by where they act."""

    loss_terms: tuple[LossTerm, ...] = ()
    update_steps: tuple[Callable[[optax.Schedule], optax.GradientTransformation], ...] = ()
    dropout: dict = field(default_factory=dict)  # rates by place: input, conv, hidden

    def __add__(self, other: "Regularization") -> "Regularization":
        return Regularization(self.loss_terms + other.loss_terms,
                              self.update_steps + other.update_steps,
                              {**self.dropout, **other.dropout})

    def penalty(self, params: dict) -> jax.Array:
        """Sum of the loss terms for `params` (0.0 when there are none)."""
        return sum((term(params) for term in self.loss_terms), jnp.zeros((), jnp.float32))


def penalized(params: dict, include_bias: bool) -> list[jax.Array]:
    """The arrays a weight penalty applies to."""
    return [p for p in jax.tree.leaves(params) if include_bias or p.ndim >= 2]


def none() -> Regularization:
    """No regularization."""
    return Regularization()


REDUCTIONS = {"sum": jnp.sum, "mean": jnp.mean}


def _penalty(coef: float, include_bias: bool, reduce: str, fn: Callable) -> LossTerm:
    require(coef >= 0, f"coef must be >= 0 (got {coef})")
    require(reduce in REDUCTIONS, f"reduce must be sum or mean (got '{reduce}')")
    red = REDUCTIONS[reduce]
    return lambda p: coef * sum(red(fn(w)) for w in penalized(p, include_bias))


def l1(coef: float = 1e-5, include_bias: bool = False, reduce: str = "sum") -> Regularization:
    """Loss += coef * sum over weight arrays W of sum(|W|) (DLT's L1 term), or of mean(|W|)
    with reduce=mean (the slides' form: 0.01 * sum of per-tensor means)."""
    return Regularization(loss_terms=(_penalty(coef, include_bias, reduce, jnp.abs),))


def l2(coef: float = 1e-4, include_bias: bool = False, reduce: str = "sum") -> Regularization:
    """Loss += coef * sum over weight arrays W of sum(W^2) (DLT's L2_sqr term; coef 1e-4 as in
    DLT's MLP), or of mean(W^2) with reduce=mean (the slides' form)."""
    return Regularization(loss_terms=(_penalty(coef, include_bias, reduce, jnp.square),))


def weight_decay(rate: float = 5e-4, include_bias: bool = False) -> Regularization:
    """Decoupled weight decay, a step of the optax chain after the optimizer:
    p <- p - lr_t * rate * p at every step (as in AdamW), independent of the gradient."""
    require(rate >= 0, f"rate must be >= 0 (got {rate})")

    def step(lr: optax.Schedule) -> optax.GradientTransformation:
        mask = lambda params: jax.tree.map(lambda w: include_bias or w.ndim >= 2, params)
        return optax.add_decayed_weights(lambda count: -rate * lr(count), mask=mask)

    return Regularization(update_steps=(step,))


def max_norm(max: float = 3.0) -> Regularization:
    """Max-norm constraint, a step of the optax chain: after every update, each unit's incoming
    weight vector (a kernel's slice along its last axis) is scaled down to L2 norm <= max
    (Srebro & Shraibman 2005; Hinton et al. 2012 with dropout). Biases are left alone."""
    require(max > 0, f"max must be > 0 (got {max})")

    def project(w: jax.Array) -> jax.Array:
        if w.ndim < 2:
            return w
        norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(range(w.ndim - 1)), keepdims=True))
        return w * jnp.minimum(1.0, max / jnp.maximum(norm, 1e-12))

    def step(lr: optax.Schedule) -> optax.GradientTransformation:
        def update(updates, state, params):
            moved = jax.tree.map(lambda p, u: project(p + u) - p, params, updates)
            return moved, state
        return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

    return Regularization(update_steps=(step,))


def dropconnect(keep: float = 0.75) -> Regularization:
    """DropConnect, the slides' "dropout": a Bernoulli(keep) mask on the dense layers' WEIGHTS
    during training, and the weights scaled by `keep` at evaluation (no inverted scaling). An
    argument of the model (logreg, mlp, and the dense layers of cnn and lenet)."""
    require(0 < keep <= 1, f"keep must be a keep probability in (0, 1] (got {keep})")
    return Regularization(dropout={"dropconnect_keep": keep})


def dropout(input: float = 0.2, hidden: float = 0.5, conv: float = 0.2) -> Regularization:
    """Dropout (inverted scaling, as the seed notebook): drop probabilities on the input, after
    each hidden dense layer, and after each conv block (conv models only). Off at evaluation."""
    for name, rate in (("input", input), ("hidden", hidden), ("conv", conv)):
        require(0 <= rate < 1, f"{name} must be a drop probability in [0, 1) (got {rate})")
    return Regularization(dropout={"input": input, "hidden": hidden, "conv": conv})


REGULARIZERS: dict[str, Callable[..., Regularization]] = {
    "none": none, "l1": l1, "l2": l2, "weight_decay": weight_decay, "max_norm": max_norm,
    "dropout": dropout, "dropconnect": dropconnect,
}


def build_all(node) -> Regularization:
    """Combine every regularizer selected under `regularizer:` (one key per selected option)."""
    total = Regularization()
    for name in node:
        sub = dict(node[name] or {})
        total = total + build("regularizer", REGULARIZERS, {"name": name, **sub},
                              prefix=f"regularizer.{name}")
    return total
