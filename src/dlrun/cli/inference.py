"""Using a finished run: `dlrun-eval RUN_DIR` and `dlrun-predict RUN_DIR IMAGES...`.

A run directory (see docs/guide.md, "What a run writes") holds everything needed to rebuild its model:
run.json (the resolved config, the run format and the dlrun version), params.pkl (the final
parameters; the best epoch's under early stopping) and, with `dataset.preprocess`,
preprocess.npz (the transform fitted on its training split). `load_run` checks the directory
and reads them; the model is rebuilt from the config with dlrun.train.build_setup, exactly as
training built it, and the transform is applied as training applied it.

  dlrun-eval     evaluates the run on a split of its dataset (or of another): the objective's
                 metrics (classifiers: error and loss; autoencoders, RBMs: reconstruction
                 metrics), printed, and written with a confusion matrix (classifiers) as
                 eval.json, confusion_matrix.csv and confusion_matrix.png into
                 RUN_DIR/eval/<dataset>-<split>/ (or --out)
  dlrun-predict  classifies image files (PNG, JPEG, anything Pillow reads) and .npy arrays,
                 one line per image: `path[index]: label L (p=0.97)`

Images are made to look like the training data (`prepare_image`): grayscale, inverted if the
background is light (MNIST digits are white on black; decided by the mean of the border
pixels), scaled to [0, 1]. An image of exactly 28x28 pixels is taken as it is (it is assumed to
be laid out like MNIST already, e.g. a digit saved from the data set). Any other size is
normalised the way MNIST itself was made: the bounding box of the ink is resized (aspect kept,
antialiased) to fit in 20x20 pixels and placed in a 28x28 field so that its centre of mass is
at the centre. .npy arrays must already be 28x28 images (uint8 0-255 or floats 0-1) and are
taken as they are.

Every problem the user can fix (a missing or incomplete run, another run format, an unreadable
image, a wrong array shape) is one line `dlrun-eval: error: ...` / `dlrun-predict: error: ...`
with exit code 2, and nothing is written. The checks come before JAX is imported, so a refusal
is quick.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dlrun import __version__
from dlrun.runs import ownership
from dlrun.runs.checkpoints import FORMAT, read_run_info
from dlrun.errors import ConfigError, DlrunError, FileError, one_line
from dlrun.runs.atomic import load_arrays

SIDE = 28
BOX = 20  # MNIST's digits fit in a 20x20 box, centred by mass in 28x28
DATASETS = ("mnist_sample", "mnist", "fashion_mnist")
SPLITS = ("test", "val", "train")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


# ---- the run directory -------------------------------------------------------------------------
@dataclass
class FinishedRun:
    dir: Path
    config: dict  # the resolved config, as one copy trains it (train.num_seeds = 1)
    params: dict  # params.pkl
    transform: Optional[object] = None  # dlrun.data.preprocess.Transform (preprocess.npz), if any

    @property
    def model_name(self) -> str:
        return str(self.config["model"]["name"])

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"]["name"])


def load_run(run_dir: str | Path) -> FinishedRun:
    """Check that `run_dir` is a complete run this dlrun can read, and read it (JAX is imported
    only for a run with preprocess.npz)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise FileError(f"{run_dir} is not a directory; give a run directory, e.g. "
                        f"outputs/<date>/<time>-<id>")
    copy_seed = None
    info_dir = run_dir
    if not (run_dir / "run.json").exists() and run_dir.name.startswith("seed_") \
            and (run_dir.parent / "run.json").exists():  # one copy of train.num_seeds > 1
        info_dir, copy_seed = run_dir.parent, run_dir.name[len("seed_"):]
    info = read_run_info(info_dir)
    if info.get("format") != FORMAT:
        raise FileError(f"{run_dir} was written by dlrun {info.get('dlrun', '?')} (run format "
                        f"{info.get('format', '?')}); this dlrun {__version__} reads run format "
                        f"{FORMAT}: use the dlrun version that wrote it")
    config = info["config"]
    copies = int(config.get("train", {}).get("num_seeds", 1))
    if copies > 1 and copy_seed is None:
        names = sorted(p.name for p in run_dir.glob("seed_*") if p.is_dir()) or [
            f"seed_{int(config['train']['seed']) + i}" for i in range(copies)]
        raise FileError(f"{run_dir} holds {copies} copies (train.num_seeds={copies}), each in a "
                        f"directory of its own; give one of them: "
                        + ", ".join(str(run_dir / n) for n in names))
    if copy_seed is not None:
        try:
            seed = int(copy_seed)
        except ValueError:
            raise FileError(f"{run_dir} is not a copy directory seed_<seed> of its run") from None
        config = {**config, "train": {**config["train"], "seed": seed, "num_seeds": 1, "lrs": []}}
    if not (run_dir / "summary.json").is_file():
        from dlrun.runs.checkpoints import is_locked
        if is_locked(info_dir):
            raise FileError(f"{run_dir} is incomplete: a dlrun process is training it right now; "
                            f"wait for it to finish")
        raise FileError(f"{run_dir} is incomplete: it has no summary.json (still training, or "
                        f"stopped before it finished); resume it with: dlrun resume="
                        f"{info_dir.resolve()}")
    params = load_arrays(run_dir / "params.pkl")
    transform = None
    if (info_dir / "preprocess.npz").is_file() or \
            config.get("dataset", {}).get("preprocess", "none") != "none":
        from dlrun.data.preprocess import Transform
        transform = Transform.load(info_dir / "preprocess.npz")
    return FinishedRun(run_dir, config, params, transform)


