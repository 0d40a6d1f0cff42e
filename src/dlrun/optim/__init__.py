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
from dlrun.optim import groups
from dlrun.optim.line_search import cg, lbfgs, scale_by_polak_ribiere
from dlrun.optim.modern import adamw, lamb, muon
from dlrun.optim.optimizers import (adadelta, adagrad, adam, momentum, nesterov, rmsprop,
                                    rprop, scale_by_sign_agreement, sgd, sign_agreement)
from dlrun.optim.schedules import Schedule, constant, cosine, linear, onecycle, step

FULL_BATCH = ("lbfgs", "cg")
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "rmsprop": rmsprop,
    "adagrad": adagrad, "adadelta": adadelta, "adam": adam, "rprop": rprop,
    "sign_agreement": sign_agreement, "lbfgs": lbfgs, "cg": cg,
    "adamw": adamw, "lamb": lamb, "muon": muon,
    "custom": Custom("optim"),  # optim.target=MODULE:ATTR, any optax factory (dlrun.config.plugins)
}


# Schedules. A schedule builder gets the run length in steps at run time and returns a function
# of the base lr, so that the optimizer's own `lr` stays the one number a user sweeps.
SCHEDULES: dict[str, Callable[..., Callable[[float], Schedule]]] = {
    "constant": constant, "step": step, "cosine": cosine, "linear": linear, "onecycle": onecycle,
}


def make_optimizer(base: optax.GradientTransformation,
                   update_steps: list[Callable[[Schedule], optax.GradientTransformation]],
                   lr_schedule: Schedule, clip_norm: float = 0.0,
                   param_groups: groups.ParamGroups = groups.ParamGroups()
                   ) -> optax.GradientTransformation:
    """The whole optax chain: gradient clipping by global norm (train.clip_norm > 0), the named
    optimizer, then update-side regularizers; per parameter group (param_groups) when set."""
    if param_groups.plain:
        tx = optax.chain(base, *(make(lr_schedule) for make in update_steps))
    else:
        tx = groups.grouped(param_groups, base, update_steps, lr_schedule)
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


__all__ = ["FULL_BATCH", "OPTIMIZERS", "SCHEDULES", "Schedule", "adadelta", "adagrad", "adam",
           "adamw", "cg", "constant", "cosine", "groups", "lamb", "lbfgs", "linear", "muon",
           "onecycle", "make_optimizer", "momentum", "nesterov", "rmsprop",
           "rprop", "scale_by_polak_ribiere", "scale_by_sign_agreement", "sgd", "sign_agreement",
           "step"]
