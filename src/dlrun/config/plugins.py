"""The users' own components: by import path (`model=custom model.target=MODULE:ATTR`) or
registered by an installed package through entry points.

- model    a Flax Linen module class (or a function returning a module). dlrun passes
           `num_classes`, `input_shape` (H, W, C) and `dropout` (the regularizer's rates) only
           where its fields or parameters take them; every other key of the node is one of its
           fields. It is called as apply(variables, x, train=<bool>) with x (B, H, W, C) float32
           in [0, 1] (plus rngs 'dropout' and 'sample'), and must return logits (B, num_classes).
- optim    any optax GradientTransformation factory (e.g. optax:adamw): `learning_rate` gets
           optim.lr through the run's schedule, every other key is one of its parameters.
- dataset  a function returning the arrays (a dict with the npz keys x_train, y_train, x_test,
           y_test, optional x_val, y_val, class_names; or a tuple (x_train, y_train, x_test,
           y_test)), or a dict {'train': source, 'test': source[, 'val': source]} of
           random-access sources (len() and [i] -> (image, label) or {'image', 'label'}: a grain
           RandomAccessDataSource qualifies). Its parameters are the node's other keys.

Registration: a package declares entry points in the groups ENTRY_POINTS names (name =
"module:attr"), e.g. `[project.entry-points."dlrun.models"] wide = "mypkg.nets:WideNet"`, and
its YAML options in a config package named in group `dlrun.conf` (`mypkg = "mypkg.conf"`,
holding model/wide.yaml), which dlrun adds to Hydra's search path (`SearchPath` below). Then
`dlrun model=wide` works like a built-in. The same checks apply everywhere: unknown keys and
wrong types are refused from the target's signature, and an import failure names the module
and the exception, in one line.
"""
from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, List, Optional

from dlrun.errors import ConfigError, one_line

ENTRY_POINTS = {"model": "dlrun.models", "optim": "dlrun.optimizers", "dataset": "dlrun.datasets"}
CONF_ENTRY_POINTS = "dlrun.conf"
MODEL_RUNTIME = ("num_classes", "input_shape", "dropout")
NOT_CONFIG = ("parent", "name")  # flax.linen.Module's own dataclass fields
SIMPLE = (int, float, bool, str)


@dataclass(frozen=True)
class Custom:
    """A registry entry whose builder comes from a target: `custom` (target from the node) or an
    entry point (target fixed)."""

    group: str
    target: Optional[str] = None

    def builder(self, prefix: str, node: dict, name: str = "custom") -> Callable:
        """The adapter to build option `name` with (node: the config node, `target` popped)."""
        target = self.target or node.pop("target", None)
        if not target:
            raise ConfigError(f"{prefix}.target is required: {prefix}=custom "
                              f"{prefix}.target=MODULE:ATTR (an importable module, e.g. on PYTHONPATH)")
        obj = import_target(f"{prefix}.target={target}" if not self.target else target, target)
        return ADAPTERS[self.group](obj, target, name)


def import_target(label: str, target: str) -> Any:
    """MODULE:ATTR (or MODULE.ATTR) imported; ConfigError naming the module and the exception."""
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{label}: give MODULE:ATTR, e.g. mypkg.nets:WideNet")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything on import
        raise ConfigError(f"{label}: cannot import {module_name} ({type(e).__name__}: "
                          f"{one_line(e)}); install it or put its folder on PYTHONPATH") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{label}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    return obj


def registered(group: str, registry: dict) -> dict:
    """`registry` plus the names installed packages register for `group` (entry points)."""
    found = {ep.name: Custom(group, ep.value) for ep in entry_points(ENTRY_POINTS.get(group))}
    return {**found, **registry}  # a built-in name is never replaced


def entry_points(group: Optional[str]) -> list:
    if group is None:
        return []
    try:
        return list(metadata.entry_points(group=group))
    except Exception:  # noqa: BLE001 - a broken installed distribution must not stop dlrun
        return []


