"""Readers for the users' own data: an .npz of arrays, CIFAR-10/100 batch files, an image folder.

Each returns `dlrun.data.arrays.Arrays` (checked there) or raises DataError with one line:

- npz           x_train, y_train, x_test, y_test, optional x_val/y_val and class_names, read
                without pickle (allow_pickle=False). Members stored uncompressed (np.savez)
                can be memory-mapped (`mmap=True`), so a file larger than RAM streams from disk.
- cifar10/100   the "python version" batches (data_batch_1..5, test_batch, batches.meta;
                CIFAR-100: train, test, meta). They are pickles: read with dlrun's
                arrays-only unpickler, so a crafted file is refused and nothing in it runs.
- image_folder  root/train/<class>/*.png|jpg (and test/, optional val/), decoded once with
                Pillow, resized to one size, and cached as .npy files under the dlrun cache
                dir, keyed by every file's name, size and mtime (a changed file invalidates
                the cache; the user's folder is never written to). The cache is memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dlrun.data.arrays import Arrays, check
from dlrun.data.download import one_line
from dlrun.errors import DataError
from dlrun.runs.atomic import ArraysOnly

NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "class_names")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CACHE_FORMAT = 1  # bump when the decoded layout changes: old caches are then not reused


# ---- npz -------------------------------------------------------------------------------------
def read_npz(path: str | os.PathLike, mmap: bool = False) -> Arrays:
    """The arrays of a user's .npz file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"dataset.path={path}: no such file; give an .npz written with "
                        f"np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            unknown = [k for k in keys if k not in NPZ_KEYS]
            if unknown:
                raise DataError(f"{path}: unknown array(s) {', '.join(unknown)}; an npz dataset holds "
                                f"{', '.join(NPZ_KEYS)}")
            stored = _stored_members(path) if mmap else {}
            arrays = {k: stored[k] if k in stored else npz[k] for k in keys}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz of numeric arrays ({one_line(e)}); write it "
                        f"with np.savez, without object arrays") from None
    names = tuple(str(n) for n in arrays.pop("class_names", ()))
    return check(Arrays(arrays.get("x_train"), arrays.get("y_train"), arrays.get("x_test"),
                        arrays.get("y_test"), arrays.get("x_val"), arrays.get("y_val"), names,
                        files=[_file_record(path)]), str(path))


def _stored_members(path: Path) -> dict[str, np.ndarray]:
    """Memory maps of the members np.savez stored uncompressed (np.savez_compressed ones are
    left out: they have to be decompressed into memory)."""
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                continue
            f.seek(info.header_offset)
            local = f.read(30)  # the local file header: name and extra-field lengths at 26..30
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") \
                + int.from_bytes(local[28:30], "little")
            f.seek(start)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                continue
            out[info.filename[:-4]] = np.memmap(path, dtype, "r", f.tell(), shape,
                                                "F" if fortran else "C")
    return out


def _file_record(path: Path) -> dict:
    from dlrun.data.sources import sha256_file
    return {"file": path.name, "path": str(path.resolve()), "sha256": sha256_file(path)}


# ---- CIFAR -----------------------------------------------------------------------------------
CIFAR = {  # name -> (train files, test files, meta file, label key, label-names key)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names"),
    "cifar100": (["train"], ["test"], "meta", "{labels}_labels", "{labels}_label_names"),
}


def read_cifar(name: str, data_dir: str, labels: str = "fine") -> Arrays:
    """CIFAR-10 or CIFAR-100 ("python version") from `data_dir`; `labels` picks CIFAR-100's
    fine (100) or coarse (20) classes."""
    train_files, test_files, meta_file, label_key, names_key = CIFAR[name]
    label_key, names_key = label_key.format(labels=labels), names_key.format(labels=labels)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: dataset.data_dir={root} is not a directory; give the folder "
                        f"holding {', '.join(train_files + test_files)} and {meta_file} (the "
                        f"\"CIFAR python version\" archive, extracted)")
    missing = [f for f in train_files + test_files + [meta_file] if not (root / f).is_file()]
    if missing:
        raise DataError(f"{name}: dataset.data_dir={root} lacks {', '.join(missing)}; extract the "
                        f"CIFAR python-version archive there")
    meta = _unpickle(root / meta_file, name)
    names = tuple(_text(n) for n in _field(meta, names_key, root / meta_file, name))
    x_train, y_train = _cifar_split(root, train_files, label_key, name)
    x_test, y_test = _cifar_split(root, test_files, label_key, name)
    files = [_file_record(root / f) for f in train_files + test_files + [meta_file]]
    return check(Arrays(x_train, y_train, x_test, y_test, class_names=names, files=files),
                 f"{name} in {root}")


