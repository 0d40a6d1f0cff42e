"""`dlrun-predict RUN_DIR INPUTS...`: a finished run classifies images, folders of images and
arrays (.npy, .npz), one line per image (`path[index]: label L NAME (p=0.97)`), or a CSV / JSON
file of the predictions (--format, --output).

Every input is brought to the run's input shape (H, W, C, from run.json's dataset record):
- image files (PNG, JPEG, anything Pillow reads; a folder: every image in it, recursively) are
  converted to the run's colour (grayscale for C = 1, RGB for C = 3; transparency composited
  on white) and resized to H x W. For digit datasets (mnist, mnist_sample) an image that is not
  already 28x28 is normalised the way MNIST was made instead (`prepare_digit`).
- arrays hold prepared images already: (H, W[, C]), (N, H, W[, C]) or (N, H*W*C), uint8 0-255
  or floats in [0, 1]; an .npz is read from its x_test array (else x, else its only array).
A text run (dataset=imdb, text_folder) classifies text files instead (a folder: every file in it
not starting with ".", recursively), each tokenised and encoded with the run's vocab.json as
its training texts were (dlrun.data.text.encode_text).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from dlrun.cli.inference import BOX, IMAGE_SUFFIXES, Model, load_run
from dlrun.errors import DlrunError, FileError, one_line

SIDE = 28  # MNIST's field: digits are centred by mass in 28x28


def prepare_digit(gray: np.ndarray) -> np.ndarray:
    """A grayscale digit image (H, W) uint8 -> (28, 28) float32 in [0, 1], white ink on black:
    inverted when the border is light; an image of exactly 28x28 taken as it is, any other
    size normalised as MNIST was made (the ink's bounding box resized to fit 20x20, aspect
    kept, placed in 28x28 with its centre of mass at the centre)."""
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
    r, c = np.indices(patch.shape)
    com = ((r * patch).sum() / mass, (c * patch).sum() / mass) if mass > 0 else \
        ((patch.shape[0] - 1) / 2, (patch.shape[1] - 1) / 2)
    top = int(np.clip(round((SIDE - 1) / 2 - com[0]), 0, SIDE - patch.shape[0]))
    left = int(np.clip(round((SIDE - 1) / 2 - com[1]), 0, SIDE - patch.shape[1]))
    out = np.zeros((SIDE, SIDE), np.float32)
    out[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    return out


def open_image(path: Path):
    """The image at `path`, upright (EXIF), transparency composited on white; FileError if it
    cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # a phone photo: upright as it is shown
            if "A" in img.getbands() or img.mode == "P":  # transparent background: on white
                base = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(base, img.convert("RGBA"))
            img.load()
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FileError(f"cannot read {path} as an image ({one_line(exc)}); give PNG or JPEG "
                        f"files, folders of them, or .npy/.npz arrays") from None
    if min(img.size) < 2:
        raise FileError(f"{path} is {img.size[0]}x{img.size[1]} pixels: too small for an image")
    return img


def read_image(path: Path, shape: tuple = (SIDE, SIDE, 1), digits: bool = True) -> np.ndarray:
    """An image file -> (H, W, C) float32 in [0, 1] in the run's input shape (module docstring)."""
    from PIL import Image

    img = open_image(path)
    h, w, c = shape
    if digits:
        return prepare_digit(np.asarray(img.convert("L")))[..., None]
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.LANCZOS)
    return (np.asarray(img, np.float32) / 255.0).reshape(h, w, c)


def as_inputs(x: np.ndarray, path: Path, shape: tuple) -> np.ndarray:
    """An array of prepared images -> (N, H, W, C) float32 in [0, 1]; FileError otherwise."""
    h, w, c = shape
    given = x.shape
    if given in ((h, w), (h, w, c)):
        x = x[None]
    if x.ndim == 2 and given[1] == h * w * c:
        x = x.reshape(-1, h, w, c)
    elif x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (h, w, c) or len(x) == 0:
        forms = [f"({h}, {w})" if c == 1 else f"({h}, {w}, {c})",
                 f"(N, {h}, {w})" if c == 1 else None, f"(N, {h}, {w}, {c})", f"(N, {h * w * c})"]
        raise FileError(f"{path} holds an array of shape {given}; this run takes "
                        f"{', '.join(f for f in forms if f)} images")
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


