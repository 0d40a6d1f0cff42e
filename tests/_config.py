"""Compose dlrun configs in tests the way the CLI does (Hydra's compose API, packaged configs)."""
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig


def compose(*overrides: str) -> DictConfig:
    with initialize_config_module("dlrun.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))
