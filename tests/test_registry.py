"""Every YAML option of every config group has a registry entry, and every entry has a YAML."""
from pathlib import Path

import pytest
import yaml

from dlrun import models, optim
from dlrun.config.plugins import Custom
from dlrun.data import catalog
from dlrun.train import early_stopping
from dlrun.optim import regularizers
from dlrun.optim.averaging import AVERAGINGS
from dlrun.runs import tracking
from dlrun.sampling import SAMPLERS
from dlrun.config.registry import config_params

CONF = Path(__file__).resolve().parents[1] / "conf"
REGISTRIES = {
    "model": models.MODELS,
    "optim": optim.OPTIMIZERS,
    "schedule": optim.SCHEDULES,
    "regularizer": regularizers.REGULARIZERS,
    "dataset": catalog.DATASETS,
    "early_stopping": early_stopping.STOPPERS,
    "logger": tracking.LOGGERS,
    "averaging": AVERAGINGS,
    "sampler": SAMPLERS,
}
NESTED = {"regularizer": regularizers.REGULARIZERS, "logger": tracking.LOGGERS}  # list-valued groups


def options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_yaml_options_match_registry(group):
    assert options(group) == set(REGISTRIES[group])


def test_no_unregistered_group_directories():
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "__pycache__"}
    # experiment and hparams_search hold presets (`# @package _global_`), not components
    assert groups == set(REGISTRIES) | {"experiment", "hparams_search", "hydra"}


@pytest.mark.parametrize("group", ["model", "optim", "schedule", "dataset", "early_stopping", "averaging",
                                   "sampler"])
def test_yaml_name_is_file_name_and_keys_are_builder_params(group):
    for path in (CONF / group).glob("*.yaml"):
        node = yaml.safe_load(path.read_text())
        assert node["name"] == path.stem, path
        if group == "dataset":
            continue
        if isinstance(REGISTRIES[group][path.stem], Custom):  # the keys are the target's
            assert {"target"} <= set(node) <= {"name", "target", "lr"}, path
            continue
        params = {p.name for p in config_params(REGISTRIES[group][path.stem])}
        assert set(node) - {"name"} == params, f"{path}: keys differ from the builder's parameters"


@pytest.mark.parametrize("group", sorted(NESTED))
def test_list_valued_group_yaml_nests_under_its_own_name(group):
    for path in (CONF / group).glob("*.yaml"):
        node = yaml.safe_load(path.read_text())
        assert list(node) == [path.stem], path
        params = {p.name for p in config_params(NESTED[group][path.stem])}
        assert set(node[path.stem] or {}) == params, path


def test_every_config_value_is_commented():
    """Configs explain themselves: every key line in an option file carries a comment,
    or the file's header comment documents it (single-key files)."""
    for path in CONF.glob("*/*.yaml"):
        if path.parent.name in ("hydra", "experiment"):
            continue
        if path.parent.name == "hparams_search":  # search spaces: Hydra's sweep grammar,
            assert path.read_text().startswith("# @package _global_\n#"), path  # explained
            continue  # in the header (mlp.yaml comments every line as the worked example)
        text = path.read_text()
        assert text.lstrip().startswith("#"), f"{path} has no header comment"
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("- "):
                continue  # a defaults-list entry (hparams_search: `- override /model: mlp`)
            if ":" in stripped and not stripped.startswith("#") and not stripped.startswith("name:"):
                if stripped.endswith(":") or stripped.endswith("{}"):
                    continue  # a nesting key
                assert "#" in line, f"{path}: '{stripped}' has no comment"


def yaml_defaults(group: str):
    """(path, builder, {key: YAML value}) of every option of a group."""
    for path in sorted((CONF / group).glob("*.yaml")):
        node = yaml.safe_load(path.read_text()) or {}
        if group in NESTED:
            yield path, NESTED[group][path.stem], dict(node[path.stem] or {})
        else:
            builder = REGISTRIES[group][path.stem]
            if not isinstance(builder, Custom):  # its keys are the target's (test_plugins.py)
                yield path, builder, {k: v for k, v in node.items() if k != "name"}


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@pytest.mark.parametrize("group", ["model", "optim", "schedule", "early_stopping", "regularizer", "logger",
                                   "averaging", "sampler"])
def test_yaml_values_are_the_builders_defaults(group):
    """One place per default: an option's YAML says what its builder's signature says (a
    builder called without the key behaves as the YAML describes)."""
    differ = []
    for path, builder, values in yaml_defaults(group):
        for p in config_params(builder):
            if p.default is not p.empty and p.name in values and not same(values[p.name], p.default):
                differ.append(f"{path.relative_to(CONF)}: {p.name} is {values[p.name]!r} in the YAML, "
                              f"{p.default!r} in the builder")
    assert not differ, "\n".join(differ)
