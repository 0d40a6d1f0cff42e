"""Evaluation: a model's objective metrics over a whole split, and each epoch's metrics record."""
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlrun.data import preprocess
from dlrun.data import splits as data_splits
from dlrun.data import views
from dlrun.errors import DlrunError
from dlrun.models import objectives
from dlrun.train.setup import Setup
from dlrun.train.state import TrainState, model_variables


# ---- evaluation ------------------------------------------------------------------------------
def host_chunks(split: data_splits.Split, batch: int):
    """A host split as device chunks of `batch` rows, the last padded with label -1 (the
    padding a device-resident split carries), each copied ahead of its use."""
    n = split.n
    starts = np.arange(0, n, batch)
    rows = [np.minimum(np.arange(s, s + batch), n - 1) for s in starts]
    for (x, y), s in zip(data_splits.host_batches(split, rows), starts):
        if s + batch > n:  # the last chunk: its rows past n are padding
            y = jax.numpy.where(jax.numpy.arange(batch) < n - s, y, -1)
        yield x, y


def eval_output(model: nn.Module, variables: dict, x: jax.Array, tta: str = "none"):
    """The model's output in eval mode; with test-time augmentation (train.tta, classifiers) the
    mean of the logits over dlrun.data.views.tta_views of x (pixels in [0, 1], before any
    transform: the transform is applied to each view inside `model_input`)."""
    if tta == "none":
        return model.apply(variables, x, train=False)
    outs = [model.apply(variables, v, train=False) for v in views.tta_views(x, tta)]
    return sum(outs) / len(outs)


def make_evaluator(model: nn.Module, batch: int, copies: int = 1,
                   transform: Optional[preprocess.Transform] = None, top_k: int = 0,
                   tta: str = "none") -> Callable[[dict, data_splits.Split], dict]:
    """(variables, split) -> {metric: mean over the split} for each of the model's objective's
    metrics (classifiers: 'loss', 'error', and top<k>_error with top_k), in eval mode (no
    dropout, no corruption; BatchNorm's running statistics), the logits averaged over the views
    of test-time augmentation `tta`; with copies > 1, the variables have a leading copy axis
    and each value is an array (copies,).

    Scan-friendly (dense) models evaluate a whole split in one jitted call, a lax.map over
    chunks of `batch` (radford_logreg: 70,000 images in 9 ms instead of 76 ms as 70 calls);
    convnets keep one call per chunk, as XLA:CPU runs convolutions inside loops far slower.
    """

    objective = objectives.of(model, top_k=top_k)
    apply = model_input(model, transform)

    def chunk(variables, x, y):  # x (batch, H, W, C) uint8, y (batch,) with -1 = padding
        out = eval_output(apply, variables, data_splits.pixels(x), tta)
        _, metrics = objective.per_example(model, out, y)  # (K, batch)
        return metrics @ (y >= 0).astype(jnp.float32)

    if copies > 1:
        chunk = jax.vmap(chunk, in_axes=(0, None, None))  # -> (copies, 2)

    @jax.jit
    def whole(params, x, y):
        xs, ys = x.reshape(-1, batch, *x.shape[1:]), y.reshape(-1, batch)
        return jax.lax.map(lambda c: chunk(params, *c), (xs, ys)).sum(0)

    chunk_jit = jax.jit(chunk)

    def evaluate(variables: dict, split: data_splits.Split) -> dict:
        if not split.on_device:
            total = sum(chunk_jit(variables, *chunk) for chunk in host_chunks(split, batch))
        elif getattr(model, "scan_friendly", False):
            total = whole(variables, split.x, split.y)
        else:
            total = sum(chunk_jit(variables, split.x[s:s + batch], split.y[s:s + batch])
                        for s in range(0, split.x.shape[0], batch))
        sums = np.moveaxis(np.asarray(total, np.float64), -1, 0)
        return {name: value / split.n for name, value in zip(objective.metrics, sums)}

    return evaluate


