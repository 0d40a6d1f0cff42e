"""Compose dlrun configs in tests the way the CLI does (Hydra's compose API, packaged configs)."""
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig


def compose(*overrides: str) -> DictConfig:
    """The config of `dlrun *overrides`, with plots=false unless `plots` is given: in-process
    tests do not draw pictures (1-2 s a run; tests/test_plots.py draws them)."""
    overrides = list(overrides)
    if not any(o.lstrip("+~").startswith("plots=") for o in overrides):
        overrides.append("plots=false")
    from dlrun.config.plugins import custom_keys  # model.width=64 after model=custom, as the CLI
    overrides = custom_keys(overrides)
    with initialize_config_module("dlrun.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)
