"""The `dataset` config group: one frozen dataclass per kind of source, and its registry.

Every option shares the keys of `DataConfig` (the validation split, preprocessing, augmentation,
where the splits live); each source adds where its data is: the built-in IDX datasets a
data_dir, `npz` a path, `image_folder` a root, `cifar10`/`cifar100` a data_dir, `imdb` and
`text_folder` a root of text files (dlrun.data.text: token ids, not images), `custom` a
target (dlrun.config.plugins). `describe()` says what the data is (dlrun.data.arrays.DataInfo:
input shape, classes, split sizes) and `load()` reads it; the built-in datasets describe
themselves without reading anything, the others read their files once per process.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import List, Optional

import numpy as np

from dlrun.config import plugins
from dlrun.config.registry import require, setattrs
from dlrun.data import formats, functions, music, sources
from dlrun.data import text
from dlrun.data.arrays import MNIST_LIKE, Arrays, DataInfo, check
from dlrun.data.preprocess import AUGMENT, PREPROCESS
from dlrun.errors import DataError

PLACEMENTS = ("auto", "device", "host")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class DataConfig:
    """The keys every `dataset` option has. val_size images are held out from the end of the
    training split (for a source without a validation split of its own); preprocess and augment
    are dlrun.data.preprocess's; placement and device_budget_mb decide whether the splits live
    on the device or stream from host memory (dlrun.data.splits). `name` is the option's."""

    val_size: int = 0
    train_subset: Optional[int] = None
    preprocess: str = "none"
    pca_eps: float = 1e-5
    pca_dims: int = 0
    augment: List[str] = ()
    max_shift: float = 2.0
    max_scale: float = 0.1
    elastic_alpha: float = 34.0
    elastic_sigma: float = 4.0
    crop_pad: int = 2
    placement: str = "auto"
    device_budget_mb: float = 4096.0
    name: str = field(kw_only=True)

    def __post_init__(self):
        require(self.val_size >= 0, f"val_size must be >= 0 (got {self.val_size})")
        require(self.train_subset is None or self.train_subset > 0,
                f"train_subset must be a positive number of images or null (got {self.train_subset})")
        require(self.preprocess in PREPROCESS,
                f"preprocess must be one of {', '.join(PREPROCESS)} (got '{self.preprocess}')")
        bad = [a for a in self.augment if a not in AUGMENT]
        require(not bad, f"augment takes a list of {', '.join(AUGMENT)} (got {list(self.augment)}), "
                         f"e.g. dataset.augment=[shift,scale]")
        require(self.crop_pad >= 0, f"crop_pad must be >= 0 pixels (got {self.crop_pad})")
        require(0 <= self.max_shift and 0 <= self.max_scale < 1 and self.elastic_alpha >= 0
                and self.elastic_sigma > 0, "need max_shift >= 0 pixels, max_scale in [0, 1), "
                                            "elastic_alpha >= 0 and elastic_sigma > 0")
        require(self.placement in PLACEMENTS,
                f"placement must be one of {', '.join(PLACEMENTS)} (got '{self.placement}')")
        require(self.device_budget_mb > 0, f"device_budget_mb must be > 0 (got {self.device_budget_mb})")
        setattrs(self, augment=tuple(dict.fromkeys(self.augment)))

    # ---- what a source implements
    def load(self) -> Arrays:
        raise NotImplementedError

    def describe(self) -> DataInfo:
        return self.load().info(digits=self.name in MNIST_LIKE)

    def files(self) -> list:
        """Where the data was read from, for summary.json (after load)."""
        return self.load().files

    def save_with_run(self, run_dir: Path) -> None:
        """Write what a run of this data needs besides run.json into its directory (a text
        dataset's vocab.json). Nothing for images."""

    def check_run(self, run_dir: Path, what: str) -> None:
        """FileError unless the data is still what the run in run_dir trained on, as far as its
        saved files tell (a text dataset's vocabulary); `what` needs it ("resuming it").
        Nothing for images."""

    # ---- shared
    def record(self) -> dict:
        return {"dataset": self.name, "files": self.files()}

    def check(self, info: DataInfo) -> None:
        """The checks that need the data's description; ConfigError naming the key."""
        n_train_raw, n_val, _ = info.counts
        require(not (n_val and self.val_size),
                f"val_size: {self.name} has a validation split of its own ({n_val} images); "
                f"set dataset.val_size=0 to use it")
        require(self.val_size < n_train_raw,
                f"val_size must be in [0, {n_train_raw}) for {self.name} (got {self.val_size})")
        if info.kind != "image":  # the rest are about pixels
            return
        pixels = int(np.prod(info.image_shape))
        require(self.pca_eps > 0 and 0 <= self.pca_dims <= pixels,
                f"need pca_eps > 0 and pca_dims in [0, {pixels}] (got {self.pca_eps}, {self.pca_dims})")
        half = min(info.image_shape[:2]) / 2
        require(self.max_shift <= half, f"max_shift must be at most {half:g} pixels for "
                                        f"{info.image_shape[0]}x{info.image_shape[1]} images")

    def sizes(self, info: DataInfo) -> tuple[int, int, int]:
        """(n_train, n_val, n_test) the splits hold."""
        n_train_raw, n_val, n_test = info.counts
        n_train = n_train_raw - self.val_size
        if self.train_subset is not None:
            n_train = min(n_train, self.train_subset)
        return n_train, n_val or self.val_size, n_test


