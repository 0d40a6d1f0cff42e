"""Nearest neighbours (model=knn): no training, the training split is the model."""
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from dlrun.config.registry import require


@dataclass(frozen=True)
class NearestNeighbours:
    """k-nearest-neighbour classifier: memorises the training split, labels a query by a
    majority vote of its k nearest training images (ties go to the class of the nearer
    neighbours), computed on the device in chunks of train.eval_batch_size queries.

    metric l2:   Euclidean distance between pixel vectors (what users expect).
    metric seed: the seed notebook's own similarity 1/sqrt(sum(a-b)**2), i.e. the distance
                 |sum(a) - sum(b)| between total ink; it squares the *sum*, a bug kept for
                 teaching (SPEC.md section 2).
    """

    k: int
    metric: str
    scan_friendly: ClassVar[bool] = False
    objective: ClassVar[str] = "classify"

    def predict(self, train_x: jax.Array, train_y: jax.Array, queries: jax.Array) -> jax.Array:
        """Labels (Q,) of queries (Q, D) given the memorised train_x (N, D) float32, train_y (N,)."""
        if self.metric == "l2":  # |q - t|^2 up to |q|^2, which does not change the ranking
            dist = jnp.sum(train_x * train_x, -1)[None, :] - 2.0 * queries @ train_x.T
        else:
            dist = jnp.abs(queries.sum(-1)[:, None] - train_x.sum(-1)[None, :])
        _, nearest = jax.lax.top_k(-dist, self.k)  # (Q, k), nearest first
        rank_weight = 1.0 + 1e-3 * (self.k - jnp.arange(self.k)) / self.k  # ties: nearer wins
        votes = jnp.sum(jax.nn.one_hot(train_y[nearest], 10) * rank_weight[None, :, None], axis=1)
        return jnp.argmax(votes, -1)


def knn(k: int = 1, metric: str = "l2", *, num_classes: int, dropout: dict) -> NearestNeighbours:
    """Nearest-neighbour classifier (the seed notebook's 'naive model' with metric=seed, k=1)."""
    require(k >= 1, f"k must be >= 1 (got {k})")
    require(metric in ("l2", "seed"), f"metric must be l2 or seed (got '{metric}')")
    require(not dropout, "regularizers do not apply to knn: it has no weights")
    return NearestNeighbours(k, metric)
