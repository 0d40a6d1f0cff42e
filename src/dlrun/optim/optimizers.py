"""The first-order optimizers of the `optim` group: each builder takes its constants from the
config and the learning-rate schedule as a runtime argument and returns one optax transformation."""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dlrun.config.registry import require
from dlrun.optim.schedules import Schedule



def _check_lr(lr: float) -> None:
    require(lr > 0, f"lr must be > 0 (got {lr})")


def _check_unit(name: str, value: float) -> None:
    require(0 <= value < 1, f"{name} must be in [0, 1) (got {value})")


def sgd(lr: float = 0.05, *, schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """Plain minibatch SGD: p <- p - lr * g."""
    _check_lr(lr)
    return optax.sgd(schedule(lr))


def momentum(lr: float = 0.05, beta: float = 0.9, form: str = "classical", *,
             schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """Momentum SGD.

    classical: m <- beta*m + g,         p <- p - lr*m   (Polyak; optax.sgd(momentum=beta))
    averaged:  m <- beta*m + (1-beta)*g, p <- p - lr*m   (the slides' form, beta 0.8 there;
               an exponential moving average of gradients without debiasing)
    """
    _check_lr(lr)
    _check_unit("beta", beta)
    require(form in ("classical", "averaged"), f"form must be classical or averaged (got '{form}')")
    if form == "classical":
        return optax.sgd(schedule(lr), momentum=beta)
    return optax.chain(optax.ema(beta, debias=False), optax.scale_by_learning_rate(schedule(lr)))


def nesterov(lr: float = 0.05, beta: float = 0.9, *,
             schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """Nesterov accelerated gradient (Sutskever et al. 2013 form, as in optax)."""
    _check_lr(lr)
    _check_unit("beta", beta)
    return optax.sgd(schedule(lr), momentum=beta, nesterov=True)


def rmsprop(lr: float = 0.001, rho: float = 0.9, eps: float = 1e-6, eps_in_sqrt: bool = True,
            initial_scale: float = 0.0, *, schedule: Callable[[float], Schedule]
            ) -> optax.GradientTransformation:
    """RMSprop: acc <- rho*acc + (1-rho)*g^2, p <- p - lr*g/sqrt(acc + eps).

    Defaults are the seed notebook's (lr 0.001, rho 0.9, eps 1e-6 inside the square root,
    accumulator starting at 0). The slides' form starts the accumulator at 1: initial_scale=1.
    """
    _check_lr(lr)
    _check_unit("rho", rho)
    require(eps >= 0 and initial_scale >= 0, "eps and initial_scale must be >= 0")
    return optax.rmsprop(schedule(lr), decay=rho, eps=eps, eps_in_sqrt=eps_in_sqrt,
                         initial_scale=initial_scale)


def adagrad(lr: float = 0.01, initial_accumulator: float = 0.1, eps: float = 1e-7, *,
            schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """Adagrad (Duchi et al. 2011): per-parameter lr divided by sqrt of summed squared grads."""
    _check_lr(lr)
    require(initial_accumulator >= 0 and eps >= 0, "initial_accumulator and eps must be >= 0")
    return optax.adagrad(schedule(lr), initial_accumulator_value=initial_accumulator, eps=eps)


def adadelta(lr: float = 1.0, rho: float = 0.95, eps: float = 1e-6, *,
             schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """Adadelta (Zeiler 2012); rho 0.95 and eps 1e-6 as in the paper, lr 1.0 = no extra scaling."""
    _check_lr(lr)
    _check_unit("rho", rho)
    return optax.adadelta(schedule(lr), rho=rho, eps=eps)


def adam(lr: float = 0.001, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
         schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015) with the paper's defaults."""
    _check_lr(lr)
    _check_unit("b1", b1)
    _check_unit("b2", b2)
    return optax.adam(schedule(lr), b1=b1, b2=b2, eps=eps)


def rprop(lr: float = 0.001, eta_minus: float = 0.5, eta_plus: float = 1.2,
          min_step: float = 1e-6, max_step: float = 50.0, *,
          schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """Rprop (Riedmiller & Braun 1993; the slides' sign-only steps), optax's form: each
    parameter moves by its own step size against the sign of its gradient; the step grows by
    eta_plus while the sign holds and shrinks by eta_minus when it flips (that step skipped).
    lr is the initial step size; a schedule scales every step size (constant: unchanged)."""
    _check_lr(lr)
    require(0 < eta_minus < 1 < eta_plus, f"need 0 < eta_minus < 1 < eta_plus (got {eta_minus}, "
                                          f"{eta_plus})")
    require(0 < min_step <= max_step, f"need 0 < min_step <= max_step (got {min_step}, {max_step})")
    lr_of = schedule(lr)
    return optax.chain(
        optax.scale_by_rprop(lr, eta_minus, eta_plus, min_step, max_step),
        optax.scale_by_schedule(lambda t: lr_of(t) / lr), optax.scale(-1.0))


class SignAgreementState(NamedTuple):
    rates: optax.Updates      # per-parameter learning-rate multipliers
    previous: optax.Updates   # the previous step's gradient


def scale_by_sign_agreement(increase: float = 0.05, decrease: float = 0.95,
                            min_rate: float = 0.01, max_rate: float = 10.0
                            ) -> optax.GradientTransformation:
    """The slides' adaptive per-parameter learning rates ("delta-bar-delta"): each parameter
    has a rate, starting at 1. Where this step's gradient has the sign of the previous one the
    rate grows by `increase` (additive), where the sign flips it is multiplied by `decrease`;
    rates are kept in [min_rate, max_rate] (the slides note that a bound is needed). Returns
    rate * g; scale by -lr after it."""

    def init(params):
        ones = jax.tree.map(jnp.ones_like, params)
        return SignAgreementState(ones, jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        def new_rate(rate, g, prev):
            agree = g * prev
            rate = jnp.where(agree > 0, rate + increase, jnp.where(agree < 0, rate * decrease, rate))
            return jnp.clip(rate, min_rate, max_rate)

        rates = jax.tree.map(new_rate, state.rates, grads, state.previous)
        updates = jax.tree.map(lambda r, g: r * g, rates, grads)
        return updates, SignAgreementState(rates, grads)

    return optax.GradientTransformation(init, update)


def sign_agreement(lr: float = 0.1, increase: float = 0.05, decrease: float = 0.95,
                   min_rate: float = 0.01, max_rate: float = 10.0, *,
                   schedule: Callable[[float], Schedule]) -> optax.GradientTransformation:
    """SGD with the slides' per-parameter rates (scale_by_sign_agreement): p <- p - lr*rate*g."""
    _check_lr(lr)
    require(increase >= 0 and 0 < decrease <= 1,
            f"need increase >= 0 and decrease in (0, 1] (got {increase}, {decrease})")
    require(0 < min_rate <= 1 <= max_rate,
            f"need 0 < min_rate <= 1 <= max_rate (rates start at 1; got {min_rate}, {max_rate})")
    return optax.chain(scale_by_sign_agreement(increase, decrease, min_rate, max_rate),
                       optax.scale_by_learning_rate(schedule(lr)))
