"""What HMC samples for each model that has an energy: a log density, its arrays, where the
chains start and how a sampled position maps back to the model's visible space.

  model=gaussian  DLT's test Gaussian (dlrun.models.energy): x itself, chains started at DLT's
                  draws
  model=rbm       a first-layer binary RBM's free energy over a continuous relaxation of its
                  visibles, v in (0, 1)^D (below)

Each density is exp(-E / T), T = sampler.temperature (theta['beta'] = 1 / T): T = 1 is the
model's own distribution, T < 1 sharpens it towards its modes (the Gaussian's covariance
scales by T).

The RBM's relaxation. HMC moves on all of R^D, and its leapfrog integrator knows no walls, so
the chains move an unconstrained u with v = sigmoid(u), and the density of u carries the
change of variables' Jacobian:

    log p(u) = -F(sigmoid(u)) + sum_i [log sigmoid(u_i) + log sigmoid(-u_i)]

so that v has density proportional to exp(-F(v)) on the open cube (uniform base measure),
the free energy's own Boltzmann density there, and no clipping or reflection is needed.
Without the Jacobian the density of u would not be normalisable (exp(-F) stays bounded away
from 0 as u goes to infinity) and chains would drift to the corners without end. Chains start
from uniform noise v ~ U(0, 1)^D, i.e. u ~ Logistic(0, 1).

What it gives. The relaxation keeps F's values at the corners (the binary images) but spreads
each pixel over [0, 1]: given the hidden units, pixel i has density proportional to
exp(a_i v_i) (a_i its field), not the binary RBM's sigmoid(a_i) at 1. An MNIST RBM's free
energies span a few hundred nats, while the cube's volume near any one corner is exponentially
small in D = 784, so at T = 1 the samples are mostly grey noise: honest, but they show little
(docs/recipes.md measures it). Their mean free energy is still below uniform noise's, always in
expectation (Gibbs' inequality: E_p[F] <= -log Z <= E_uniform[F]). At T = 0.1 the chains settle
into the RBM's low-energy modes (strokes and blobs, as low in F as the test images) and each
stays in its own. (A Gaussian-visible RBM, whose visibles need no relaxation, has no model in
dlrun.)
"""
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dlrun.models.energy import Gaussian, gaussian_logdensity
from dlrun.models.unsupervised import RBM, free_energy
from dlrun.sampling.hmc import Logdensity


@dataclass(frozen=True)
class Target:
    logdensity: Logdensity  # (theta, x (D,)) -> () log density up to a constant; module level
    theta: Any  # its arrays
    start: jax.Array  # (C, D) float32: the chains' starting positions
    to_visible: Callable[[jax.Array], jax.Array]  # (..., D) positions -> the model's visibles


def has_energy(model) -> bool:
    """Whether HMC can sample the model: the test Gaussian, or an RBM whose visibles are the
    input (a first layer, model.below=[])."""
    return isinstance(model, Gaussian) or (isinstance(model, RBM) and not model.below)


def gaussian_target(model: Gaussian, chains: int, temperature: float = 1.0) -> Target:
    """DLT's test: its Gaussian, chains started at its standard-normal draws."""
    start = jnp.asarray(model.draws(chains)[2], jnp.float32)
    return Target(tempered_gaussian_logdensity, {**model.theta(), "beta": beta(temperature)},
                  start, lambda x: x)


def beta(temperature: float) -> jax.Array:
    return jnp.float32(1.0 / temperature)


def tempered_gaussian_logdensity(theta: dict, x: jax.Array) -> jax.Array:
    """-E(x) / T of DLT's Gaussian at one position x (D,)."""
    return theta["beta"] * gaussian_logdensity(theta, x)


def relaxed_rbm_logdensity(theta: dict, u: jax.Array) -> jax.Array:
    """log density of u (D,) whose v = sigmoid(u) has density exp(-F(v) / T) on the cube
    (F: the RBM's free energy)."""
    v = jax.nn.sigmoid(u)
    log_jacobian = jnp.sum(jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u))
    return -theta["beta"] * free_energy(v, theta["w"], theta["hb"], theta["vb"]) + log_jacobian


def rbm_theta(params: dict) -> dict:
    """A first-layer RBM's {'w' (D, H), 'hb' (H,), 'vb' (D,)} from its parameters."""
    return {"w": jnp.asarray(params["hidden_0"]["kernel"], jnp.float32),
            "hb": jnp.asarray(params["hidden_0"]["bias"], jnp.float32),
            "vb": jnp.asarray(params["visible_0"]["bias"], jnp.float32)}


def rbm_target(params: dict, chains: int, key: jax.Array, temperature: float = 1.0) -> Target:
    """A trained first-layer RBM's relaxed free energy, chains started from uniform noise."""
    theta = {**rbm_theta(params), "beta": beta(temperature)}
    start = jax.random.logistic(key, (chains, theta["vb"].shape[0]), jnp.float32)  # logit(U(0,1))
    return Target(relaxed_rbm_logdensity, theta, start, jax.nn.sigmoid)


def rbm_free_energy(params: dict, v: np.ndarray) -> np.ndarray:
    """F(v) per row of v (N, D) in [0, 1], float64 on the host (for the run's statistics)."""
    t = {k: np.asarray(a, np.float64) for k, a in rbm_theta(params).items()}
    v = np.asarray(v, np.float64)
    return -v @ t["vb"] - np.sum(np.logaddexp(0.0, v @ t["w"] + t["hb"]), axis=-1)
