"""Hybrid Monte Carlo with DLT's adaptive step size (`sampler=hmc`), on BlackJAX's HMC kernel.

One HMC move of a chain (BlackJAX, `blackjax.mcmc.hmc.build_kernel`): draw a unit-mass momentum,
run `leapfrog_steps` velocity-Verlet (leapfrog) steps of the current step size, accept the end
point with the Metropolis-Hastings probability min(1, exp(H_old - H_new)) per chain, else stay.
Around it, DLT's `hmc.py` (`hmc_updates`, after Ranzato's code): all chains share one step size,
adapted after every move from the batch's acceptance, with the *old* running average (DLT's
updates are simultaneous):

    step <- clip(step * inc if avg > target else step * dec, step_min, step_max)
    avg  <- slowness * avg + (1 - slowness) * mean over chains of accepted

starting from avg = target. `adapt: always` adapts on every move as DLT does (which, strictly,
makes the kept moves a chain with a changing kernel); `adapt: burnin` freezes the step size
after the burn-in, so the kept moves are an ordinary HMC chain.

The whole run (burn-in and kept moves, the chains vmapped) is one jitted program of two
`lax.scan`s. The target is `logdensity(theta, x)`: a pure function of its arrays `theta` and
one position `x` (D,), passed as arguments so that a model's weights are not baked into the
program as constants. Randomness is explicit: the key is split once per phase, once per move
and once per chain.
"""
import dataclasses
from dataclasses import dataclass
from functools import partial
from importlib.util import find_spec
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dlrun.config.registry import require

ADAPT = ("always", "burnin")  # adapt: on every move (DLT) | during the burn-in only
EXTRA_HINT = "pip install -e '.[hmc]' (BlackJAX; make installs it)"


@dataclass(frozen=True)
class HMCConfig:
    """The `sampler` node of sampler=hmc (conf/sampler/hmc.yaml gives each key's meaning)."""

    chains: int = 3
    burnin: int = 1000
    samples: int = 1000
    thin: int = 1
    leapfrog_steps: int = 20
    initial_step: float = 0.01
    step_min: float = 0.001
    step_max: float = 0.25
    step_inc: float = 1.02
    step_dec: float = 0.98
    target_acceptance: float = 0.9
    slowness: float = 0.9
    adapt: str = "always"
    temperature: float = 1.0
    seed: int = 0

    @property
    def moves(self) -> int:
        """HMC moves per chain in all: the burn-in and the kept ones with those thinned out."""
        return self.burnin + self.samples * self.thin


def none() -> None:
    """No sampling: the run trains its model and nothing more."""
    return None


def hmc(chains: int = 3, burnin: int = 1000, samples: int = 1000, thin: int = 1,
        leapfrog_steps: int = 20, initial_step: float = 0.01, step_min: float = 0.001,
        step_max: float = 0.25, step_inc: float = 1.02, step_dec: float = 0.98,
        target_acceptance: float = 0.9, slowness: float = 0.9, adapt: str = "always",
        temperature: float = 1.0, seed: int = 0) -> HMCConfig:
    """Hybrid Monte Carlo from the model's energy; the defaults are DLT's HMC_sampler's."""
    require(chains >= 1, f"chains must be >= 1 (got {chains})")
    require(burnin >= 0, f"burnin must be >= 0 moves (got {burnin})")
    require(samples >= 1, f"samples must be >= 1 kept move (got {samples})")
    require(thin >= 1, f"thin must be >= 1 (got {thin})")
    require(leapfrog_steps >= 1, f"leapfrog_steps must be >= 1 (got {leapfrog_steps})")
    require(0 < step_min <= step_max,
            f"step_min and step_max must satisfy 0 < step_min <= step_max (got {step_min}, {step_max})")
    require(step_min <= initial_step <= step_max,
            f"initial_step must lie in [step_min, step_max] = [{step_min}, {step_max}] "
            f"(got {initial_step})")
    require(step_inc >= 1 and 0 < step_dec <= 1,
            f"step_inc must be >= 1 and step_dec in (0, 1] (got {step_inc}, {step_dec})")
    require(0 < target_acceptance < 1, f"target_acceptance must be in (0, 1) (got {target_acceptance})")
    require(0 <= slowness < 1, f"slowness must be in [0, 1) (got {slowness})")
    require(adapt in ADAPT, f"adapt must be one of {', '.join(ADAPT)} (got '{adapt}')")
    require(temperature > 0, f"temperature must be > 0 (got {temperature})")
    require(seed >= 0, f"seed must be >= 0 (got {seed})")
    require(find_spec("blackjax") is not None, f"sampler=hmc needs BlackJAX: {EXTRA_HINT}")
    return HMCConfig(chains, burnin, samples, thin, leapfrog_steps, initial_step, step_min, step_max,
                     step_inc, step_dec, target_acceptance, slowness, adapt, temperature, seed)


class Adaptation(NamedTuple):
    """DLT's shared step-size state: the step every chain uses, the running acceptance."""

    step: jax.Array  # () leapfrog step size
    avg: jax.Array  # () running average of the batch's acceptance