# ---- signatures ---------------------------------------------------------------------------------
def config_signature(obj: Callable, runtime: tuple, skip: tuple = ()) -> list[inspect.Parameter]:
    """The parameters of `obj` that come from the config, with annotations OmegaConf can check
    (anything else becomes Any: the value is passed as given). A parameter whose default is not
    a plain value (a dtype, a function) keeps it and is not a config key."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        raise ConfigError(f"{getattr(obj, '__name__', obj)!r} is not callable with keyword "
                          f"arguments") from None
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check nothing
        hints = {}
    params = []
    for p in sig.parameters.values():
        if p.name in runtime or p.name in skip or p.name in NOT_CONFIG or \
                p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not plain(p.default):
            continue
        params.append(p.replace(kind=p.POSITIONAL_OR_KEYWORD,
                                annotation=checkable(hints.get(p.name, p.annotation))))
    return params


def plain(value) -> bool:
    """Whether a default can be a config value: None, a number, a string, a list of those (or
    no default at all)."""
    if value is inspect.Parameter.empty or value is None or isinstance(value, SIMPLE):
        return True
    return isinstance(value, (list, tuple)) and all(plain(v) and v is not inspect.Parameter.empty
                                                    for v in value)


def checkable(annotation) -> Any:
    """`annotation` where OmegaConf can check it (simple types, Optional and lists of them)."""
    if annotation in SIMPLE:
        return annotation
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Union and len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return Optional[inner] if inner in SIMPLE else Any
    if origin in (list, List) and args and args[0] in SIMPLE:
        return List[args[0]]
    return Any


def accepts(obj: Callable, name: str) -> bool:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def with_signature(fn: Callable, params: list[inspect.Parameter], runtime: tuple) -> Callable:
    """`fn(**kwargs)` presented with `params` (config) and keyword-only `runtime` parameters:
    the signature dlrun.config.registry reads."""
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in runtime]
    fn.__signature__ = inspect.Signature(params + extra)
    return fn


# ---- adapters per group ---------------------------------------------------------------------------
def model_adapter(obj: Any, target: str, name: str) -> Callable:
    import flax.linen as nn

    params = config_signature(obj, MODEL_RUNTIME)

    def build(**kwargs):
        runtime = {k: kwargs.pop(k) for k in MODEL_RUNTIME if k in kwargs}
        given = {k: v for k, v in runtime.items() if accepts(obj, k)}
        try:
            module = obj(**kwargs, **given)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"target={target}: building it failed ({type(e).__name__}: "
                              f"{one_line(e)})") from None
        if not isinstance(module, nn.Module):
            raise ConfigError(f"target={target} made a {type(module).__name__}, not a "
                              f"flax.linen.Module")
        check_model(module, target, runtime["input_shape"], runtime["num_classes"])
        return module

    return with_signature(build, params, MODEL_RUNTIME)


def check_model(module, target: str, input_shape: tuple, num_classes: int) -> None:
    """Initialise the module abstractly on one input (no FLOPs): it must take `train` and
    return logits (B, num_classes); ConfigError saying what it did instead."""
    import jax
    import jax.numpy as jnp

    call = getattr(type(module), "__call__", None)
    if call is None or not accepts(call, "train"):
        raise ConfigError(f"target={target}: its __call__ takes no `train` argument; dlrun calls "
                          f"apply(variables, x, train=True/False): add `train: bool = False`")
    x = jnp.zeros((2, *input_shape), jnp.float32)
    key = jax.random.key(0)
    try:
        out = jax.eval_shape(lambda: module.init_with_output(
            {"params": key, "dropout": key, "sample": key}, x, train=False)[0])
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"target={target}: calling it on a (B, {', '.join(map(str, input_shape))}) "
                          f"batch failed ({type(e).__name__}: {one_line(e)})") from None
    if getattr(out, "shape", None) != (2, num_classes):
        raise ConfigError(f"target={target} returned {getattr(out, 'shape', type(out).__name__)} "
                          f"for a batch of 2; a classifier returns logits (B, {num_classes})")


def optim_adapter(obj: Any, target: str, name: str) -> Callable:
    if not accepts(obj, "learning_rate"):
        raise ConfigError(f"target={target} takes no learning_rate; give an optax optimizer "
                          f"factory such as optax:adamw")
    params = [inspect.Parameter("lr", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1e-3,
                                annotation=float)] + config_signature(obj, ("learning_rate",))

    def build(lr, schedule, **kwargs):
        try:
            tx = obj(learning_rate=schedule(lr), **kwargs)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"target={target}: building it failed ({type(e).__name__}: "
                              f"{one_line(e)})") from None
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise ConfigError(f"target={target} made a {type(tx).__name__}, not an optax "
                              f"GradientTransformation")
        return tx

    return with_signature(build, params, ("schedule",))


def dataset_adapter(obj: Any, target: str, name: str) -> Callable:
    from dlrun.data import catalog

    own = config_signature(obj, ())
    clash = [p.name for p in own if p.name in catalog.COMMON_KEYS]
    if clash:
        raise ConfigError(f"dataset.target={target}: its parameter(s) {', '.join(clash)} clash with "
                          f"the keys every dataset has; rename them")
    types = typing.get_type_hints(catalog.DataConfig)
    params = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                annotation=types[f.name]) for f in catalog.common_fields()] + own

    def build(**kwargs):
        common = {k: kwargs.pop(k) for k in catalog.COMMON_KEYS if k in kwargs}
        return catalog.CustomDataConfig(**common, target=target,
                                        arguments=tuple(sorted(kwargs.items())), name=name)

    return with_signature(build, params, ())


ADAPTERS = {"model": model_adapter, "optim": optim_adapter, "dataset": dataset_adapter}


def custom_keys(argv: list[str]) -> list[str]:
    """`model.width=64` after model=custom is a keyword argument of the user's target, which the
    custom YAML cannot list: pass it to Hydra as an addition (+model.width=64)."""
    chosen = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv
              if "=" in a and a.split("=", 1)[0] in ENTRY_POINTS}
    out = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        group, _, leaf = key.partition(".")
        if chosen.get(group) == "custom" and leaf and "." not in leaf and "=" in arg \
                and leaf not in custom_yaml_keys(group):
            arg = "+" + arg
        out.append(arg)
    return out


def custom_yaml_keys(group: str) -> set[str]:
    import importlib.resources

    import yaml
    text = importlib.resources.files("dlrun.conf").joinpath(group, "custom.yaml").read_text()
    return set(yaml.safe_load(text))


# ---- Hydra's search path: the YAML options of installed packages ------------------------------------
def conf_packages() -> list[str]:
    """The config packages installed distributions declare (entry points group dlrun.conf)."""
    return [ep.value for ep in entry_points(CONF_ENTRY_POINTS)]


def register_search_path() -> None:
    """Add every declared config package to Hydra's config search path (after dlrun's own)."""
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class DlrunPlugins(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            for package in conf_packages():
                search_path.append(provider=f"dlrun-plugin:{package}", path=f"pkg://{package}")

    if conf_packages():
        Plugins.instance().register(DlrunPlugins)
