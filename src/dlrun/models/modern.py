"""The modern convnets (`model=vgg`, `model=resnet`): stacks of 3x3 conv -> norm -> activation
blocks with BatchNorm or LayerNorm, plain (VGG-like) or residual, max-pooling between stages,
global pooling and one dense layer at the head.

Layout: optionally the image cut into `patch` x `patch` patches stacked along channels (space to
depth: 28x28x1 -> 14x14x4 at patch 2, no information lost, a quarter of the pixels for every
layer after it), a stem conv (`stem` channels, skipped at 0), then one stage per entry of `widths`, each
`depths[s]` blocks of that width; every stage after the first starts with a 2x2 max-pool (the
pool comes before the stage's first conv, so that conv runs on a quarter of the pixels).
  vgg block:    conv -> norm -> act
  resnet block: conv -> norm -> act -> conv -> norm, plus the shortcut (identity, or a 1x1
                conv -> norm where the width changes), -> act   (He et al. 2016, "basic" block)
BatchNorm keeps running statistics in the 'batch_stats' collection, which the training step
carries in the state (the class's `mutable`) and evaluation uses (train=False).
"""
import functools
from typing import ClassVar, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrun.config.registry import require
from dlrun.models.conv import Conv, max_pool_ceil
from dlrun.models.layers import ACTIVATIONS, kernel_init

NORMS = ("batch", "layer", "none")
HEADS = ("avg", "max")


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) -> (B, ceil(H/p), ceil(W/p), p*p*C): each p x p patch as one pixel's channels
    (zero-padded at the bottom and right to a multiple of p)."""
    if p == 1:
        return x
    b, h, w, c = x.shape
    ph, pw = -h % p, -w % p
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    h, w = h + ph, w + pw
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


def normalize(x: jax.Array, kind: str, train: bool, momentum: float, name: str) -> jax.Array:
    """BatchNorm over (B, H, W) per channel (batch statistics while training, the running
    averages in evaluation), LayerNorm over each pixel's channels, or nothing."""
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5,
                            name=name)(x)
    if kind == "layer":
        return nn.LayerNorm(epsilon=1e-5, name=name)(x)
    return x


class ConvStack(nn.Module):
    """The vgg / resnet family; see the module docstring."""

    widths: Sequence[int]
    depths: Sequence[int]
    residual: bool
    stem: int
    norm: str
    activation: str
    head: str
    logit_scale: float
    bn_momentum: float
    weight_init: str
    num_classes: int
    dropout_hidden: float = 0.0
    patch: int = 1
    scan_friendly: ClassVar[bool] = False  # convolutions: one jitted step per batch on XLA:CPU

    @property
    def mutable(self) -> tuple:
        return ("batch_stats",) if self.norm == "batch" else ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(Conv, kernel_size=3, pad=1, use_bias=self.norm == "none",
                                 kernel_init=kernel_init(self.weight_init, 1.0, self.activation))
        norm = functools.partial(normalize, kind=self.norm, train=train, momentum=self.bn_momentum)
        act = ACTIVATIONS[self.activation]
        x = space_to_depth(x, self.patch)
        if self.stem:
            x = act(norm(conv(self.stem, name="stem")(x, train), name="stem_norm"))
        for s, (width, depth) in enumerate(zip(self.widths, self.depths)):
            if s:
                x = max_pool_ceil(x, 2)
            for b in range(depth):
                name = f"stage{s}_block{b}"
                y = act(norm(conv(width, name=f"{name}_conv0")(x, train), name=f"{name}_norm0"))
                if not self.residual:
                    x = y
                    continue
                y = norm(conv(width, name=f"{name}_conv1")(y, train), name=f"{name}_norm1")
                if x.shape[-1] != width:  # the projection shortcut
                    x = norm(Conv(width, 1, 0, False, kernel_init("he", 1.0, "relu"),
                                  name=f"{name}_proj")(x, train), name=f"{name}_proj_norm")
                x = act(x + y)
        x = x.mean(axis=(1, 2)) if self.head == "avg" else x.max(axis=(1, 2))  # (B, C)
        x = nn.Dropout(self.dropout_hidden, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, name="out")(x)
        return logits * self.logit_scale


def _conv_stack(widths, depths, residual, stem, norm, activation, head, logit_scale, bn_momentum,
                init, patch, num_classes, dropout, input_shape) -> ConvStack:
    require(len(widths) > 0 and all(w > 0 for w in widths),
            f"widths must be a non-empty list of positive channel counts (got {list(widths)})")
    require(len(depths) == len(widths) and all(d >= 1 for d in depths),
            f"depths needs one entry >= 1 per stage ({len(widths)}), got {list(depths)}")
    require(stem >= 0, f"stem must be >= 0 channels (0 = no stem conv; got {stem})")
    require(norm in NORMS, f"norm must be one of {', '.join(NORMS)} (got '{norm}')")
    require(activation in ACTIVATIONS,
            f"activation must be one of {', '.join(ACTIVATIONS)} (got '{activation}')")
    require(head in HEADS, f"head must be avg or max (global pooling; got '{head}')")
    require(logit_scale > 0 and 0 <= bn_momentum < 1,
            f"need logit_scale > 0 and bn_momentum in [0, 1) (got {logit_scale}, {bn_momentum})")
    require(init in ("he", "glorot", "normal"), f"init must be he, glorot or normal (got '{init}')")
    require(patch >= 1, f"patch must be >= 1 (1 = none; got {patch})")
    size = -(-min(input_shape[:2]) // patch)
    require(size >= 2 ** (len(widths) - 1),
            f"{len(widths)} stages halve a {input_shape[0]}x{input_shape[1]} image "
            f"{len(widths) - 1} times (after patch {patch}), to nothing: use fewer widths")
    return ConvStack(tuple(widths), tuple(depths), residual, stem, norm, activation, head,
                     logit_scale, bn_momentum, init, num_classes,
                     dropout_hidden=dropout.get("hidden", 0.0), patch=patch)


def vgg(widths: List[int] = (32, 64, 128), depths: List[int] = (1, 1, 1), stem: int = 32,
        norm: str = "batch", activation: str = "relu", head: str = "max", logit_scale: float = 1.0,
        bn_momentum: float = 0.9, init: str = "he", patch: int = 1, *, num_classes: int,
        dropout: dict, input_shape: tuple) -> nn.Module:
    """A VGG-like stack of conv -> norm -> act blocks (airbench's shape: pooled stages)."""
    return _conv_stack(widths, depths, False, stem, norm, activation, head, logit_scale,
                       bn_momentum, init, patch, num_classes, dropout, input_shape)


def resnet(widths: List[int] = (32, 64, 128), depths: List[int] = (1, 1, 1), stem: int = 32,
           norm: str = "batch", activation: str = "relu", head: str = "avg",
           logit_scale: float = 1.0, bn_momentum: float = 0.9, init: str = "he", patch: int = 1,
           *, num_classes: int, dropout: dict, input_shape: tuple) -> nn.Module:
    """A residual net of basic blocks (two convs and a shortcut each)."""
    return _conv_stack(widths, depths, True, stem, norm, activation, head, logit_scale,
                       bn_momentum, init, patch, num_classes, dropout, input_shape)
