"""Per-parameter-group optimizer settings (the `param_groups` config node), via
optax.multi_transform: every parameter belongs to one group,

  norm   the scale and bias of BatchNorm and LayerNorm layers
  bias   every other bias
  other  the rest (kernels)

and each group's updates are the named optimizer's times `lr_scale`, followed by the
update-side regularizers (weight_decay, max_norm) only where `weight_decay` is true. With the
defaults (every lr_scale 1, weight_decay true everywhere) the chain is the plain one, unchanged.
"""
from dataclasses import dataclass, field
from typing import Callable

import jax
import optax

from dlrun.config.registry import require

GROUPS = ("norm", "bias", "other")


@dataclass(frozen=True)
class GroupConfig:
    lr_scale: float = 1.0
    weight_decay: bool = True

    def __post_init__(self):
        require(self.lr_scale > 0, f"lr_scale must be > 0 (got {self.lr_scale})")


@dataclass(frozen=True)
class ParamGroups:
    norm: GroupConfig = field(default_factory=GroupConfig)
    bias: GroupConfig = field(default_factory=GroupConfig)
    other: GroupConfig = field(default_factory=GroupConfig)

    @property
    def plain(self) -> bool:
        return all(getattr(self, g) == GroupConfig() for g in GROUPS)


def parse(node) -> ParamGroups:
    """The param_groups config node (absent or {}: the defaults)."""
    node = dict(node or {})
    unknown = sorted(set(node) - set(GROUPS))
    require(not unknown, f"param_groups has no group {', '.join(unknown)}; groups: {', '.join(GROUPS)}")
    groups = {}
    for name, values in node.items():
        values = dict(values or {})
        bad = sorted(set(values) - {"lr_scale", "weight_decay"})
        require(not bad, f"param_groups.{name}.{bad[0] if bad else ''} is not a setting; "
                         f"valid: lr_scale, weight_decay")
        groups[name] = GroupConfig(float(values.get("lr_scale", 1.0)), bool(values.get("weight_decay", True)))
    return ParamGroups(**groups)


def group_of(path: tuple) -> str:
    """A parameter's group from its path in the params tree (flax names BatchNorm and LayerNorm
    layers ..._norm.. in dlrun's models, BatchNorm_N / LayerNorm_N by default)."""
    names = [str(getattr(k, "key", k)) for k in path]
    layer = names[-2] if len(names) > 1 else ""
    if "norm" in layer.lower():
        return "norm"
    return "bias" if names[-1] == "bias" else "other"


def labels(params) -> dict:
    return jax.tree_util.tree_map_with_path(lambda path, _: group_of(path), params)


def grouped(groups: ParamGroups, base: optax.GradientTransformation,
            update_steps: list[Callable], lr_schedule) -> optax.GradientTransformation:
    """The whole chain with per-group settings (see the module docstring)."""
    def chain(cfg: GroupConfig) -> optax.GradientTransformation:
        steps = [make(lr_schedule) for make in update_steps] if cfg.weight_decay else []
        scale = [optax.scale(cfg.lr_scale)] if cfg.lr_scale != 1.0 else []
        return optax.chain(base, *scale, *steps)

    return optax.multi_transform({g: chain(getattr(groups, g)) for g in GROUPS}, labels)