def read_array(path: Path) -> np.ndarray:
    """The images array of an .npy, or of an .npz (x_test, else x, else its only array)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise FileError(f"cannot read {path} as a numpy array ({one_line(exc)}); give a file "
                        f"written by numpy.save or numpy.savez") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded
    with loaded:
        keys = loaded.files
        key = next((k for k in ("x_test", "x") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise FileError(f"{path} holds {', '.join(keys)}; name the images array x_test or x")
        try:
            return loaded[key]
        except ValueError as exc:
            raise FileError(f"cannot read {path}[{key}] ({one_line(exc)})") from None


def read_inputs(paths: list[str], shape: tuple, digits: bool) -> tuple[list[str], np.ndarray]:
    """(names, images (N, H, W, C) float32): one name per image, `path` or `path[i]` for arrays."""
    names, images = [], []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileError(f"{path} is a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            names += [str(p) for p in found]
            images += [read_image(p, shape, digits)[None] for p in found]
        elif path.suffix.lower() in (".npy", ".npz"):
            x = as_inputs(read_array(path), path, shape)
            names += [f"{text}[{i}]" for i in range(len(x))]
            images.append(x)
        else:
            names.append(text)
            images.append(read_image(path, shape, digits)[None])
    return names, np.concatenate(images)


def read_texts(paths: list[str], vocab_file: Path) -> tuple[list[str], np.ndarray]:
    """(names, token ids (N, maxlen) int32) of text files and folders of them, encoded with
    the run's vocabulary."""
    from dlrun.data import text as texts
    try:
        record = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileError(f"{vocab_file}: cannot read the run's vocabulary ({one_line(exc)})") from None
    files = []
    for name in paths:
        path = Path(name)
        found = ([p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
                 if path.is_dir() else [path])
        if not found:
            raise FileError(f"{path} is a folder without text files")
        files += found
    encode = texts.encoder(record)
    ids = [encode(texts.read_text(p, first_line=False))[None] for p in files]
    return [str(p) for p in files], np.concatenate(ids)


def label_text(label: int, class_names) -> str:
    """`9 Ankle boot` where the dataset names its classes (other than by their digits), else `9`."""
    name = class_names[label] if label < len(class_names) else str(label)
    return str(label) if name == str(label) else f"{label} {name}"


def table(names, probs, class_names, top: int) -> list[dict]:
    rows = []
    for name, p in zip(names, probs):
        order = np.argsort(-p, kind="stable")[:top]
        rows.append({"input": name, "label": int(order[0]),
                     "class": class_names[order[0]] if order[0] < len(class_names) else str(order[0]),
                     "probability": round(float(p[order[0]]), 6),
                     "top": [{"label": int(k), "probability": round(float(p[k]), 6)} for k in order]})
    return rows


def render(rows: list[dict], fmt: str, class_names) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["input", "label", "class", "probability"])
        for r in rows:
            writer.writerow([r["input"], r["label"], r["class"], f"{r['probability']:.6f}"])
        return out.getvalue()
    lines = []
    for r in rows:
        line = f"{r['input']}: label {label_text(r['label'], class_names)} (p={r['probability']:.2f})"
        if len(r["top"]) > 1:
            line += "  top " + ", ".join(f"{label_text(t['label'], class_names)} {t['probability']:.2f}"
                                         for t in r["top"])
        lines.append(line + "\n")
    return "".join(lines)


def predict_main(argv: Optional[list[str]] = None) -> None:
    """`dlrun-predict RUN_DIR INPUTS... [--top K] [--format text|csv|json] [--output FILE]`."""
    parser = argparse.ArgumentParser(
        prog="dlrun-predict", description="Classify images (PNG, JPEG; any size and colour, "
        "brought to the run's input shape), folders of images, or .npy/.npz arrays of prepared "
        "images with a finished dlrun run; prints one line per image (its label and "
        "probability), or writes CSV/JSON.")
    parser.add_argument("run_dir", help="a run directory (or its seed_<seed>/ copy)")
    parser.add_argument("images", nargs="+", help="image files, folders of images, or .npy/.npz "
                                                  "arrays of shape (N, H, W[, C]) or (N, H*W*C)")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="also give the K most probable labels (default 1: just the label)")
    parser.add_argument("--format", choices=("text", "csv", "json"), default="text")
    parser.add_argument("--output", metavar="FILE", help="write the predictions to FILE (a new "
                                                         "file; default: standard output)")
    args = parser.parse_args(argv)
    prog = parser.prog
    if not 1 <= args.top <= 10:
        parser.exit(2, f"{prog}: error: --top must be in 1..10 (got {args.top})\n")
    if args.output and Path(args.output).exists():
        parser.exit(2, f"{prog}: error: --output {args.output} already exists; dlrun-predict never "
                       f"overwrites a file: give a new name\n")
    try:
        run, names, probs = classify(args.run_dir, args.images)
    except DlrunError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    text = render(table(names, probs, run.data.class_names, args.top), args.format,
                  run.data.class_names)
    if not args.output:
        sys.stdout.write(text)
        return
    from dlrun.runs.atomic import atomic_write_text
    try:
        atomic_write_text(Path(args.output), text)
    except OSError as exc:
        parser.exit(2, f"{prog}: error: cannot write {args.output} ({exc.strerror or exc})\n")
    print(f"wrote {len(names)} predictions to {args.output}")


def classify(run_dir: str, inputs: list[str]):
    """(the run, one name per image, class probabilities (N, K)); FileError for a run without
    labels or unreadable inputs (checked before JAX is imported where possible)."""
    run = load_run(run_dir)
    no_labels = (f"{run.dir} is a model={run.model_name} run: it learnt no labels, so there is "
                 f"nothing to predict")
    if run.config["model"]["name"] in ("autoencoder", "rbm", "rnnrbm"):
        raise FileError(f"{no_labels}; `dlrun-eval {run.dir}` reports its metrics")
    if run.data.kind == "tokens":
        from dlrun.runs import layout
        names, images = read_texts(inputs, run.info_dir / layout.VOCAB)
    else:
        names, images = read_inputs(inputs, run.data.image_shape, run.data.digits)
    model = Model(run)
    if model.objective != "classify":
        raise FileError(no_labels)
    return run, names, model.probabilities(images)


if __name__ == "__main__":  # python -m dlrun.cli.predict RUN_DIR IMAGES...
    predict_main(sys.argv[1:])
