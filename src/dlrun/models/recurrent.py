"""Recurrent classifiers: the image read as a sequence of its rows (rnn, lstm), or a text as a
sequence of its embedded tokens (lstm on a text dataset: DLT's code/lstm.py)."""
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrun.config.registry import require
from dlrun.models.layers import ACTIVATIONS, _check_common, kernel_init

TOKEN_MODELS = ("lstm",)  # the models that read token ids (a text dataset: dlrun.data.text)
POOLS = ("last", "mean")

class Recurrent(nn.Module):
    """Reads the image as a sequence of its rows (W*C values each), top to bottom, and
    classifies from the last hidden state: (B, H, W, C) -> cell over H steps -> dense -> logits.
    Trained by backpropagation through time (the gradient of the lax.scan over the rows).

    With vocab_size > 0 it reads token ids (B, T) instead (0 = padding, at the end): each id is
    embedded (`embed` dimensions, U[0, 0.01) as DLT), the cell runs over the T steps, and the
    states of the real tokens are pooled (`pool`): the last one's, or their mean (DLT). Padding
    changes nothing: the cell reads left to right, so the states of the real tokens never see
    it, and pooling leaves it out. A text without tokens pools to zeros."""

    cell: str  # "simple" (Elman: h = act(W x + U h + b)) | "lstm"
    hidden: int
    activation: str
    num_classes: int
    weight_init: str = "glorot"  # input and output weights; recurrent weights stay orthogonal
    init_std: float = 0.01
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    vocab_size: int = 0  # > 0: x holds token ids (B, T) below it; 0: images
    embed: int = 128  # token ids: the embedding's dimensions
    pool: str = "last"  # POOLS: the classified state, the last one or the mean over the steps
    scan_friendly: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.vocab_size:
            ids = x.astype(jnp.int32)  # (B, T); float ids (dlrun-eval's) are exact below 2^24
            mask = (ids != 0).astype(jnp.float32)  # (B, T): 1 for a real token
            x = nn.Embed(self.vocab_size, self.embed, embedding_init=uniform_01, name="embed")(ids)
        else:
            x = x.reshape((*x.shape[:2], -1))  # (B, time = rows, features = pixels of a row)
            mask = None
        x = nn.Dropout(self.dropout_input, deterministic=not train)(x)
        k_init = kernel_init(self.weight_init, self.init_std, self.activation)
        if self.cell == "lstm":
            cell = nn.OptimizedLSTMCell(self.hidden, kernel_init=k_init, name="lstm")
        else:
            cell = nn.SimpleCell(self.hidden, activation_fn=ACTIVATIONS[self.activation],
                                 kernel_init=k_init, name="rnn")
        h = pooled(nn.RNN(cell)(x), mask, self.pool)  # (B, hidden)
        h = nn.Dropout(self.dropout_hidden, deterministic=not train)(h)
        return nn.Dense(self.num_classes, kernel_init=k_init, name="out")(h)


def uniform_01(key: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
    """DLT's embedding init: 0.01 * U[0, 1)."""
    return 0.01 * jax.random.uniform(key, shape, dtype)


def pooled(states: jax.Array, mask, pool: str) -> jax.Array:
    """(B, T, hidden) states -> (B, hidden): the last step's or the mean over the steps, over
    the real ones where a mask (B, T) of 1 (real) and 0 (padding, at the end) is given."""
    if mask is None:
        return states[:, -1] if pool == "last" else jnp.mean(states, axis=1)
    count = jnp.sum(mask, axis=1)  # (B,) real tokens
    if pool == "mean":
        return jnp.sum(states * mask[..., None], axis=1) / jnp.maximum(count, 1.0)[:, None]
    last = jnp.maximum(count.astype(jnp.int32) - 1, 0)  # (B,) the last real step
    h = jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0]
    return h * (count > 0)[:, None]


def _no_dropconnect(dropout: dict) -> None:
    require("dropconnect_keep" not in dropout,
            "regularizer dropconnect masks dense-layer weights: use it with logreg, mlp, cnn or "
            "lenet, not with a recurrent model (regularizer=[dropout] drops its input and state)")


def rnn(hidden: int = 128, activation: str = "tanh", init: str = "glorot", init_std: float = 0.01,
        *, num_classes: int, dropout: dict) -> nn.Module:
    """Elman recurrent net over the image rows (Recurrent with a simple cell)."""
    require(hidden > 0, f"hidden must be > 0 (got {hidden})")
    _no_dropconnect(dropout)
    _check_common(activation, init, init_std)
    return Recurrent("simple", hidden, activation, num_classes, init, init_std,
                     dropout_input=dropout.get("input", 0.0), dropout_hidden=dropout.get("hidden", 0.0))


def lstm(hidden: int = 128, init: str = "glorot", init_std: float = 0.01, embed: int = 128,
         pool: str = "last", *, num_classes: int, dropout: dict, vocab_size: int = 0) -> nn.Module:
    """LSTM over the image rows, or over the embedded tokens of a text dataset (vocab_size > 0)
    (Recurrent with an LSTM cell: input, forget and output gates)."""
    require(hidden > 0, f"hidden must be > 0 (got {hidden})")
    require(embed > 0, f"embed must be > 0 dimensions (got {embed})")
    require(pool in POOLS, f"pool must be one of {', '.join(POOLS)} (got '{pool}')")
    _no_dropconnect(dropout)
    _check_common("tanh", init, init_std)
    return Recurrent("lstm", hidden, "tanh", num_classes, init, init_std,
                     dropout_input=dropout.get("input", 0.0), dropout_hidden=dropout.get("hidden", 0.0),
                     vocab_size=vocab_size, embed=embed, pool=pool)
