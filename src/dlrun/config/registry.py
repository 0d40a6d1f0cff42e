"""Build a component from its config node: look the name up in a registry, type-check the rest.

Each config group (model, optim, schedule, regularizer) has a registry: a plain dict from the
short name used on the command line to a builder function. The builder's positional-or-keyword
parameters *are* the schema of that option: their annotations give the types, their defaults
the defaults. Keyword-only parameters are runtime inputs supplied by dlrun, never by the config.
So a config can only ever reach functions listed in a registry, and a misspelt key or a value of
the wrong type is refused before any data is loaded or anything is compiled.
"""
import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dlrun.errors import ConfigError, one_line


def choose(group: str, registry: Mapping[str, Callable], name: str) -> Callable:
    """Return the builder registered under `name`, or fail listing the valid names."""
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise ConfigError(f"unknown {group} '{name}'; choose one of: {valid}")
    return registry[name]


def config_params(builder: Callable) -> list[inspect.Parameter]:
    """The parameters of `builder` that come from the config (not keyword-only)."""
    sig = inspect.signature(builder, eval_str=True)
    return [p for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)]


def typed_kwargs(prefix: str, builder: Callable, node: Mapping[str, Any] | DictConfig) -> dict:
    """Check `node` against `builder`'s signature and return it as plain, typed kwargs.

    Unknown keys and values that do not convert to the annotated type raise ConfigError with
    the full key path (`prefix.key`), e.g. `optim.lr: 'abc' is not a valid float`.
    """
    params = config_params(builder)
    fields = [(p.name, Any if p.annotation is inspect.Parameter.empty else p.annotation,
               dataclasses.field(default_factory=_factory(p.default)))
              for p in params]
    schema = dataclasses.make_dataclass(f"{prefix.replace('.', '_')}_schema", fields)
    node = OmegaConf.create(node) if not isinstance(node, DictConfig) else node
    valid = ", ".join(p.name for p in params)
    for p in params:
        value = node.get(p.name)
        if getattr(p.annotation, "__origin__", None) is list and value is not None \
                and not OmegaConf.is_list(value) and not isinstance(value, (list, tuple)):
            raise ConfigError(f"{prefix}.{p.name} must be a list, e.g. {prefix}.{p.name}=[{value}]")
    for key in node:
        if key not in {p.name for p in params}:
            raise ConfigError(f"{prefix}.{key} is not a setting of this {prefix}; "
                              f"valid keys: {valid}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        plain = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        msg = one_line(getattr(e, "msg", str(e)))
        raise ConfigError(f"{prefix}.{key}: {msg}") from None
    for key, value in plain.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}.{key} must be a finite number (got {value})")
    return plain


def build(group: str, registry: Mapping[str, Callable], node: Mapping | DictConfig,
          prefix: str | None = None, **runtime) -> Any:
    """Build the component named by `node.name` with the node's other keys as arguments.

    `prefix` is the key path used in error messages (default: the group name).
    """
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    name = plain.pop("name", None)
    prefix = prefix or group
    if name is None:
        raise ConfigError(f"{group}.name is missing; choose one of: {', '.join(sorted(registry))}")
    from dlrun.config import plugins  # the users' components: import paths, entry points

    builder = choose(group, plugins.registered(group, registry), name)
    if isinstance(builder, plugins.Custom):
        try:
            builder = builder.builder(prefix, plain, name)
        except ConfigError as e:
            raise ConfigError(f"{prefix}.{e}" if str(e).startswith("target=") else str(e)) from None
    kwargs = typed_kwargs(prefix, builder, plain)
    try:
        return builder(**kwargs, **wanted(builder, runtime))
    except ConfigError as e:
        raise ConfigError(f"{prefix}.{e}") from None


def build_node(key: str, schema: Callable, node: Mapping | DictConfig | None) -> Any:
    """A config node that is not a group (`train`, `checkpoint`, `prune`, `dist`): its schema is
    a frozen dataclass whose fields (types, defaults) are the node's keys and whose
    __post_init__ checks the values; ConfigError names the key path (`train.epochs ...`)."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    kwargs = typed_kwargs(key, schema, plain)
    try:
        return schema(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{key}.{e}") from None


def setattrs(instance: Any, **values) -> None:
    """Normalise fields of a frozen dataclass in its __post_init__ (lists to tuples, ...)."""
    for name, value in values.items():
        object.__setattr__(instance, name, value)


def wanted(builder: Callable, runtime: dict) -> dict:
    """The runtime inputs a builder declares (keyword-only parameters): a model that does not
    need the input shape does not take it."""
    params = inspect.signature(builder).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return runtime
    return {k: v for k, v in runtime.items() if k in params and params[k].kind == params[k].KEYWORD_ONLY}


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`. Builders use it for range checks."""
    if not ok:
        raise ConfigError(message)


def _factory(default: Any) -> Callable[[], Any]:
    if default is inspect.Parameter.empty:
        return lambda: "???"  # OmegaConf's MISSING: the key must be set
    if isinstance(default, (list, tuple)):
        return lambda: list(default)
    return lambda: default
