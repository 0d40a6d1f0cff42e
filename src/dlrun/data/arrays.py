"""What every dataset source yields, and the checks every one of them passes.

A source (dlrun.data.sources for the built-in IDX files, dlrun.data.formats for npz, CIFAR and
image folders, dlrun.data.text for texts, or a user's function) returns `Arrays`: images
(N, H, W, C) uint8 0-255 or float32 in [0, 1], or token ids (N, T) int32 (a text source:
`vocab_size` > 0, id 0 = padding), integer labels (N,), an optional validation split of its
own, and optional class names. `check` refuses anything else with one line naming the source
and the fix, so a user's file fails before anything is compiled, never with a traceback from
inside a model. `DataInfo` is what the rest of dlrun needs to know about a dataset: the input
shape and class count the models are built for, the class names the pictures and
dlrun-predict print, and its kind: "image" or "tokens" (what the models, the pictures and the
commands accept).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from dlrun.errors import DataError

MNIST_LIKE = ("mnist", "mnist_sample")  # digits: dlrun-predict centres a drawing like MNIST did
KINDS = ("image", "tokens", "roll")  # DataInfo.kind: pixels (N, H, W, C), token ids (N, T) of a
# text source, or piano rolls (N, frames, pitches, 1) 0/1 whose labels are lengths (dlrun.data.music)


@dataclass(frozen=True)
class DataInfo:
    """A dataset's description: input shape (H, W, C; tokens: (T,)), classes, and raw split
    sizes."""

    image_shape: tuple[int, ...]  # one example's shape: (H, W, C) pixels, or (T,) token ids
    num_classes: int
    counts: tuple[int, int, int]  # (train, val the source holds apart (0 = none), test)
    class_names: tuple[str, ...] = ()
    digits: bool = False  # MNIST-like handwritten digits (dlrun-predict's 20x20 box, centre of mass)
    kind: str = "image"  # KINDS
    vocab_size: int = 0  # tokens: ids 0..vocab_size-1 (0 = padding, 1 = unknown word); images: 0

    def as_dict(self) -> dict:
        return {"image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "counts": list(self.counts), "class_names": list(self.class_names),
                "digits": self.digits, "kind": self.kind, "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, d: dict) -> "DataInfo":
        """as_dict's inverse; a record without kind (dlrun before texts) is of images."""
        return cls(tuple(d["image_shape"]), int(d["num_classes"]), tuple(d["counts"]),
                   tuple(d.get("class_names", ())), bool(d.get("digits", False)),
                   str(d.get("kind", "image")), int(d.get("vocab_size", 0)))

    def example_bytes(self) -> int:
        """The device memory of one example: uint8 pixels, int32 token ids or float32 frames."""
        return int(np.prod(self.image_shape)) * (1 if self.kind == "image" else 4)


@dataclass(frozen=True)
class Arrays:
    """A dataset in host memory (or memory-mapped): NHWC images and their labels per split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    class_names: tuple[str, ...] = ()
    num_classes: Optional[int] = None  # None: 1 + the largest label
    files: list = field(default_factory=list)  # provenance: {file, path, sha256 or size/mtime}
    vocab_size: int = 0  # > 0: x holds token ids (N, T) below it (dlrun.data.text); 0: images

    def info(self, digits: bool = False) -> DataInfo:
        n_val = 0 if self.x_val is None else len(self.x_val)
        return DataInfo(tuple(self.x_train.shape[1:]), self.classes(),
                        (len(self.x_train), n_val, len(self.x_test)), self.class_names, digits,
                        "tokens" if self.vocab_size else "image", self.vocab_size)

    def classes(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        if self.class_names:
            return len(self.class_names)
        labels = [y for y in (self.y_train, self.y_val, self.y_test) if y is not None and len(y)]
        return int(max(int(y.max()) for y in labels)) + 1


def as_images(x, origin: str, what: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 or float in [0, 1] -> NHWC; DataError otherwise."""
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or min(x.shape[1:], default=0) < 1:
        raise DataError(f"{origin}: {what} has shape {tuple(x.shape)}; images must be (N, H, W) "
                        f"or (N, H, W, C)")
    if x.shape[-1] > 4:
        raise DataError(f"{origin}: {what} has shape {tuple(x.shape)}, {x.shape[-1]} channels; "
                        f"images are channels-last (N, H, W, C) with C = 1, 3 or 4: transpose "
                        f"channels-first data with x.transpose(0, 2, 3, 1)")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        lo, hi = (float(np.min(x)), float(np.max(x))) if x.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise DataError(f"{origin}: {what} holds floats in [{lo:.4g}, {hi:.4g}]; float images "
                            f"must lie in [0, 1] (divide 0-255 pixels by 255, or store uint8)")
        return x.astype(np.float32, copy=False)
    if np.issubdtype(x.dtype, np.integer) and len(x) and int(x.min()) >= 0 and int(x.max()) <= 255:
        return x.astype(np.uint8)
    raise DataError(f"{origin}: {what} has dtype {x.dtype}; images must be uint8 (0-255) or floats "
                    f"in [0, 1]")