class Model:
    """A run's model with its parameters, rebuilt as training built it (imports JAX)."""

    def __init__(self, run: FinishedRun):
        import dataclasses

        import jax
        from omegaconf import OmegaConf

        from dlrun import models, train

        self.run = run
        try:  # build_setup is pure: no process is joined, no mesh built, no logger imported
            setup = train.build_setup(OmegaConf.create(run.config))
        except ConfigError as exc:
            raise FileError(f"cannot rebuild the model of {run.dir} from its run.json ({exc}); "
                            f"it is damaged or from another dlrun version") from None
        setup = dataclasses.replace(setup, transform=run.transform)
        if setup.train.compile_cache:
            from dlrun.data import sources as datasets
            from dlrun.runtime.compile_cache import enable_compile_cache
            enable_compile_cache(datasets.default_cache_dir() / "xla")
        self.setup, self.model = setup, setup.model
        self.objective = setup.objective.name
        self.knn = isinstance(self.model, models.NearestNeighbours)
        if self.knn:
            if set(run.params) != {"train_x", "train_y"}:
                raise FileError(f"{run.dir / 'params.pkl'} is not a knn run's memory (train_x, "
                                f"train_y); it is damaged or from another dlrun version")
            self.variables = None
            return
        blank = train.init_state(setup, jax.random.key(0))
        extra = dict(blank.extra)
        if "frozen" in extra:
            raise FileError(f"{run.dir} is a pretraining phase of a stacked model (its lower "
                            f"layers are not in its params.pkl); evaluate the run directory "
                            f"above it")
        shapes = lambda tree: jax.tree.map(np.shape, tree)  # noqa: E731
        if shapes(run.params) != shapes(blank.params):
            raise FileError(f"{run.dir / 'params.pkl'} does not hold the parameters of the model "
                            f"its run.json describes ({run.model_name}); it is damaged or from "
                            f"another dlrun version")
        self.variables = {"params": jax.tree.map(jax.numpy.asarray, run.params), **extra}

    def _features(self, x):
        """(B, 28, 28, 1) float32 pixels -> the model's input (the run's transform applied)."""
        return x if self.setup.transform is None else self.setup.transform(x)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) float32 in [0, 1] -> (N, 10) class probabilities (knn: neighbour votes)."""
        import jax
        import jax.numpy as jnp

        batch = self.setup.train.eval_batch_size
        if self.knn:
            memory_x = self._features(jnp.asarray(self.run.params["train_x"], jnp.float32)
                                      .reshape(-1, SIDE, SIDE, 1) / 255.0)
            memory_x = memory_x.reshape(memory_x.shape[0], -1)
            memory_y = jnp.asarray(self.run.params["train_y"])
            # arguments, not constants: a memorised MNIST (188 MB) must not be compiled in
            fn = jax.jit(lambda args, q: jax.nn.one_hot(self.model.predict(
                *args, self._features(q).reshape(q.shape[0], -1)), 10))
            args = (memory_x, memory_y)
        else:
            fn = jax.jit(lambda variables, q: jax.nn.softmax(self.model.apply(
                variables, self._features(q), train=False), -1))
            args = self.variables
        x = np.asarray(images, np.float32)[..., None]
        return np.concatenate([np.asarray(fn(args, jnp.asarray(x[s:s + batch])))
                               for s in range(0, len(x), batch)] or [np.zeros((0, 10), np.float32)])


# ---- dlrun-eval ----------------------------------------------------------------------------------
def evaluate(model: Model, dataset: str, split: str) -> tuple[dict, Optional[np.ndarray], int]:
    """(metrics, confusion matrix or None, number of images) of the run on a split."""
    import dataclasses

    from dlrun import train
    from dlrun.runs import pictures as plots
    from dlrun.data import splits as data_splits

    spec = dataclasses.replace(model.setup.dataset, name=dataset)
    loaded = data_splits.load_splits(spec, model.setup.train.eval_batch_size)
    if split not in loaded:
        raise FileError(f"the run has no {split} split (dataset.val_size=0); use --split test or "
                        f"train")
    data = loaded[split]
    images = data_splits.host_images(data)
    labels = np.asarray(data.y[:data.n])
    if model.objective != "classify":
        evaluator = train.make_evaluator(model.model, model.setup.train.eval_batch_size,
                                         transform=model.setup.transform)
        metrics = {k: float(v) for k, v in evaluator(model.variables, data).items()}
        return metrics, None, data.n
    if model.knn:
        metrics = {}
    else:
        evaluator = train.make_evaluator(model.model, model.setup.train.eval_batch_size,
                                         transform=model.setup.transform)
        metrics = {k: float(v) for k, v in evaluator(model.variables, data).items()}
    predicted = np.argmax(model.probabilities(images), -1)
    matrix = plots.confusion(predicted, labels)
    metrics.setdefault("error", float(np.mean(predicted != labels)))
    metrics["accuracy"] = 1.0 - metrics["error"]
    return metrics, matrix, data.n


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
    parser.add_argument("--dataset", choices=DATASETS, help="default: the run's own")
    parser.add_argument("--split", choices=SPLITS, default="test", help="default: test")
    parser.add_argument("--out", help="where to write (default RUN_DIR/eval/<dataset>-<split>)")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        run = load_run(args.run_dir)
        dataset = args.dataset or run.dataset
        out = Path(args.out) if args.out else run.dir / "eval" / f"{dataset}-{args.split}"
        ownership.check_replaceable(out, EVAL_OUTPUTS, "eval.json", is_eval_record, prog)
        model = Model(run)
        metrics, matrix, n = evaluate(model, dataset, args.split)
    except DlrunError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    print(f"run {run.dir}: model {run.model_name}, trained on {run.dataset}")
    print(f"{dataset} {args.split} ({n} images): {format_metrics(metrics)}")
    try:
        written = write_eval(out, run, dataset, args.split, n, metrics, matrix)
    except FileError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    except OSError as exc:
        parser.exit(2, f"{prog}: error: cannot write into {out} ({exc.strerror or exc})\n")
    print(f"wrote {out}: {', '.join(written)}")


EVAL_OUTPUTS = ("eval.json", "confusion_matrix.csv", "confusion_matrix.png")


def is_eval_record(path: Path) -> bool:
    """Whether `path` is an eval.json dlrun-eval wrote (so the files beside it are its too)."""
    record = json.loads(path.read_text())
    return isinstance(record, dict) and {"run_dir", "metrics", "dlrun"} <= record.keys()


def write_eval(out: Path, run: FinishedRun, dataset: str, split: str, n: int, metrics: dict,
               matrix: Optional[np.ndarray]) -> list[str]:
    from dlrun.runs import pictures as plots
    from dlrun.runs.atomic import atomic_write_json

    record = {"run_dir": str(run.dir.resolve()), "model": run.model_name, "dataset": dataset,
              "split": split, "images": n, "params": "params.pkl", "metrics": metrics,
              "dlrun": __version__}
    ownership.check_replaceable(out, EVAL_OUTPUTS, "eval.json", is_eval_record, "dlrun-eval")
    written = []
    if matrix is not None:
        record["confusion_matrix"] = matrix.tolist()
        plots.confusion_matrix(matrix, out / "confusion_matrix.png", out / "confusion_matrix.csv",
                               title=f"{dataset} {split}")
        written += ["confusion_matrix.csv", "confusion_matrix.png"]
    atomic_write_json(out / "eval.json", record)
    return ["eval.json"] + written


# ---- dlrun-predict -------------------------------------------------------------------------------
def prepare_image(gray: np.ndarray) -> np.ndarray:
    """A grayscale image (H, W) uint8 -> (28, 28) float32 in [0, 1], white ink on black (see
    the module docstring)."""
    from PIL import Image

    x = gray.astype(np.float32) / 255.0
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    if border.mean() > 0.5:  # a light background: dark ink on white paper
        x = 1.0 - x
    if x.shape == (SIDE, SIDE):
        return x
    ink = x > 0.25 * x.max() if x.max() > 0 else np.zeros(x.shape, bool)
    if not ink.any():  # blank: just scale it down
        return np.asarray(Image.fromarray(x, "F").resize((SIDE, SIDE), Image.LANCZOS)).clip(0, 1)
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    box = x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = box.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL: (width, height)
    patch = np.asarray(Image.fromarray(np.ascontiguousarray(box), "F")
                       .resize(size, Image.LANCZOS), np.float32).clip(0, 1)
    mass = patch.sum()
    if mass > 0:
        r, c = np.indices(patch.shape)
        com = ((r * patch).sum() / mass, (c * patch).sum() / mass)
    else:
        com = ((patch.shape[0] - 1) / 2, (patch.shape[1] - 1) / 2)
    top = int(np.clip(round((SIDE - 1) / 2 - com[0]), 0, SIDE - patch.shape[0]))
    left = int(np.clip(round((SIDE - 1) / 2 - com[1]), 0, SIDE - patch.shape[1]))
    out = np.zeros((SIDE, SIDE), np.float32)
    out[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    return out


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # a phone photo: upright as it is shown
            if "A" in img.getbands():  # transparent background: composite on white
                base = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(base, img.convert("RGBA"))
            gray = np.asarray(img.convert("L"))
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        why = one_line(exc)
        raise FileError(f"cannot read {path} as an image ({why}); give PNG or JPEG files, or an "
                        f".npy array of 28x28 images") from None
    if min(gray.shape) < 2:
        raise FileError(f"{path} is {gray.shape[1]}x{gray.shape[0]} pixels: too small for an image")
    return prepare_image(gray)


def read_npy(path: Path) -> np.ndarray:
    """(N, 28, 28) float32 in [0, 1] from an .npy of shape (28, 28), (N, 28, 28), (N, 28, 28, 1)
    or (N, 784), uint8 (or other integers) 0-255 or floats 0-1."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise FileError(f"cannot read {path} as a numpy array ({one_line(exc)}); give "
                        f"a file written by numpy.save") from None
    shape = x.shape
    if shape == (SIDE, SIDE):
        x = x[None]
    elif x.ndim == 2 and shape[1] == SIDE * SIDE:
        x = x.reshape(-1, SIDE, SIDE)
    elif x.ndim == 4 and shape[1:] == (SIDE, SIDE, 1):
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE) or len(x) == 0:
        raise FileError(f"{path} holds an array of shape {shape}; give (28, 28), (N, 28, 28) or "
                        f"(N, 784) images")
    if x.dtype.kind in "iu":
        if x.min() < 0 or x.max() > 255:
            raise FileError(f"{path}: integer pixels must be in 0-255 (found {x.min()}..{x.max()})")
        return x.astype(np.float32) / 255.0
    if x.dtype.kind == "b":
        return x.astype(np.float32)
    if x.dtype.kind != "f":
        raise FileError(f"{path} holds {x.dtype} values; give uint8 0-255 or floats 0-1")
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise FileError(f"{path}: float pixels must be finite and in [0, 1] (found "
                        f"{np.nanmin(x):.4g}..{np.nanmax(x):.4g}); give uint8 0-255 or floats 0-1")
    return x.astype(np.float32)


