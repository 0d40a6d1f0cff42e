"""A user's own model, as dlrun takes it: a plain Flax Linen module, nothing dlrun-specific.

    PYTHONPATH=examples dlrun model=custom model.target=wide_net:WideNet model.width=64

dlrun passes `num_classes` (a field here) and would pass `input_shape` and `dropout` if it had
fields of those names; every other field (width, depth) is a config key, checked against the
fields' types. It is called as apply(variables, x, train=bool), x (B, H, W, C) float32 in [0, 1].
"""
import flax.linen as nn
import jax


class WideNet(nn.Module):
    num_classes: int
    width: int = 256
    depth: int = 2
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
