"""The run's pictures at its end (`plots: true`): from its final variables and the test split."""
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dlrun import models
from dlrun.data import splits as data_splits
from dlrun.train.setup import Setup

log = logging.getLogger("dlrun")


def pictures(setup: Setup, run_dir: Path, history: list[dict], variables: dict,
             test: data_splits.Split, seed: int) -> None:
    """The run's pictures (dlrun.runs.pictures), from its final variables and the test split."""
    from dlrun.runs import pictures as plots
    t0 = time.perf_counter()
    model, transform = setup.model, setup.transform
    images = data_splits.host_images(test)
    labels = np.asarray(test.y[:test.n])
    predict = reconstruct = gibbs = None
    if isinstance(model, models.NearestNeighbours) or setup.objective.name == "rnnrbm":
        pass  # fit_knn passes its own predictions; the RNN-RBM's pictures: dlrun.train.sequences
    elif setup.objective.name == "classify":
        apply = jax.jit(lambda v, x: jnp.argmax(model.apply(
            v, x if transform is None else transform(x), train=False), -1))
        batch = setup.train.eval_batch_size
        predict = lambda x: np.concatenate([np.asarray(apply(variables, jnp.asarray(x[s:s + batch])))
                                            for s in range(0, len(x), batch)])
    elif not getattr(model, "below", ()):  # a first layer: its input and output are pixels
        out = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)["logits"]))
        reconstruct = lambda x: np.asarray(out(variables, jnp.asarray(x)))
        if setup.objective.name == "cd":
            gibbs = plots.rbm_gibbs(variables["params"], jax.random.key(seed))
    try:
        names = plots.write_all(run_dir, setup.objective.name, history, setup.objective.select,
                                jax.device_get(variables["params"]), images, labels, predict,
                                reconstruct, gibbs, transform.pixel_space if transform else None,
                                setup.data.class_names, title(setup, run_dir),
                                images=setup.data.kind == "image")
    except (OSError, ValueError, RuntimeError) as exc:  # the run itself is complete and saved
        log.warning("warning: could not draw the run's pictures: %s", exc)
        return
    log.info("pictures (%.1fs): %s", time.perf_counter() - t0, ", ".join(names))


def title(setup: Setup, run_dir: Path) -> str:
    """What the learning curves are of: the run directory, model, optimizer and dataset."""
    return f"{run_dir.name}: {setup.label}"