def read_inputs(paths: list[str]) -> tuple[list[str], np.ndarray]:
    """(names, images (N, 28, 28) float32): one name per image, `path` or `path[i]` for .npy."""
    names, images = [], []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            raise FileError(f"{path} is a directory; give image files or .npy arrays")
        if path.suffix.lower() == ".npy":
            x = read_npy(path)
            names += [f"{text}[{i}]" for i in range(len(x))]
            images.append(x)
        else:
            names.append(text)
            images.append(read_image(path)[None])
    return names, np.concatenate(images)


def label_text(label: int, dataset: str) -> str:
    return f"{label} {FASHION_CLASSES[label]}" if dataset == "fashion_mnist" else str(label)


def predict_main(argv: Optional[list[str]] = None) -> None:
    """`dlrun-predict RUN_DIR IMAGES... [--top K]`."""
    parser = argparse.ArgumentParser(
        prog="dlrun-predict", description="Classify image files (PNG, JPEG; any size, converted "
        "to 28x28 grayscale like the training data) or .npy arrays of 28x28 images with a "
        "finished dlrun run; prints one line per image: its label and probability.")
    parser.add_argument("run_dir", help="a run directory (or its seed_<seed>/ copy)")
    parser.add_argument("images", nargs="+", help="image files, or .npy arrays of shape (28, 28), "
                                                  "(N, 28, 28) or (N, 784)")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="also print the K most probable labels (default 1: just the label)")
    args = parser.parse_args(argv)
    prog = parser.prog
    if not 1 <= args.top <= 10:
        parser.exit(2, f"{prog}: error: --top must be in 1..10 (got {args.top})\n")
    try:
        run = load_run(args.run_dir)
        if run.config["model"]["name"] in ("autoencoder", "rbm"):
            raise FileError(f"{run.dir} is a model={run.model_name} run: it learnt no labels, so "
                            f"there is nothing to predict; `dlrun-eval {run.dir}` reports its "
                            f"reconstruction metrics")
        names, images = read_inputs(args.images)
        model = Model(run)
        if model.objective != "classify":
            raise FileError(f"{run.dir} is a model={run.model_name} run: it learnt no labels, so "
                            f"there is nothing to predict")
        probs = model.probabilities(images)
    except DlrunError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    for name, p in zip(names, probs):
        order = np.argsort(-p, kind="stable")
        line = f"{name}: label {label_text(int(order[0]), run.dataset)} (p={p[order[0]]:.2f})"
        if args.top > 1:
            line += "  top " + ", ".join(f"{label_text(int(k), run.dataset)} {p[k]:.2f}"
                                         for k in order[:args.top])
        print(line)


if __name__ == "__main__":  # python -m dlrun.cli.inference eval|predict ...
    {"eval": eval_main, "predict": predict_main}[sys.argv[1]](sys.argv[2:])
