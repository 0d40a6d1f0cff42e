"""How much the RNN-RBM's test NLL depends on the AIS settings (docs/music.md).

    .venv/bin/python scripts/ais_settings.py RUN_DIR [FRAMES]

For a finished model=rnnrbm run on dataset=chorales, estimates the NLL per frame of FRAMES
(default 512) test frames drawn at random (seed 0), with the run's default AIS settings (16 runs
x 100 inverse temperatures) and with more (16 x 1000, 64 x 1000). AIS underestimates log Z on
average, so the NLL rises towards its true value as the settings grow.
"""
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from dlrun.data import music, sources
from dlrun.runs.atomic import load_arrays
from dlrun.train import sequences


def main(run_dir: str, frames: int = 512) -> None:
    run = Path(run_dir)
    ds = json.loads((run / "run.json").read_text())["config"]["dataset"]
    params = load_arrays(run / "params.pkl")
    data = music.chorale_arrays(ds["step"], ds["low"], ds["high"], ds["chunk"], ds["pieces"],
                                str(sources.default_cache_dir(ds["cache_dir"])),
                                ds.get("transpose", "none"))  # runs before transpose: Bach's keys
    v, bv, bh = sequences.real_frames(params, data.x_test, data.y_test)
    rows = np.random.RandomState(0).choice(len(v), min(frames, len(v)), replace=False)
    for runs, betas in ((16, 100), (16, 1000), (64, 1000)):
        t0 = time.perf_counter()
        ll = sequences.frame_log_likelihoods(params, v[rows], bv[rows], bh[rows],
                                             jax.random.key(0), runs, betas)
        print(f"AIS {runs} runs x {betas} betas: NLL {-ll.mean():.3f} nats per frame "
              f"({len(rows)} test frames, {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:3]))
