"""`dlrun-eval RUN_DIR`: a finished run's metrics on a split of its dataset (or another),
written with a confusion matrix into RUN_DIR/eval/<dataset>-<split>/ (or --out). How the run is
read and its model rebuilt: dlrun.cli.inference."""
from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path
from typing import Optional

import numpy as np

from dlrun import __version__
from dlrun.errors import DlrunError, FileError
from dlrun.runs import layout, ownership
from dlrun.cli.inference import PARAMS, SPLITS, Model, FinishedRun, load_run


def evaluate(model: Model, dataset: str, split: str) -> tuple[dict, Optional[np.ndarray], int]:
    """(metrics, confusion matrix or None, number of images) of the run on a split."""
    from dlrun import train
    from dlrun.runs import pictures as plots
    from dlrun.data import splits as data_splits

    spec, info = dataset_for(model, dataset)
    spec.check_run(model.run.info_dir, "evaluating it")  # a text dataset: the run's vocabulary
    loaded = data_splits.load_splits(spec, model.setup.train.eval_batch_size,
                                     data_splits.streams(spec, info))
    if split not in loaded:
        raise FileError(f"the run has no {split} split (dataset.val_size=0); use --split test or "
                        f"train")
    data = loaded[split]
    labels = data_splits.host_labels(data)
    if model.objective != "classify":
        evaluator = train.setup_evaluator(model.setup)
        metrics = {k: float(v) for k, v in evaluator(model.variables, data).items()}
        return metrics, None, data.n
    if model.knn:
        metrics = {}
    else:
        evaluator = train.setup_evaluator(model.setup)
        metrics = {k: float(v) for k, v in evaluator(model.variables, data).items()}
    batch = 10_000  # images on the host at a time (a streamed split may not fit in memory)
    predicted = np.concatenate([np.argmax(model.probabilities(data_splits.host_images(
        data_splits.Split(data.x[s:s + batch], data.y[s:s + batch], min(batch, data.n - s), False))), -1)
        for s in range(0, data.n, batch)])
    matrix = plots.confusion(predicted, labels, model.data.num_classes)
    metrics.setdefault("error", float(np.mean(predicted != labels)))
    metrics["accuracy"] = 1.0 - metrics["error"]
    return metrics, matrix, data.n


def dataset_for(model: Model, dataset: str):
    """(dataset config, its description) to evaluate on: the run's own, or another built-in
    dataset of the same image shape and classes (with the run's common keys)."""
    from dlrun.config.registry import build
    from dlrun.data import catalog

    if dataset == model.run.dataset:
        return model.setup.dataset, model.setup.data
    node = {k: v for k, v in model.run.config["dataset"].items() if k in catalog.COMMON_KEYS}
    spec = build("dataset", catalog.DATASETS, {**node, "name": dataset})
    info = spec.describe()
    if (info.kind, info.image_shape, info.num_classes) != (model.data.kind, model.data.image_shape,
                                                           model.data.num_classes):
        raise FileError(f"{dataset} has {info.num_classes} classes of {info.image_shape} images; "
                        f"the run was trained on {model.data.num_classes} classes of "
                        f"{model.data.image_shape}")
    return spec, info


def format_metrics(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        parts.append(f"{key} {100 * value:.2f}%" if key in ("error", "accuracy")
                     else f"{key} {value:.4g}")
    return "  ".join(parts)


def eval_main(argv: Optional[list[str]] = None) -> None:
    """`dlrun-eval RUN_DIR [--dataset D] [--split S] [--out DIR]`."""
    parser = argparse.ArgumentParser(
        prog="dlrun-eval", description="Evaluate a finished dlrun run's saved parameters on a "
        "split of its dataset (or of another one); print the metrics and write eval.json and a "
        "confusion matrix (classifiers).")
    parser.add_argument("run_dir", help="a run directory (outputs/<date>/<time>-<id>, or its "
                                        "seed_<seed>/ copy)")
    parser.add_argument("--dataset", help="another built-in dataset of the same shape "
                                          "(mnist_sample, mnist, fashion_mnist); default: the run's own")
    parser.add_argument("--params", choices=PARAMS, default="final",
                        help="final: params.pkl of a finished run (default); best: "
                             "best_params.pkl (the best epoch so far); checkpoint: the newest "
                             "checkpoint (a run stopped before it finished)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="default: test")
    parser.add_argument("--out", help="where to write (default RUN_DIR/eval/<dataset>-<split>)")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        run = load_run(args.run_dir, args.params)
        dataset = args.dataset or run.dataset
        suffix = "" if args.params == "final" else f"-{args.params}"
        out = Path(args.out) if args.out else run.dir / "eval" / f"{dataset}-{args.split}{suffix}"
        ownership.check_replaceable(out, EVAL_OUTPUTS, layout.EVAL, is_eval_record, prog)
        model = Model(run)
        metrics, matrix, n = evaluate(model, dataset, args.split)
    except DlrunError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    print(f"run {run.dir}: model {run.model_name}, trained on {run.dataset}, parameters "
          f"{describe_params(run, model)}")
    noun = "texts" if run.data.kind == "tokens" else "images"
    print(f"{dataset} {args.split} ({n} {noun}): {format_metrics(metrics)}")
    try:
        written = write_eval(out, run, dataset, args.split, n, metrics, matrix)
    except FileError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    except OSError as exc:
        parser.exit(2, f"{prog}: error: cannot write into {out} ({exc.strerror or exc})\n")
    print(f"wrote {out}: {', '.join(written)}")


def describe_params(run: FinishedRun, model: Model) -> str:
    if run.which == "checkpoint":
        return f"of the newest checkpoint (epoch {getattr(model, 'checkpoint_epoch', '?')})"
    return layout.PARAMS if run.which == "final" else layout.BEST_PARAMS


EVAL_OUTPUTS = (layout.EVAL, "confusion_matrix.csv", "confusion_matrix.png")


def is_eval_record(path: Path) -> bool:
    """Whether `path` is an eval.json dlrun-eval wrote (so the files beside it are its too)."""
    record = json.loads(path.read_text())
    return isinstance(record, dict) and {"run_dir", "metrics", "dlrun"} <= record.keys()


def write_eval(out: Path, run: FinishedRun, dataset: str, split: str, n: int, metrics: dict,
               matrix: Optional[np.ndarray]) -> list[str]:
    from dlrun.runs import pictures as plots
    from dlrun.runs.atomic import atomic_write_json

    record = {"run_dir": str(run.dir.resolve()), "model": run.model_name, "dataset": dataset,
              "split": split, "images": n, "params": run.which, "metrics": metrics,
              "dlrun": __version__}
    ownership.check_replaceable(out, EVAL_OUTPUTS, layout.EVAL, is_eval_record, "dlrun-eval")
    written = []
    if matrix is not None:
        record["confusion_matrix"] = matrix.tolist()
        plots.confusion_matrix(matrix, out / "confusion_matrix.png", out / "confusion_matrix.csv",
                               title=f"{dataset} {split}", class_names=run.data.class_names)
        written += ["confusion_matrix.csv", "confusion_matrix.png"]
    atomic_write_json(out / layout.EVAL, record)
    return [layout.EVAL] + written


if __name__ == "__main__":  # python -m dlrun.cli.eval RUN_DIR ...
    eval_main(sys.argv[1:])
