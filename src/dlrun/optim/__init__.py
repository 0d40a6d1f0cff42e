"""Optimization: the `optim`, `schedule` and `regularizer` config groups. The registries are here;
optimizers.py, line_search.py (lbfgs, cg), schedules.py and regularizers.py hold the builders.

An optimizer builder takes its constants from the config and the learning-rate schedule (a
function step -> lr built from `schedule=`) as a runtime argument, and returns one optax
GradientTransformation. Regularizers that act on updates (weight decay) are chained after it in
`make_optimizer`, the single place where the full optax chain is assembled.
"""
from typing import Callable

import optax

from dlrun.config.plugins import Custom
from dlrun.optim.line_search import cg, lbfgs, scale_by_polak_ribiere
from dlrun.optim.optimizers import (adadelta, adagrad, adam, momentum, nesterov, rmsprop,
                                    rprop, scale_by_sign_agreement, sgd, sign_agreement)
from dlrun.optim.schedules import Schedule, constant, cosine, step

FULL_BATCH = ("lbfgs", "cg")
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "rmsprop": rmsprop,
    "adagrad": adagrad, "adadelta": adadelta, "adam": adam, "rprop": rprop,
    "sign_agreement": sign_agreement, "lbfgs": lbfgs, "cg": cg,
    "custom": Custom("optim"),  # optim.target=MODULE:ATTR, any optax factory (dlrun.config.plugins)
}


# Schedules. A schedule builder gets the run length in steps at run time and returns a function
# of the base lr, so that the optimizer's own `lr` stays the one number a user sweeps.
SCHEDULES: dict[str, Callable[..., Callable[[float], Schedule]]] = {
    "constant": constant, "step": step, "cosine": cosine,
}


def make_optimizer(base: optax.GradientTransformation,
                   update_steps: list[Callable[[Schedule], optax.GradientTransformation]],
                   lr_schedule: Schedule) -> optax.GradientTransformation:
    """The whole optax chain: the named optimizer, then update-side regularizers."""
    return optax.chain(base, *(make(lr_schedule) for make in update_steps))


__all__ = ["FULL_BATCH", "OPTIMIZERS", "SCHEDULES", "Schedule", "adadelta", "adagrad", "adam", "cg",
           "constant", "cosine", "lbfgs", "make_optimizer", "momentum", "nesterov", "rmsprop",
           "rprop", "scale_by_polak_ribiere", "scale_by_sign_agreement", "sgd", "sign_agreement",
           "step"]
