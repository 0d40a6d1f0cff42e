"""Learning-rate schedules: the `schedule` group. A schedule builder gets the run length in steps
at run time and returns a function of the base lr, lr -> (step -> lr), so that the optimizer's own
`lr` stays the one number a user sweeps."""
from typing import Callable

import optax

from dlrun.config.registry import require

Schedule = Callable[[int], float]


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


def linear(warmup_epochs: float = 0.0, final_fraction: float = 0.0, *, steps_per_epoch: int,
           total_steps: int) -> Callable[[float], Schedule]:
    """Linear warm-up from 0 over `warmup_epochs` (fractions allowed), then linear decay to
    final_fraction*lr at the last step (airbench's triangle when warmup_epochs > 0)."""
    require(warmup_epochs >= 0, f"warmup_epochs must be >= 0 (got {warmup_epochs})")
    require(0 <= final_fraction <= 1, f"final_fraction must be in [0, 1] (got {final_fraction})")
    warmup = int(round(warmup_epochs * steps_per_epoch))
    require(warmup < total_steps, f"warmup_epochs ({warmup_epochs}) must be shorter than the run")

    def of(lr: float) -> Schedule:
        decay = optax.linear_schedule(lr, final_fraction * lr, total_steps - warmup)
        if not warmup:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
    return of


def onecycle(pct_start: float = 0.25, div_factor: float = 25.0, final_div_factor: float = 1e4, *,
             steps_per_epoch: int, total_steps: int) -> Callable[[float], Schedule]:
    """One-cycle (Smith & Topin 2018, optax.cosine_onecycle_schedule): from lr/div_factor up to lr
    over the first pct_start of the run, then down to lr/(div_factor*final_div_factor), cosine."""
    require(0 < pct_start < 1, f"pct_start must be in (0, 1) (got {pct_start})")
    require(div_factor >= 1 and final_div_factor >= 1, "div_factor and final_div_factor must be >= 1")
    return lambda lr: optax.cosine_onecycle_schedule(total_steps, lr, pct_start, div_factor,
                                                     final_div_factor)
