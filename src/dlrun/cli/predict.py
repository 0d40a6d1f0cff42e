"""`dlrun-predict RUN_DIR IMAGES...`: a finished run classifies image files and .npy arrays, one
line per image (`path[index]: label L (p=0.97)`); how images are prepared: dlrun.cli.inference."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from dlrun.errors import DlrunError, FileError, one_line
from dlrun.cli.inference import BOX, FASHION_CLASSES, SIDE, Model, load_run


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


if __name__ == "__main__":  # python -m dlrun.cli.predict RUN_DIR IMAGES...
    predict_main(sys.argv[1:])