def as_tokens(x, vocab_size: int, origin: str, what: str) -> np.ndarray:
    """(N, T) integer token ids in [0, vocab_size) -> int32; DataError otherwise."""
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim != 2 or x.shape[1] < 1 or not np.issubdtype(x.dtype, np.integer):
        raise DataError(f"{origin}: {what} has shape {tuple(x.shape)} and dtype {x.dtype}; token "
                        f"ids are integers of shape (N, T)")
    if x.size and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise DataError(f"{origin}: {what} holds token ids in [{int(x.min())}, {int(x.max())}]; "
                        f"they must lie in [0, {vocab_size})")
    return x if x.dtype == np.int32 else x.astype(np.int32)


def as_labels(y, n: int, origin: str, what: str) -> np.ndarray:
    """Integer labels (N,) >= 0 matching n images; DataError otherwise."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{origin}: {what} has shape {tuple(y.shape)} and dtype {y.dtype}; labels "
                        f"must be integers of shape (N,) (class indices, not one-hot)")
    if len(y) != n:
        raise DataError(f"{origin}: {what} has {len(y)} labels for {n} images; give one label per "
                        f"image")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{origin}: {what} holds the label {int(y.min())}; labels are class "
                        f"indices 0..K-1")
    return y.astype(np.int32)


def check(arrays: Arrays, origin: str) -> Arrays:
    """`arrays` with images NHWC (or token ids (N, T) int32) and labels int32, all splits alike;
    DataError naming `origin` (the file or function) otherwise: wrong shapes, labels out of
    range, mismatched counts."""
    xs, ys = {}, {}
    vocab = arrays.vocab_size
    for split in ("train", "val", "test"):
        x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        if (x is None) != (y is None):
            raise DataError(f"{origin}: x_{split} and y_{split} come together; give both or neither")
        if x is None:
            continue
        xs[split] = (as_tokens(x, vocab, origin, f"x_{split}") if vocab
                     else as_images(x, origin, f"x_{split}"))
        ys[split] = as_labels(y, len(xs[split]), origin, f"y_{split}")
    for split in ("train", "test"):
        if split not in xs or len(xs[split]) == 0:
            raise DataError(f"{origin}: no {split} images (x_{split}); a dataset needs a train and "
                            f"a test split")
    shapes = {s: x.shape[1:] for s, x in xs.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{origin}: the splits' images differ in shape ("
                        + ", ".join(f"{s} {tuple(v)}" for s, v in shapes.items())
                        + "); every image must have the same H, W, C")
    names = tuple(str(n) for n in arrays.class_names)
    k = arrays.num_classes or (len(names) if names else None)
    if names and len(names) != k:
        raise DataError(f"{origin}: {len(names)} class names for {k} classes")
    top = max(int(y.max()) for y in ys.values() if len(y))
    if k is not None and top >= k:
        raise DataError(f"{origin}: the label {top} is out of range for {k} classes (0..{k - 1}); "
                        f"fix the labels or the class names")
    if k is None and top < 1:
        raise DataError(f"{origin}: every label is 0; a classifier needs at least two classes")
    return Arrays(xs["train"], ys["train"], xs["test"], ys["test"], xs.get("val"), ys.get("val"),
                  names, k, arrays.files, vocab)
