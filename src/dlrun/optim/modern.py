"""The optimizers of modern recipes, as optax implements them: AdamW, LAMB and Muon. Weight decay
here is the optimizer's own (decoupled, times the learning rate) and skips 1-D parameters (biases,
normalisation scales), as optax's masks are set below."""
from typing import Callable

import jax
import optax
import optax.contrib

from dlrun.config.registry import require
from dlrun.optim.schedules import Schedule


def _matrices(params):
    """True for the weights decayed and orthogonalised: kernels (2-D dense, 4-D conv)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _check(lr: float, b1: float, b2: float, weight_decay: float) -> None:
    require(lr > 0, f"lr must be > 0 (got {lr})")
    require(0 <= b1 < 1 and 0 <= b2 < 1, f"b1 and b2 must be in [0, 1) (got {b1}, {b2})")
    require(weight_decay >= 0, f"weight_decay must be >= 0 (got {weight_decay})")


def adamw(lr: float = 0.001, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-4, *, schedule: Callable[[float], Schedule]
          ) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): p <- p - lr*(adam + wd*p)."""
    _check(lr, b1, b2, weight_decay)
    return optax.adamw(schedule(lr), b1, b2, eps, weight_decay=weight_decay, mask=_matrices)


def lamb(lr: float = 0.001, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.0, *, schedule: Callable[[float], Schedule]
         ) -> optax.GradientTransformation:
    """LAMB (You et al. 2020): AdamW's step rescaled per layer by ||p|| / ||step|| (large batches)."""
    _check(lr, b1, b2, weight_decay)
    return optax.lamb(schedule(lr), b1, b2, eps, weight_decay=weight_decay, mask=_matrices)


def _muon_dims(params):
    """Muon's view of each kernel as a matrix: (fan_in, fan_out); conv kernels (kh, kw, Cin,
    Cout) as (kh*kw*Cin, Cout); other parameters (None) go to its AdamW."""
    def dims(p):
        if p.ndim < 2:
            return None
        return optax.contrib.MuonDimensionNumbers(tuple(range(p.ndim - 1)), p.ndim - 1)
    return jax.tree.map(dims, params)


def muon(lr: float = 0.02, beta: float = 0.95, weight_decay: float = 0.0, adam_lr: float = 0.001,
         *, schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """Muon (Jordan et al. 2024, optax.contrib.muon): Nesterov momentum orthogonalised by
    Newton-Schulz iterations for every kernel (conv kernels as (kh*kw*Cin, Cout) matrices);
    biases and normalisation parameters take AdamW at adam_lr (scaled by the same schedule)."""
    _check(lr, beta, 0.0, weight_decay)
    require(adam_lr > 0, f"adam_lr must be > 0 (got {adam_lr})")
    lr_of = schedule(lr)
    return optax.contrib.muon(lr_of, beta=beta, weight_decay=weight_decay,
                              weight_decay_mask=_matrices,
                              adam_learning_rate=lambda t: lr_of(t) * (adam_lr / lr),
                              muon_weight_dimension_numbers=_muon_dims)