def setup_evaluator(setup: Setup, copies: int = 1) -> Callable[[dict, data_splits.Split], dict]:
    """make_evaluator as the run's config sets it up (batch, transform, top_k, tta)."""
    tc = setup.train
    return make_evaluator(setup.model, tc.eval_batch_size, copies, setup.transform, tc.top_k, tc.tta)


def model_input(model: nn.Module, transform: Optional[preprocess.Transform]):
    """The model with dataset.preprocess's transform in front (an object with .apply)."""
    if transform is None:
        return model

    class Transformed:
        @staticmethod
        def apply(variables, x, **kwargs):
            return model.apply(variables, transform(x), **kwargs)

    return Transformed


class TrainingDiverged(DlrunError):
    """train.nan_policy=raise and a step's loss or updated parameters were not finite."""

    keep_run_dir = True  # the CLI keeps what the run wrote before (metrics, best parameters)

    def __init__(self, message: str, records: list[dict]):
        super().__init__(message)
        self.records = records


def epoch_records(setup: Setup, state: TrainState, sums: dict, train_s: float,
                  epoch: int) -> list[dict]:
    """Each copy's metrics record of a trained epoch (sums: the step's running sums on the host,
    each entry (copies,)); TrainingDiverged under nan_policy=raise. The evaluation on the
    held-out splits is added by the Evaluation action (dlrun.train.actions.evaluation)."""
    tc = setup.train
    step = int(np.asarray(state.step).reshape(-1)[0])
    lr = float(setup.lr_schedule(step - 1))
    scales = setup.lr_scales or (1.0,)
    records = []
    for i, seen in enumerate(sums["examples"]):
        record = {"epoch": epoch, "step": step}
        record.update({f"train_{m}": sums["metrics"][m][i] / seen if seen else float("nan")
                       for m in setup.objective.metrics})
        record.update({"lr": lr * scales[i], "nonfinite_steps": int(sums["nonfinite_steps"][i]),
                       "epoch_seconds": train_s, "examples_per_second": seen / train_s})
        records.append(record)
    if tc.nan_policy == "raise" and sums["nonfinite_steps"].any():
        raise diverged(setup, sums, epoch, records)
    return records


def diverged(setup: Setup, sums: dict, epoch: int, records: list[dict]) -> TrainingDiverged:
    i = int(np.argmax(sums["nonfinite_steps"] > 0))
    first = int(sums["first_nonfinite_step"][i]) + 1  # 1-based, as the records' step counts
    copy = f" (copy seed {setup.seeds[i]})" if setup.copies > 1 else ""
    return TrainingDiverged(
        f"training diverged at epoch {epoch}, step {first}{copy}: non-finite loss or parameters "
        f"({int(sums['nonfinite_steps'][i])} such steps in the epoch, whose training is dropped); "
        f"the run directory keeps the metrics, best_params.pkl and checkpoints of the epochs before. Lower "
        f"optim.lr, or set train.nan_policy=skip to skip such steps and go on", records)


def add_evaluation(records: list[dict], setup: Setup, state: TrainState, evaluate: Callable,
                   splits: dict) -> None:
    """Adds <split>_<metric> of val, test (and train_eval with train.eval_train) to each copy's
    record, and eval_seconds."""
    t1 = time.perf_counter()
    evals = {}
    for name in ("val", "test"):
        if name in splits:
            evals[name] = evaluate(model_variables(state), splits[name])
    if setup.train.eval_train:
        evals["train_eval"] = evaluate(model_variables(state), splits["train"])
    eval_s = time.perf_counter() - t1
    for i, record in enumerate(records):
        for name, ev in evals.items():
            for metric, value in ev.items():
                if not (name == "train_eval" and metric == "loss"):
                    record[f"{name}_{metric}"] = float(np.reshape(value, -1)[i])
        record["eval_seconds"] = eval_s
