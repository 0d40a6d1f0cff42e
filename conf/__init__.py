"""dlrun's Hydra configs. This file makes them importable as the package `dlrun.conf`
(pyproject.toml maps it there), so Hydra finds them as `pkg://dlrun.conf` both from an editable
install and from `pip install .`."""
