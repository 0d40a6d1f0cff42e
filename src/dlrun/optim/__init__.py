"""Optimizers and learning-rate schedules: the `optim` and `schedule` config groups.

An optimizer builder takes its constants from the config and the learning-rate schedule (a
function step -> lr built from `schedule=`) as a runtime argument, and returns one optax
GradientTransformation. Regularizers that act on updates (weight decay) are chained after it in
`make_optimizer`, the single place where the full optax chain is assembled.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dlrun.config.registry import require

Schedule = Callable[[int], float]


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


# ---- full-batch methods with a line search ---------------------------------------------------
# Their `update` needs the objective itself: tx.update(grads, state, params, value=loss,
# grad=grads, value_fn=loss_of_params) (optax's extra-args protocol), and one step is one
# iteration on the whole training split (dlrun.train runs them with one step per epoch).
def lbfgs(lr: float = 1.0, memory_size: int = 10, linesearch_steps: int = 20, *,
          schedule: Callable[[float], Schedule]) -> optax.GradientTransformationExtraArgs:
    """L-BFGS (optax.lbfgs): the direction from the last `memory_size` parameter and gradient
    differences, then a zoom line search (strong Wolfe conditions, at most linesearch_steps
    evaluations of the objective). lr scales the direction, i.e. the line search's first trial
    step (1: the quasi-Newton step itself)."""
    _check_lr(lr)
    require(memory_size >= 1 and linesearch_steps >= 1,
            f"memory_size and linesearch_steps must be >= 1 (got {memory_size}, {linesearch_steps})")
    return optax.lbfgs(schedule(lr), memory_size=memory_size,
                       linesearch=optax.scale_by_zoom_linesearch(linesearch_steps,
                                                                 initial_guess_strategy="one"))


class PolakRibiereState(NamedTuple):
    previous_grad: optax.Updates
    direction: optax.Updates
    count: jax.Array  # int32: iterations so far


def _dot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def scale_by_polak_ribiere(restart_every: int = 0) -> optax.GradientTransformation:
    """Nonlinear conjugate-gradient directions, Polak-Ribiere+ (what DLT's logistic_cg gets
    from scipy's fmin_cg): d = g + beta d_prev with beta = max(0, g.(g - g_prev) / |g_prev|^2);
    the direction restarts at g on the first step, every `restart_every` steps (0: never on a
    schedule) and whenever d is not a descent direction (d.g <= 0). Returns d, gradient-signed:
    chain a negative learning rate and a line search after it."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return PolakRibiereState(zeros, zeros, jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        previous = _dot(state.previous_grad, state.previous_grad)
        beta = _dot(grads, jax.tree.map(jnp.subtract, grads, state.previous_grad)) / previous
        restart = (state.count == 0) | (previous == 0)
        if restart_every:
            restart |= state.count % restart_every == 0
        beta = jnp.where(restart, 0.0, jnp.maximum(beta, 0.0))
        direction = jax.tree.map(lambda g, d: g + beta * d, grads, state.direction)
        descent = _dot(direction, grads) > 0
        direction = jax.tree.map(lambda d, g: jnp.where(descent, d, g), direction, grads)
        return direction, PolakRibiereState(grads, direction, state.count + 1)

    return optax.GradientTransformation(init, update)


def cg(lr: float = 1.0, linesearch_steps: int = 20, restart_every: int = 0, *,
       schedule: Callable[[float], Schedule]) -> optax.GradientTransformationExtraArgs:
    """Nonlinear conjugate gradient (scale_by_polak_ribiere) with optax's zoom line search; the
    line search starts from the step size it accepted last time, times lr on the first step.
    Its curvature condition is tightened to 0.1 (Nocedal & Wright's advice for CG) from optax's
    0.9, with which the directions lose conjugacy: measured on the 2-D quadratic of
    tests/test_optim.py, f = 2.1 after 4 iterations with 0.9 against 1e-22 with 0.1."""
    _check_lr(lr)
    require(linesearch_steps >= 1 and restart_every >= 0,
            f"need linesearch_steps >= 1 and restart_every >= 0 (got {linesearch_steps}, {restart_every})")
    return optax.chain(scale_by_polak_ribiere(restart_every), optax.scale_by_learning_rate(schedule(lr)),
                       optax.scale_by_zoom_linesearch(linesearch_steps, curv_rtol=0.1,
                                                      initial_guess_strategy="keep"))


FULL_BATCH = ("lbfgs", "cg")
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "rmsprop": rmsprop,
    "adagrad": adagrad, "adadelta": adadelta, "adam": adam, "rprop": rprop,
    "sign_agreement": sign_agreement, "lbfgs": lbfgs, "cg": cg,
}


# Schedules. A schedule builder gets the run length in steps at run time and returns a function
# of the base lr, so that the optimizer's own `lr` stays the one number a user sweeps.
def constant(*, steps_per_epoch: int, total_steps: int) -> Callable[[float], Schedule]:
    """The learning rate stays at optim.lr."""
    return lambda lr: optax.constant_schedule(lr)


def step(every_epochs: int = 30, factor: float = 0.1, *, steps_per_epoch: int,
         total_steps: int) -> Callable[[float], Schedule]:
    """Multiply the lr by `factor` every `every_epochs` epochs (staircase decay)."""
    require(every_epochs >= 1, f"every_epochs must be >= 1 (got {every_epochs})")
    require(0 < factor <= 1, f"factor must be in (0, 1] (got {factor})")
    return lambda lr: optax.exponential_decay(lr, every_epochs * steps_per_epoch, factor,
                                              staircase=True)


def cosine(warmup_epochs: int = 0, final_fraction: float = 0.0, *, steps_per_epoch: int,
           total_steps: int) -> Callable[[float], Schedule]:
    """Linear warmup over `warmup_epochs`, then cosine decay to final_fraction*lr at the end."""
    require(warmup_epochs >= 0, f"warmup_epochs must be >= 0 (got {warmup_epochs})")
    require(0 <= final_fraction <= 1, f"final_fraction must be in [0, 1] (got {final_fraction})")
    warmup = warmup_epochs * steps_per_epoch
    require(warmup < total_steps, f"warmup_epochs ({warmup_epochs}) must be shorter than the run")
    if not warmup:
        return lambda lr: optax.cosine_decay_schedule(lr, total_steps, alpha=final_fraction)
    return lambda lr: optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps,
                                                         end_value=final_fraction * lr)


SCHEDULES: dict[str, Callable[..., Callable[[float], Schedule]]] = {
    "constant": constant, "step": step, "cosine": cosine,
}


def make_optimizer(base: optax.GradientTransformation,
                   update_steps: list[Callable[[Schedule], optax.GradientTransformation]],
                   lr_schedule: Schedule) -> optax.GradientTransformation:
    """The whole optax chain: the named optimizer, then update-side regularizers."""
    return optax.chain(base, *(make(lr_schedule) for make in update_steps))