@dataclass(frozen=True)
class IdxConfig(DataConfig):
    """mnist, fashion_mnist (four IDX files) and mnist_sample (shipped): dlrun.data.sources."""

    data_dir: Optional[str] = None
    download: bool = True
    mirrors: Optional[List[str]] = None

    def __post_init__(self):
        super().__post_init__()
        spec = sources.dataset_spec(self.name)
        require(self.data_dir is None or spec.source != "package",
                f"data_dir does not apply to {self.name}, which ships inside dlrun (got "
                f"{self.data_dir}); for your own copy of MNIST use dataset=mnist dataset.data_dir=DIR")
        setattrs(self, mirrors=None if self.mirrors is None else tuple(self.mirrors))

    def describe(self) -> DataInfo:
        spec = sources.dataset_spec(self.name)
        names = FASHION_CLASSES if self.name == "fashion_mnist" else tuple(map(str, range(10)))
        return DataInfo(spec.image_shape, spec.num_classes, (spec.counts[0], 0, spec.counts[1]),
                        names, self.name in MNIST_LIKE)

    def load(self) -> Arrays:
        x_train, y_train, x_test, y_test = sources.load_raw(
            self.name, data_dir=self.data_dir, download=self.download,
            mirrors=None if self.mirrors is None else list(self.mirrors))
        return check(Arrays(x_train, y_train, x_test, y_test, num_classes=10,
                            class_names=self.describe().class_names), self.name)

    def files(self) -> list:
        return sources.provenance(self.name, data_dir=self.data_dir)


@dataclass(frozen=True)
class NpzConfig(DataConfig):
    """The user's arrays: dlrun.data.formats.read_npz."""

    path: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        require(self.path is not None, "path is required: dataset=npz dataset.path=FILE.npz")

    def load(self) -> Arrays:
        return _cached(formats.read_npz, _stamp(Path(self.path).expanduser()), self.path, mmap=True)


@dataclass(frozen=True)
class CifarConfig(DataConfig):
    """CIFAR-10 / CIFAR-100 python-version batches: dlrun.data.formats.read_cifar."""

    data_dir: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        require(self.data_dir is not None,
                f"data_dir is required: dataset={self.name} dataset.data_dir=DIR (the folder "
                f"holding the extracted python-version batch files)")

    def load(self) -> Arrays:
        root = Path(self.data_dir).expanduser()
        stamp = tuple(_stamp(p) for p in sorted(root.iterdir())) if root.is_dir() else ()
        return _cached(formats.read_cifar, stamp, self.name, self.data_dir,
                       getattr(self, "labels", "fine"))


@dataclass(frozen=True)
class Cifar100Config(CifarConfig):
    """CIFAR-100, with its fine (100) or coarse (20) labels."""

    labels: str = "fine"

    def __post_init__(self):
        super().__post_init__()
        require(self.labels in ("fine", "coarse"), f"labels must be fine or coarse (got '{self.labels}')")


@dataclass(frozen=True)
class ImageFolderConfig(DataConfig):
    """root/{train,test[,val]}/<class>/<images>: dlrun.data.formats.read_image_folder."""

    root: Optional[str] = None
    image_size: Optional[List[int]] = None
    channels: Optional[int] = None
    cache_dir: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        require(self.root is not None, "root is required: dataset=image_folder dataset.root=DIR")
        size = self.image_size
        require(size is None or (len(size) == 2 and min(size) >= 1),
                f"image_size must be [height, width] in pixels or null (got {size})")
        require(self.channels in (None, 1, 3), f"channels must be 1, 3 or null (got {self.channels})")
        setattrs(self, image_size=None if size is None else tuple(size))

    def load(self) -> Arrays:
        cache = sources.default_cache_dir(self.cache_dir)
        return formats.read_image_folder(self.root, self.image_size, self.channels, cache)


@dataclass(frozen=True)
class ChoralesConfig(DataConfig):
    """The Bach chorales of music21's corpus as piano rolls (dlrun.data.music): rows are pieces
    (validation and test) or chunks of pieces (training), x (N, frames, pitches, 1) 0/1 and
    y (N,) the real frames of each row. For sequence models (model=rnnrbm)."""

    step: float = 1.0
    low: int = 21
    high: int = 108
    chunk: int = 100
    transpose: str = "c"
    pieces: Optional[int] = None
    cache_dir: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        require(self.step > 0, f"step must be > 0 quarter notes (got {self.step})")
        require(0 <= self.low <= self.high <= 127,
                f"need 0 <= low <= high <= 127 (MIDI pitches; got {self.low}, {self.high})")
        require(self.chunk >= 0, f"chunk must be >= 0 frames (0 = whole pieces; got {self.chunk})")
        require(self.transpose in ("none", "c"), f"transpose must be none or c (got '{self.transpose}')")
        require(self.pieces is None or self.pieces >= 3,
                f"pieces must be >= 3 (one for each split) or null for all (got {self.pieces})")
        require(self.preprocess == "none" and not self.augment,
                "dataset.preprocess and dataset.augment transform images; piano rolls take "
                "neither (dataset=chorales)")

    def describe(self) -> DataInfo:
        return dataclasses.replace(self.load().info(), kind="roll")

    def load(self) -> Arrays:
        return _cached(music.chorale_arrays, (), self.step, self.low, self.high, self.chunk,
                       self.pieces, str(sources.default_cache_dir(self.cache_dir)), self.transpose)


