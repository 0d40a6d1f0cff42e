"""The knn trainer (model=knn): memorise the training split, classify the held-out splits once."""
import logging
import time
from pathlib import Path

import jax
import numpy as np

from dlrun.data import splits as data_splits
from dlrun.runs import layout
from dlrun.runs.console import format_end
from dlrun.runs.writer import RunWriter
from dlrun.train.setup import Setup
from dlrun.train.summary import make_summary

log = logging.getLogger("dlrun")


def fit_knn(setup: Setup, run_dir: Path, splits: dict, started_at: float, draw: bool) -> dict:
    """Memorise the training split (saved as params.pkl: {'train_x' uint8, 'train_y'}), classify
    the val/test splits and write one metrics record and the summary."""
    model, train = setup.model, splits["train"]
    n, batch = train.n, setup.train.eval_batch_size
    features = lambda x: (data_splits.pixels(x) if setup.transform is None
                          else setup.transform(data_splits.pixels(x))).reshape(x.shape[0], -1)
    memory_x, memory_y = features(train.x[:n]), train.y[:n]
    predict = jax.jit(lambda memory_x, memory_y, queries: model.predict(memory_x, memory_y,
                                                                          features(queries)))
    log.info("model knn (k %d, metric %s): %d training images memorised; optim, schedule and "
             "train.epochs do not apply", model.k, model.metric, n)
    record = {"epoch": 1, "step": 0}
    t0 = time.perf_counter()
    for name in ("val", "test"):
        if name in splits:
            split = splits[name]
            predicted = np.concatenate([np.asarray(predict(memory_x, memory_y, split.x[s:s + batch]))
                                        for s in range(0, split.x.shape[0], batch)])[:split.n]
            record[f"{name}_error"] = float(np.mean(predicted != np.asarray(split.y[:split.n])))
    record["eval_seconds"] = time.perf_counter() - t0
    writer = RunWriter(run_dir)
    writer.append_metrics(record)
    writer.save_params(layout.PARAMS, {"train_x": np.asarray(train.x[:n]), "train_y": np.asarray(memory_y)})
    summary = make_summary(setup, [record], record, setup.select_key(splits), 0.0, 0.0,
                           time.perf_counter() - started_at, 0, loop="none")
    writer.save_summary(summary)
    if draw:  # predicted holds the test split's predictions
        from dlrun.runs import pictures as plots
        test = splits["test"]
        names = plots.write_all(run_dir, "classify", [], "error", {}, data_splits.host_images(test),
                                np.asarray(test.y[:test.n]), predict=lambda x: predicted,
                                class_names=setup.data.class_names)
        log.info("pictures: %s", ", ".join(names))
    log.info(format_end(summary))
    return summary
