"""Time one checkpoint save (dlrun.runs.checkpoints.Checkpoints.save: synchronous Orbax, fsynced) for
the state of each preset: parameters, optimizer state and best parameters. Prints ms per save.

    .venv/bin/python benchmarks/bench_checkpoint.py
"""
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from hydra import compose, initialize_config_module

from dlrun import train
from dlrun.runs.checkpoints import Checkpoints, Progress
from dlrun.train.step import sums_to_array

PRESETS = {"radford_logreg": ["+experiment=radford_logreg"], "default mlp": [],
           "radford_modern_net": ["+experiment=radford_modern_net"],
           "radford_convnet": ["+experiment=radford_convnet"]}


def main(saves: int = 11) -> None:
    for name, overrides in PRESETS.items():
        with initialize_config_module("dlrun.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        setup = train.build_setup(cfg)
        start = train.fresh_start(setup)
        tree = {"state": start.state, "acc": sums_to_array(setup, train.epoch_acc(setup)),
                "rng": jax.random.key_data(start.train_key), "best_params": start.best_params}
        meta = Progress(1).to_meta({"config": "placeholder"}, 0)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints = Checkpoints(Path(tmp), keep=2)
            times = []
            for step in range(1, saves + 1):
                t0 = time.perf_counter()
                checkpoints.save(step, tree, meta, None)
                times.append(time.perf_counter() - t0)
            checkpoints.close()
        print(f"{name:20s} {train.count_params(start.state.params):>9,d} params  "
              f"save {1e3 * np.median(times[1:]):6.1f} ms (median of {saves - 1}, "
              f"min {1e3 * min(times[1:]):.1f})")


if __name__ == "__main__":
    main()