def _cifar_split(root: Path, files: list[str], label_key: str, name: str):
    xs, ys = [], []
    for fname in files:
        batch = _unpickle(root / fname, name)
        data = np.asarray(_field(batch, "data", root / fname, name))
        labels = np.asarray(_field(batch, label_key, root / fname, name))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"{name}: {root / fname} holds data of shape {data.shape} ({data.dtype}) "
                            f"and {len(labels)} labels; a CIFAR batch holds uint8 (N, 3072) and N "
                            f"labels")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


class CifarUnpickler(ArraysOnly):
    """numpy's array constructors, and _codecs.encode (how a Python 3 pickle of protocol 2
    stores bytes: a string and its encoding, nothing that runs code)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return super(ArraysOnly, self).find_class(module, name)
        try:
            return super().find_class(module, name)
        except pickle.UnpicklingError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never "
                                         f"needs") from None


def _unpickle(path: Path, name: str) -> dict:
    """A CIFAR pickle through the arrays-only unpickler (bytes keys from Python 2 kept)."""
    try:
        with open(path, "rb") as f:
            obj = CifarUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{name}: cannot read {path} ({one_line(e)})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as e:
        raise DataError(f"{name}: {path} is not a CIFAR batch dlrun can read safely ({one_line(e)}); "
                        f"nothing in it was run. Use the official python-version files") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: {path} holds a {type(obj).__name__}, not a CIFAR batch (a dict)")
    return obj


def _field(batch: dict, key: str, path: Path, name: str):
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise DataError(f"{name}: {path} has no '{key}' entry; is it a {name} file? (for CIFAR-100 "
                    f"dataset.labels is fine or coarse)")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---- image folders ---------------------------------------------------------------------------
def read_image_folder(root: str, image_size: Optional[tuple[int, int]], channels: Optional[int],
                      cache_dir: Path) -> Arrays:
    """root/{train,test[,val]}/<class>/<image>, decoded once into a cache (module docstring)."""
    root_path = Path(root).expanduser()
    listing = _list_images(root_path)
    classes = sorted(listing["train"])
    for split, by_class in listing.items():
        extra = sorted(set(by_class) - set(classes))
        if extra:
            raise DataError(f"{root_path}/{split} has class folder(s) {', '.join(extra)} that "
                            f"{root_path}/train lacks; every class needs training images")
    files = [p for by_class in listing.values() for paths in by_class.values() for p in paths]
    stats = [(str(p.relative_to(root_path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    wanted = list(image_size) if image_size else None  # None: the most common size, found once
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, wanted, channels, stats]).encode()).hexdigest()[:20]
    where = cache_dir / "image_folder" / key
    if not (where / "done.json").is_file():
        size = tuple(image_size) if image_size else _common_size(files)
        _decode_into(where, listing, classes, size, channels, len(files))
    load = lambda n: np.load(where / f"{n}.npy", mmap_mode="r")  # noqa: E731
    parts = {s: (load(f"x_{s}"), load(f"y_{s}")) for s in listing}
    val = parts.get("val", (None, None))
    record = [{"file": "image_folder", "path": str(root_path.resolve()), "images": len(files),
               "cache": str(where), "key": key}]
    return check(Arrays(*parts["train"], *parts["test"], *val, tuple(classes), len(classes), record),
                 str(root_path))


def _list_images(root: Path) -> dict[str, dict[str, list[Path]]]:
    def images_of(folder: Path) -> dict[str, list[Path]]:
        by_class = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                    for d in sorted(folder.iterdir()) if d.is_dir()}
        return {c: ps for c, ps in by_class.items() if ps}
    return list_split_folders(root, "images", "*.png", images_of,
                              f" ({', '.join(IMAGE_SUFFIXES)})")


def list_split_folders(root: Path, what: str, example: str,
                       files_of: Callable[[Path], dict[str, list[Path]]],
                       empty_hint: str = "") -> dict[str, dict[str, list[Path]]]:
    """{split: {class: files}} of the folder-per-class layout root/{train,test[,val]}/<class>/
    (image folders, texts), `files_of(split folder)` listing each split's classes and files;
    DataError naming what is missing otherwise."""
    if not root.is_dir():
        raise DataError(f"dataset.root={root} is not a directory; give a folder with train/<class>/ "
                        f"and test/<class>/ subfolders of {what}")
    listing = {}
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            if split == "val":
                continue
            raise DataError(f"dataset.root={root} has no {split}/ folder; the layout is "
                            f"root/train/<class>/{example}, root/test/<class>/{example} (val/ optional)")
        by_class = files_of(folder)
        if not by_class:
            raise DataError(f"{folder} holds no class folders with {what}{empty_hint}")
        listing[split] = by_class
    return listing


def _common_size(files: list[Path]) -> tuple[int, int]:
    """The most common (height, width) among the images (read from their headers only)."""
    sizes = Counter()
    for p in files:
        with _open_image(p) as im:
            sizes[(im.height, im.width)] += 1
    return sizes.most_common(1)[0][0]


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: not an image Pillow can read ({one_line(e)}); remove or replace "
                        f"it") from None


def _decode_into(where: Path, listing: dict, classes: list[str], size: tuple[int, int],
                 channels: Optional[int], total: int) -> None:
    """Decode every image into where/{x,y}_{split}.npy, written into a temporary directory that
    is renamed into place, so a cache is complete or absent."""
    from PIL import Image
    mode = {1: "L", 3: "RGB"}.get(channels) if channels else _mode_of(listing)
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}-", dir=where.parent))
    t0, done = time.perf_counter(), 0
    try:
        for split, by_class in listing.items():
            items = [(p, classes.index(c)) for c, ps in by_class.items() for p in ps]
            x = np.lib.format.open_memmap(tmp / f"x_{split}.npy", "w+", np.uint8,
                                          (len(items), *size, 1 if mode == "L" else 3))
            for i, (p, _) in enumerate(items):
                with _open_image(p) as im:
                    try:
                        im = im.convert(mode)
                        if (im.height, im.width) != size:
                            im = im.resize((size[1], size[0]), Image.BILINEAR)
                        arr = np.asarray(im, np.uint8)
                    except OSError as e:
                        raise DataError(f"{p}: cannot decode ({one_line(e)}); remove or replace it") from None
                x[i] = arr.reshape(x.shape[1:])
                done += 1
                progress(done, total, t0)
            x.flush()
            del x
            np.save(tmp / f"y_{split}.npy", np.array([c for _, c in items], np.int32))
        (tmp / "done.json").write_text(json.dumps({"images": total, "size": list(size), "mode": mode}))
        try:
            os.rename(tmp, where)
        except OSError:  # another process finished the same cache first
            if not (where / "done.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _mode_of(listing: dict) -> str:
    """'L' when every image is grayscale, else 'RGB' (decoding all of them in colour)."""
    for by_class in listing.values():
        for paths in by_class.values():
            for p in paths:
                with _open_image(p) as im:
                    if im.mode not in ("L", "1", "I", "I;16", "F", "LA"):
                        return "RGB"
    return "L"


def progress(done: int, total: int, t0: float, what: str = "decoding images") -> None:
    """A one-line progress bar on stderr while reading (a line per 10 % when not a terminal)."""
    tty = sys.stderr.isatty()
    step = max(1, total // 10)
    if not (tty or done % step == 0 or done == total):
        return
    width = 30
    bar = "#" * (width * done // total) + "-" * (width - width * done // total)
    rate = done / max(time.perf_counter() - t0, 1e-9)
    line = f"{what} [{bar}] {done}/{total} ({rate:,.0f}/s)"
    sys.stderr.write(("\r" + line + ("\n" if done == total else "")) if tty else line + "\n")
    sys.stderr.flush()