@dataclass(frozen=True)
class TextFolderConfig(DataConfig):
    """root/{train,test[,val]}/<class>/<file>, one text per file, as token ids (N, maxlen) with a
    vocabulary built on train/: dlrun.data.text. imdb (ImdbConfig) is the aclImdb layout."""

    root: Optional[str] = None
    vocab_size: int = 10000
    maxlen: int = 100
    long: str = "truncate"
    lowercase: bool = True
    first_line: bool = False
    val_fraction: float = 0.0
    cache_dir: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        require(self.root is not None, f"root is required: dataset={self.name} dataset.root=DIR")
        require(self.vocab_size > text.FIRST_ID,
                f"vocab_size must be > {text.FIRST_ID}: ids 0 and 1 are padding and unknown "
                f"words (got {self.vocab_size})")
        require(self.maxlen >= 1, f"maxlen must be >= 1 token (got {self.maxlen})")
        require(self.long in text.LONG, f"long must be one of {', '.join(text.LONG)} (got '{self.long}')")
        require(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1) (got {self.val_fraction})")
        require(not (self.val_fraction and self.val_size),
                "val_fraction and val_size both hold training texts out; set one of them to 0")
        require(self.preprocess == "none" and not self.augment,
                f"preprocess and augment transform images; the token ids of dataset={self.name} "
                f"take neither (leave dataset.preprocess=none and dataset.augment=[])")

    def settings(self) -> text.TextSettings:
        return text.TextSettings(self.vocab_size, self.maxlen, self.long, self.lowercase,
                                 self.first_line, self.val_fraction)

    def read(self) -> tuple[Arrays, dict]:
        """(the token ids, the vocab.json record)."""
        cache = sources.default_cache_dir(self.cache_dir)
        classes = text.IMDB_CLASSES if self.name == "imdb" else None
        stamp = text.folder_stamp(Path(self.root).expanduser())  # once per process while unchanged
        return _cached(text.read_text_folder, stamp, self.root, classes, self.settings(), cache)

    def load(self) -> Arrays:
        return self.read()[0]

    def save_with_run(self, run_dir: Path) -> None:
        text.save_vocabulary(run_dir, self.read()[1])

    def check_run(self, run_dir: Path, what: str) -> None:
        text.check_vocabulary(run_dir, self.read()[1], what)


@dataclass(frozen=True)
class ImdbConfig(TextFolderConfig):
    """The Large Movie Review Dataset as distributed: root/{train,test}/{neg,pos}/*.txt, the
    first line of each file (DLT), a validation split of 5 % of train/ (DLT's valid_portion)."""

    first_line: bool = True
    val_fraction: float = 0.05


@dataclass(frozen=True)
class CustomDataConfig(DataConfig):
    """dataset=custom dataset.target=MODULE:FN (or a registered name): the user's function,
    called with `arguments` (the node's other keys); dlrun.config.plugins says what it returns."""

    target: str = ""
    arguments: tuple = ()

    def load(self) -> Arrays:
        key = (self.target, repr(self.arguments))
        return _cached(functions.call_source, key, self.target, self.arguments)


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(path),)


@functools.lru_cache(maxsize=4)
def _load_once(reader, stamp, *args, **kwargs) -> Arrays:
    return reader(*args, **kwargs)


def _cached(reader, stamp, *args, **kwargs) -> Arrays:
    """reader(*args) once per process while its files (`stamp`) are unchanged; errors are not
    cached."""
    try:
        return _load_once(reader, stamp, *args, **kwargs)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"not enough memory to read {args[0]}; store the arrays uncompressed "
                        f"(np.savez) so dlrun can memory-map them") from None


DATASETS = {
    **{name: partial(IdxConfig, name=name) for name in sources.REGISTRY},
    "npz": partial(NpzConfig, name="npz"),
    "image_folder": partial(ImageFolderConfig, name="image_folder"),
    "cifar10": partial(CifarConfig, name="cifar10"),
    "cifar100": partial(Cifar100Config, name="cifar100"),
    "imdb": partial(ImdbConfig, name="imdb"),
    "text_folder": partial(TextFolderConfig, name="text_folder"),
    "chorales": partial(ChoralesConfig, name="chorales"),
    "custom": plugins.Custom("dataset"),
}


def common_fields() -> list:
    """The dataclass fields every dataset option has (not `name`)."""
    return [f for f in fields(DataConfig) if f.name != "name"]


COMMON_KEYS = tuple(f.name for f in common_fields())

