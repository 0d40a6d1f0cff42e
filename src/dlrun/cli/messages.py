"""The one-line error of the `dlrun` command: every user error the CLI prints is built here.

`one_line(exc)` turns what Hydra, OmegaConf or dlrun raised into `what is wrong; how to fix it`;
`unknown_key` suggests, for a key the config does not have, the keys of the option actually
selected (optim.learning_rate with optim=adam: optim.lr), or the option that has the key.
"""
import difflib
import importlib.resources
import re
import sys

import yaml
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

LIST_GROUPS = ("regularizer", "logger")  # groups selected as lists: regularizer=[dropout,l2]


def flat(text: str) -> str:
    """Hydra's multi-line messages (with their fix-it hints) as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("See https://hydra.cc"))


def one_line(exc: BaseException) -> str:
    """A single-line, actionable description of a user error."""
    if isinstance(exc, MissingConfigException):
        missing = unknown_option(exc)
        if missing:
            return missing
    if isinstance(exc, OverrideParseException) and "LexerNoViableAltException" in str(exc):
        bad = str(exc).split("LexerNoViableAltException:", 1)[1].splitlines()[0].strip()
        return (f"cannot read the override {bad}: a character there is not allowed unquoted "
                f"(a leading ~ is not expanded either); quote the value, e.g. "
                f"key='\"my value\"', or give the full path")
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        return unknown_key(getattr(cause, "full_key", "?"))
    text = flat(str(exc)) or type(exc).__name__
    if "Ambiguous value for argument" in text:
        return (text.split(" 1.")[0].rstrip() + "; to sweep over the values add -m (--multirun); "
                "for a list write key=[a,b]")
    if "To append to your config use" in text:
        return text.replace("To append to your config use", "to add a new key use")
    if cause is not None and str(cause).strip():
        text += " " + flat(str(cause))
    return text


def unknown_option(exc: MissingConfigException) -> str:
    """'unknown optim 'adamw'; choose one of: ...' for an option no config file provides, the
    same for list groups (regularizer=[dropot]) and Hydra's plugin groups."""
    path = exc.missing_cfg_file or ""
    if "/" not in path:  # a list group's entry: Hydra names it only in the message
        match = re.search(r"Could not load '([\w/]+)/([^'/]+)'", str(exc))
        path = f"{match.group(1)}/{match.group(2)}" if match else ""
    group, _, name = path.rpartition("/")
    options = sorted(exc.options or options_of(group))
    if not group or not options:
        return ""
    plugins = (" (Hydra's joblib, submitit and optuna plugins: pip install -e '.[sweep]'; "
               "see docs/guide.md, Sweeps)" if group in ("hydra/launcher", "hydra/sweeper") else "")
    example = f"; a list: {group}=[{options[0]},...]" if group in LIST_GROUPS else ""
    return f"unknown {group} '{name}'; choose one of: {', '.join(options)}{example}{plugins}"


