"""Recurrent classifiers: the image read as a sequence of its rows (rnn, lstm)."""
from typing import ClassVar

import flax.linen as nn
import jax

from dlrun.config.registry import require
from dlrun.models.layers import ACTIVATIONS, _check_common, kernel_init


class Recurrent(nn.Module):
    """Reads the image as a sequence of its rows (W*C values each), top to bottom, and
    classifies from the last hidden state: (B, H, W, C) -> cell over H steps -> dense -> logits.
    Trained by backpropagation through time (the gradient of the lax.scan over the rows)."""

    cell: str  # "simple" (Elman: h = act(W x + U h + b)) | "lstm"
    hidden: int
    activation: str
    num_classes: int
    weight_init: str = "glorot"  # input and output weights; recurrent weights stay orthogonal
    init_std: float = 0.01
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    scan_friendly: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((*x.shape[:2], -1))  # (B, time = rows, features = pixels of a row)
        x = nn.Dropout(self.dropout_input, deterministic=not train)(x)
        k_init = kernel_init(self.weight_init, self.init_std, self.activation)
        if self.cell == "lstm":
            cell = nn.OptimizedLSTMCell(self.hidden, kernel_init=k_init, name="lstm")
        else:
            cell = nn.SimpleCell(self.hidden, activation_fn=ACTIVATIONS[self.activation],
                                 kernel_init=k_init, name="rnn")
        h = nn.RNN(cell)(x)[:, -1]  # (B, hidden): the state after the last row
        h = nn.Dropout(self.dropout_hidden, deterministic=not train)(h)
        return nn.Dense(self.num_classes, kernel_init=k_init, name="out")(h)


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


def lstm(hidden: int = 128, init: str = "glorot", init_std: float = 0.01, *, num_classes: int,
         dropout: dict) -> nn.Module:
    """LSTM over the image rows (Recurrent with an LSTM cell: input, forget and output gates)."""
    require(hidden > 0, f"hidden must be > 0 (got {hidden})")
    _no_dropconnect(dropout)
    _check_common("tanh", init, init_std)
    return Recurrent("lstm", hidden, "tanh", num_classes, init, init_std,
                     dropout_input=dropout.get("input", 0.0), dropout_hidden=dropout.get("hidden", 0.0))