def adapt_step(cfg: HMCConfig, a: Adaptation, accepted: jax.Array) -> Adaptation:
    """DLT's hmc_updates after one move whose chains were `accepted` (C,) bool: the new step
    from the *old* average, then the new average."""
    step = jnp.clip(jnp.where(a.avg > cfg.target_acceptance, a.step * cfg.step_inc,
                              a.step * cfg.step_dec), cfg.step_min, cfg.step_max)
    avg = cfg.slowness * a.avg + (1.0 - cfg.slowness) * jnp.mean(accepted.astype(jnp.float32))
    return Adaptation(step.astype(a.step.dtype), avg.astype(a.avg.dtype))


class Trace(NamedTuple):
    """Per move (M = burnin + samples * thin moves): what the trace picture shows."""

    step: jax.Array  # (M,) the step size the move used
    accepted: jax.Array  # (M,) fraction of the chains that accepted
    avg: jax.Array  # (M,) DLT's running acceptance after the move
    energy: jax.Array  # (M,) mean over chains of -log density after the move


class Draws(NamedTuple):
    """What `run_chains` returns."""

    samples: jax.Array  # (S, C, D) the kept positions: every thin-th move after the burn-in
    trace: Trace
    final: Adaptation  # the step size and running acceptance after the last move


Logdensity = Callable[[object, jax.Array], jax.Array]  # (theta, x (D,)) -> () log density


def run_chains(cfg: HMCConfig, logdensity: Logdensity, theta, start: jax.Array,
               key: jax.Array) -> Draws:
    """`cfg.chains` HMC chains from `start` (C, D) for cfg.burnin moves, then cfg.samples kept
    moves (each the last of `thin`); one jitted program."""
    run = compile_chains(cfg, logdensity, theta, start, key)
    return run(theta, jnp.asarray(start, jnp.float32), key)


def compile_chains(cfg: HMCConfig, logdensity: Logdensity, theta, start: jax.Array,
                   key: jax.Array) -> Callable:
    """run_chains compiled for these shapes: (theta, start, key) -> Draws (so that a run can
    time compiling and sampling apart)."""
    if start.shape[0] != cfg.chains:
        raise ValueError(f"start has {start.shape[0]} rows for {cfg.chains} chains")
    program = dataclasses.replace(cfg, seed=0, temperature=1.0)  # those reach it as the key, theta
    return _run.lower(program, logdensity, theta, jnp.asarray(start, jnp.float32), key).compile()


@partial(jax.jit, static_argnums=(0, 1))
def _run(cfg: HMCConfig, logdensity: Logdensity, theta, start: jax.Array, key: jax.Array) -> Draws:
    from blackjax.mcmc import hmc as blackjax_hmc  # the optional `hmc` extra (checked by hmc())

    target = partial(logdensity, theta)
    states = jax.vmap(blackjax_hmc.init, in_axes=(0, None))(start, target)
    adaptation = Adaptation(jnp.float32(cfg.initial_step), jnp.float32(cfg.target_acceptance))
    move = partial(hmc_move, cfg, blackjax_hmc.build_kernel(), target)
    burn_key, keep_key = jax.random.split(key)
    (states, adaptation), burn = jax.lax.scan(partial(move, adapting=True), (states, adaptation),
                                              jax.random.split(burn_key, cfg.burnin))

    def kept(carry, k):  # `thin` moves, the position after the last one kept
        carry, trace = jax.lax.scan(partial(move, adapting=cfg.adapt == "always"), carry,
                                    jax.random.split(k, cfg.thin))
        return carry, (carry[0].position, trace)

    (states, adaptation), (samples, keep) = jax.lax.scan(kept, (states, adaptation),
                                                         jax.random.split(keep_key, cfg.samples))
    keep = jax.tree.map(lambda t: t.reshape(-1), keep)  # (S, thin) -> (S * thin,)
    return Draws(samples, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), burn, keep), adaptation)


def hmc_move(cfg: HMCConfig, kernel: Callable, target: Callable, carry: tuple, key: jax.Array,
             adapting: bool) -> tuple:
    """One HMC move of every chain at the shared step size, then DLT's step-size update
    (when adapting; the running acceptance is tracked either way)."""
    states, adaptation = carry
    chain_keys = jax.random.split(key, cfg.chains)
    mass = jnp.ones(states.position.shape[-1], jnp.float32)  # unit mass (DLT: K = |v|^2 / 2)
    states, info = jax.vmap(lambda k, s: kernel(k, s, target, adaptation.step, mass,
                                                cfg.leapfrog_steps))(chain_keys, states)
    new = adapt_step(cfg, adaptation, info.is_accepted)
    if not adapting:
        new = Adaptation(adaptation.step, new.avg)
    trace = Trace(adaptation.step, jnp.mean(info.is_accepted.astype(jnp.float32)), new.avg,
                  -jnp.mean(states.logdensity))
    return (states, new), trace


def described(cfg: Optional[HMCConfig]) -> str:
    """One line of the sampler's settings, for the log."""
    if cfg is None:
        return "none"
    return (f"hmc: {cfg.chains} chains, {cfg.burnin} burn-in + {cfg.samples} kept moves"
            f"{f' (every {cfg.thin}th)' if cfg.thin > 1 else ''}, {cfg.leapfrog_steps} leapfrog "
            f"steps, step {cfg.initial_step:g} in [{cfg.step_min:g}, {cfg.step_max:g}] adapted "
            f"to acceptance {cfg.target_acceptance:g} ({cfg.adapt}), "
            f"{f'temperature {cfg.temperature:g}, ' if cfg.temperature != 1 else ''}seed {cfg.seed}")
