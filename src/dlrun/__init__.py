"""dlrun: a config-driven experiment runner for deep learning on JAX, Flax, Optax and Hydra."""

__version__ = "0.1.0"
