"""Weight averaging: the `averaging` config group. The averaged weights live in the training state
(state.extra['average'], so checkpoints and resume carry them) and are what evaluation, the
pictures and params.pkl use; the optimizer keeps training the raw weights.

  ema        Polyak-style exponential moving average, after every step:
             avg <- d * avg + (1 - d) * w, with d = min(decay, (1 + t) / (10 + t)) when warmup
             is on (t = steps taken), so the average forgets its start quickly
  lookahead  Lookahead (Zhang et al. 2019), every k steps: slow <- slow + alpha * (fast - slow),
             then the fast (trained) weights restart from slow
"""
from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp

from dlrun.config.registry import require


@dataclass(frozen=True)
class Averaging:
    kind: str  # ema | lookahead
    decay: float = 0.999
    warmup: bool = True
    every: int = 5
    alpha: float = 0.5

    def update(self, average: dict, params: dict, step: jax.Array) -> tuple[dict, dict]:
        """(average, params) after optimizer step number `step` (1-based) produced `params`."""
        if self.kind == "ema":
            t = step.astype(jnp.float32)
            d = jnp.minimum(self.decay, (1.0 + t) / (10.0 + t)) if self.warmup else self.decay
            return jax.tree.map(lambda a, w: d * a + (1.0 - d) * w, average, params), params
        sync = step % self.every == 0
        slow = jax.tree.map(lambda s, w: jnp.where(sync, s + self.alpha * (w - s), s), average, params)
        return slow, jax.tree.map(lambda s, w: jnp.where(sync, s, w), slow, params)


def none() -> Optional[Averaging]:
    """No averaging: evaluation uses the trained weights."""
    return None


def ema(decay: float = 0.999, warmup: bool = True) -> Averaging:
    require(0 < decay < 1, f"decay must be in (0, 1) (got {decay})")
    return Averaging("ema", decay=decay, warmup=warmup)


def lookahead(every: int = 5, alpha: float = 0.5) -> Averaging:
    require(every >= 1, f"every must be >= 1 step (got {every})")
    require(0 < alpha <= 1, f"alpha must be in (0, 1] (got {alpha})")
    return Averaging("lookahead", every=every, alpha=alpha)


AVERAGINGS = {"none": none, "ema": ema, "lookahead": lookahead}