def options_of(group: str) -> list[str]:
    """The options of a config group: its YAML files in the packaged conf/."""
    folder = importlib.resources.files("dlrun.conf").joinpath(group)
    if not folder.is_dir():
        return []
    return [p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")]


def unknown_key(key: str, argv: list[str] | None = None) -> str:
    """Message for an override of a key the config does not have, with a suggestion."""
    group, _, rest = key.partition(".")
    argv = sys.argv[1:] if argv is None else argv
    if group in LIST_GROUPS:
        return unknown_list_key(key, group, rest, argv)
    owners = key_owners().get(key)
    chosen = selected_option(group, argv)
    if owners and chosen not in owners:  # a key of another option, e.g. model.pretrain_epochs with mlp
        return (f"{key} is not a setting of {group}={chosen or 'the one chosen'}; it is a setting of "
                f"{group}={', '.join(owners)}: choose one first, e.g. {group}={owners[0]} {key}=...")
    guesses = guess(key, group, chosen)
    hint = f"; did you mean {' or '.join(guesses[:3])}?" if guesses else ""
    if chosen and not guesses:
        own = [k for k in option_yaml(group, chosen) if k != "name"]
        hint = f"; {group}={chosen} has: {', '.join(own) or 'no settings'}"
    where = f"of {group}={chosen}" if chosen else "of this config"
    return (f"{key} is not a setting {where}{hint} "
            f"(`dlrun --cfg job` prints the valid keys, `dlrun --help` the groups)")


def unknown_list_key(key: str, group: str, rest: str, argv: list[str]) -> str:
    """A key under regularizer. or logger.: an option not selected, or a misspelt setting of a
    selected one."""
    from dlrun.config.registry import config_params
    name = rest.split(".")[0]
    if "." not in rest or name not in selected_list(group, argv):
        return (f"{key}: {group} '{name}' is not selected; select it first, e.g. {group}=[{name}] "
                f"(a list: {group}=[{', '.join(sorted(options_of(group))[:2])}])")
    from dlrun.optim.regularizers import REGULARIZERS
    from dlrun.runs.tracking import LOGGERS
    registry = REGULARIZERS if group == "regularizer" else LOGGERS
    valid = ", ".join(p.name for p in config_params(registry[name])) if name in registry else ""
    return f"{key} is not a setting of {group} {name}; valid keys: {valid or 'none'}"


def selected_list(group: str, argv: list[str]) -> list[str]:
    """The options a list group's override selects (`regularizer=[dropout,l2]`), else none."""
    for arg in argv:
        name, _, value = arg.lstrip("+~").partition("=")
        if name == group:
            return [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    return []


def guess(key: str, group: str, chosen: str | None) -> list[str]:
    """Keys the user may have meant: first the selected option's (including its short forms:
    learning_rate -> lr), then any key with the same last part, then close spellings."""
    last = key.rsplit(".", 1)[-1]
    if chosen:
        own = [k for k in option_yaml(group, chosen) if k != "name"]
        initials = "".join(w[0] for w in last.split("_") if w)
        near = [k for k in own if k == initials and len(initials) > 1]
        near += difflib.get_close_matches(last, own, n=3, cutoff=0.6)
        return [f"{group}.{k}" for k in dict.fromkeys(near)]  # never another option's keys
    known = known_keys()
    guesses = [k for k in known if k.rsplit(".", 1)[-1] == last and k != key]
    if not guesses and "." not in key:  # a misspelt group name: suggest groups first
        guesses = difflib.get_close_matches(key, [k for k in known if "." not in k], n=2, cutoff=0.6)
    return guesses or difflib.get_close_matches(key, known, n=3, cutoff=0.6)


def selected_option(group: str, argv: list[str]) -> str | None:
    """The option of `group` this command selects: `group=NAME` on the command line, else the
    preset's (`+experiment=NAME`), else conf/config.yaml's default; None for a plain node."""
    conf = importlib.resources.files("dlrun.conf")
    if not conf.joinpath(group).is_dir():
        return None
    chosen = None
    for arg in argv:
        name, _, value = arg.lstrip("+~").partition("=")
        if name == group and value and "," not in value:
            return value
        if name == "experiment" and value:
            chosen = chosen or preset_choice(value, group)
    return chosen or default_choice(group)


def preset_choice(preset: str, group: str) -> str | None:
    path = importlib.resources.files("dlrun.conf").joinpath("experiment", f"{preset}.yaml")
    if not path.is_file():
        return None
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, dict):
            for k, v in entry.items():
                if k.split("/")[-1] == group and isinstance(v, str):
                    return v
    return None


def default_choice(group: str) -> str | None:
    top = yaml.safe_load(importlib.resources.files("dlrun.conf").joinpath("config.yaml").read_text())
    for entry in top.get("defaults", []):
        if isinstance(entry, dict) and group in entry and isinstance(entry[group], str):
            return entry[group]
    return None


def option_yaml(group: str, option: str) -> dict:
    path = importlib.resources.files("dlrun.conf").joinpath(group, f"{option}.yaml")
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def key_owners() -> dict[str, list[str]]:
    """group.key -> the options of the group whose config file has that key."""
    conf = importlib.resources.files("dlrun.conf")
    owners: dict[str, list[str]] = {}
    for group in conf.iterdir():
        if group.is_dir() and group.name not in ("hydra", "experiment", "__pycache__", *LIST_GROUPS):
            for option in sorted(group.iterdir(), key=lambda p: p.name):
                if option.name.endswith(".yaml"):
                    for k in yaml.safe_load(option.read_text()) or {}:
                        if k != "name":
                            owners.setdefault(f"{group.name}.{k}", []).append(option.name[:-5])
    return owners


def known_keys() -> list[str]:
    """Every group name and every group.key found in the packaged config files."""
    conf = importlib.resources.files("dlrun.conf")
    keys = {"experiment"}
    for group in conf.iterdir():
        if not group.is_dir() or group.name in ("hydra", "experiment", "__pycache__"):
            continue
        keys.add(group.name)
        for option in group.iterdir():
            if option.name.endswith(".yaml"):
                node = yaml.safe_load(option.read_text()) or {}
                keys.update(f"{group.name}.{k}" for k in node)
    top = yaml.safe_load((conf / "config.yaml").read_text())
    keys.update(f"train.{k}" for k in top["train"])
    return sorted(keys)


def os_error_line(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    return (f"cannot write{where} ({exc.strerror or exc}); check that the path is a writable "
            f"directory with free space, or write runs elsewhere with hydra.run.dir=PATH")
