"""summary.json: one builder for every trainer (gradient training, knn, each pretraining phase),
and the summary over the copies of train.num_seeds > 1."""
from typing import Optional

import jax
import numpy as np

from dlrun.runs import layout
from dlrun.runtime import distributed
from dlrun.train.setup import Setup


def make_summary(setup: Setup, history: list, best: Optional[dict], select: str, compile_s: float,
                 first_step_s: float, total_s: float, n_params: int, loop: Optional[str] = None) -> dict:
    """The run's summary from its metrics records. loop: the loop form to report ('none' for
    knn, which has no training steps; default: the run's)."""
    epoch_s = [r.get("epoch_seconds", 0.0) for r in history]
    steady = epoch_s[1:] or epoch_s  # the first epoch includes warm-up
    device = jax.devices()[0]
    return {
        "final": history[-1], "best": best, "best_selected_on": select,
        "epochs": len(history), "loop": loop or setup.loop, "n_params": n_params,
        "timings": {"compile_seconds": compile_s, "start_to_first_step_seconds": first_step_s,
                    "total_seconds": total_s, "train_seconds": sum(epoch_s),
                    "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in history),
                    "steady_epoch_seconds": float(np.median(steady)),
                    "steady_examples_per_second": float(np.median(
                        [r.get("examples_per_second", 0.0) for r in history[1:] or history]))},
        "device": {"platform": device.platform, "kind": device.device_kind,
                   "count": jax.device_count(), "processes": distributed.processes(),
                   "data_parallel_devices": setup.mesh.size if setup.mesh is not None else 1},
        "versions": versions(),
        "data": {**setup.dataset.record(), **setup.data.as_dict(),
                 "placement": "host (streamed)" if setup.stream else "device"},
    }


def summarize_copies(summaries: list[dict], total_s: float) -> dict:
    """The run directory's summary over N copies: each metric of the final epoch as the mean
    over copies ('final'), its standard deviation ('final_std'), and every copy's summary."""
    finals = [s["final"] for s in summaries]
    keys = [k for k, v in finals[0].items() if isinstance(v, (int, float))]
    values = {k: [f.get(k) for f in finals] for k in keys}
    numeric = {k: np.asarray(v, np.float64) for k, v in values.items() if None not in v}
    first = summaries[0]
    timings = dict(first["timings"], total_seconds=total_s, steady_examples_per_second_all_copies=
                   first["timings"]["steady_examples_per_second"] * len(summaries))
    return {"final": {k: float(v.mean()) for k, v in numeric.items()},
            "final_std": {k: float(v.std()) for k, v in numeric.items()},
            "best": None, "best_selected_on": first["best_selected_on"],
            "epochs": first["epochs"], "loop": first["loop"], "n_params": first["n_params"],
            "copies": [{"seed": s["seed"], "lr": s["lr"], "dir": layout.COPY_DIR.format(seed=s["seed"]),
                        "final": s["final"], "best": s["best"]} for s in summaries],
            "timings": timings, "device": first["device"], "versions": first["versions"],
            "data": first["data"]}


def versions() -> dict:
    """Installed versions of dlrun and the libraries that determine its numbers."""
    from importlib.metadata import version
    return {pkg: version(pkg) for pkg in
            ("dlrun", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "hydra-core", "numpy")}
