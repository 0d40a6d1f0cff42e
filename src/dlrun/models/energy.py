"""Energy models with nothing to train: targets for sampler=hmc (model=gaussian).

`gaussian` is the target of DLT's HMC test (code/hmc/test_hmc.py): a Gaussian whose mean and
covariance, and the chains' starting points, are drawn from numpy's RandomState(seed) in DLT's
order, so that dlrun samples exactly the distribution DLT's test samples. The run is the
sampler's (dlrun.train.sample); there are no weights.
"""
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dlrun.config.registry import require


@dataclass(frozen=True)
class Gaussian:
    """N(mu, cov) in `dim` dimensions, energy E(x) = (x - mu)^T cov^-1 (x - mu) / 2, with DLT's
    draws from RandomState(seed): mu = 10 U(0,1)^dim; cov = U(0,1)^(dim x dim), symmetrised,
    unit diagonal; then the chains' starting points, standard normal (chains x dim)."""

    dim: int
    seed: int
    scan_friendly: ClassVar[bool] = False

    def draws(self, chains: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mu (D,), cov (D, D), start (chains, D)) float64, drawn in DLT's order."""
        rng = np.random.RandomState(self.seed)
        mu = rng.rand(self.dim) * 10
        cov = rng.rand(self.dim, self.dim)
        cov = (cov + cov.T) / 2.0
        cov[np.arange(self.dim), np.arange(self.dim)] = 1.0
        return mu, cov, rng.randn(chains, self.dim)

    def theta(self) -> dict:
        """The arrays of gaussian_logdensity: {'mu' (D,), 'precision' (D, D)} float32."""
        mu, cov, _ = self.draws(0)
        return {"mu": jnp.asarray(mu, jnp.float32),
                "precision": jnp.asarray(np.linalg.inv(cov), jnp.float32)}


def gaussian_logdensity(theta: dict, x: jax.Array) -> jax.Array:
    """-E(x) of one position x (D,): DLT's gaussian_energy, negated."""
    d = x - theta["mu"]
    return -0.5 * d @ theta["precision"] @ d


def gaussian(dim: int = 5, seed: int = 123, *, dropout: dict) -> Gaussian:
    """DLT's HMC test target; refused where DLT's draws give no covariance (not positive definite)."""
    require(dim >= 1, f"dim must be >= 1 (got {dim})")
    require(seed >= 0, f"seed must be >= 0 (got {seed})")
    require(not dropout, "regularizers do not apply to model=gaussian: it has no weights")
    model = Gaussian(dim, seed)
    smallest = float(np.linalg.eigvalsh(model.draws(0)[1])[0])
    require(smallest > 0, f"dim={dim} with seed={seed} draws a matrix that is not positive "
                          f"definite (smallest eigenvalue {smallest:.3g}), so no Gaussian; DLT's "
                          f"test uses dim=5 (its default dim=10 fails so)")
    return model
