"""Dataset splits on the device: the `dataset` config group.

The raw uint8 arrays (datasets.py) are split into train / val / test, scaled to [0, 1] float32
NHWC (N, 28, 28, 1), and put on the device once. Each split is padded to a multiple of the
evaluation batch with label -1 rows, so evaluation compiles one shape; training only ever
indexes the first `n` rows. Batches are gathered on the device inside the jitted step.
"""
from dataclasses import dataclass, field
from functools import partial
from typing import List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dlrun.data import sources as datasets
from dlrun.errors import ConfigError
from dlrun.data.preprocess import AUGMENT, PREPROCESS
from dlrun.config.registry import require, setattrs


@dataclass(frozen=True)
class DataConfig:
    """A validated `dataset` node. val_size images are held out from the end of the training
    split; preprocess and augment are dlrun.data.preprocess's. `name` is the option's (set by
    the registry, DATASETS)."""

    val_size: int = 0
    train_subset: Optional[int] = None
    data_dir: Optional[str] = None
    download: bool = True
    mirrors: Optional[List[str]] = None
    preprocess: str = "none"
    pca_eps: float = 1e-5
    pca_dims: int = 0
    augment: List[str] = ()
    max_shift: float = 2.0
    max_scale: float = 0.1
    elastic_alpha: float = 34.0
    elastic_sigma: float = 4.0
    name: str = field(kw_only=True)

    def __post_init__(self):
        spec = datasets.REGISTRY[self.name]
        n_train_raw = spec.counts[0]
        require(self.data_dir is None or spec.source != "package",
                f"data_dir does not apply to {self.name}, which ships inside dlrun (got "
                f"{self.data_dir}); for your own copy of MNIST use dataset=mnist dataset.data_dir=DIR")
        require(0 <= self.val_size < n_train_raw,
                f"val_size must be in [0, {n_train_raw}) for {self.name} (got {self.val_size})")
        require(self.train_subset is None or self.train_subset > 0,
                f"train_subset must be a positive number of images or null (got {self.train_subset})")
        require(self.preprocess in PREPROCESS,
                f"preprocess must be one of {', '.join(PREPROCESS)} (got '{self.preprocess}')")
        pixels_per_image = int(np.prod(spec.image_shape))
        require(self.pca_eps > 0 and 0 <= self.pca_dims <= pixels_per_image,
                f"need pca_eps > 0 and pca_dims in [0, {pixels_per_image}] (got {self.pca_eps}, "
                f"{self.pca_dims})")
        bad = [a for a in self.augment if a not in AUGMENT]
        require(not bad, f"augment takes a list of {', '.join(AUGMENT)} (got {list(self.augment)}), "
                         f"e.g. dataset.augment=[shift,scale]")
        require(0 <= self.max_shift <= 14 and 0 <= self.max_scale < 1 and self.elastic_alpha >= 0
                and self.elastic_sigma > 0, "need max_shift in [0, 14] pixels, max_scale in [0, 1), "
                                            "elastic_alpha >= 0 and elastic_sigma > 0")
        setattrs(self, augment=tuple(dict.fromkeys(self.augment)))

    def sizes(self) -> tuple[int, int, int]:
        """(n_train, n_val, n_test) this spec yields, known without loading the data."""
        n_train_raw, n_test = datasets.REGISTRY[self.name].counts
        n_train = n_train_raw - self.val_size
        if self.train_subset is not None:
            n_train = min(n_train, self.train_subset)
        return n_train, self.val_size, n_test

    @property
    def num_classes(self) -> int:
        return datasets.REGISTRY[self.name].num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the dataset's images: the models' input shape."""
        return datasets.REGISTRY[self.name].image_shape


DATASETS = {name: partial(DataConfig, name=name) for name in datasets.REGISTRY}


@dataclass(frozen=True)
class Split:
    """One split on the device. x: (n_pad, 28, 28, 1) uint8 pixels; y: (n_pad,) int32, -1 = pad.

    Pixels stay uint8 on the device and become float32 in [0, 1] (`pixels`) inside the jitted
    step, fused into the batch gather: a quarter of the memory, and a quarter of the memory
    traffic for whole-split evaluation, which is bandwidth-bound (radford_logreg evaluates all
    60,000 training images after every epoch: 47 ms as float32, see docs/speed.md).
    """

    x: jax.Array
    y: jax.Array
    n: int


def pixels(x: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [0, 1], the models' input."""
    return x.astype(jnp.float32) / 255.0


def host_images(split: Split) -> np.ndarray:
    """The split's real images (no padding) on the host as (n, H, W) float32 in [0, 1], the
    first channel: what the pictures draw."""
    return np.asarray(split.x[:split.n, ..., 0], np.float32) / 255.0


def to_device(images: np.ndarray, labels: np.ndarray, multiple: int) -> Split:
    """(N, H, W) or (N, H, W, C) uint8 images and their labels, padded to a multiple of
    `multiple` rows, on the device as a Split (NHWC)."""
    n = len(images)
    pad = -n % multiple
    images = images if images.ndim == 4 else images[..., None]
    x = np.zeros((n + pad, *images.shape[1:]), np.uint8)
    x[:n] = images
    y = np.full((n + pad,), -1, np.int32)
    y[:n] = labels
    return Split(jax.device_put(x), jax.device_put(y), n)


def load_splits(spec: DataConfig, eval_batch_size: int) -> dict[str, Split]:
    """Load, split and move to the device: {'train', 'val' (if val_size > 0), 'test'}."""
    x_train, y_train, x_test, y_test = datasets.load_raw(
        spec.name, data_dir=spec.data_dir, download=spec.download, mirrors=spec.mirrors)
    n_fit = len(x_train) - spec.val_size
    splits = {}
    end = n_fit if spec.train_subset is None else min(n_fit, spec.train_subset)
    splits["train"] = to_device(x_train[:end], y_train[:end], eval_batch_size)
    if spec.val_size:
        splits["val"] = to_device(x_train[n_fit:], y_train[n_fit:], eval_batch_size)
    splits["test"] = to_device(x_test, y_test, eval_batch_size)
    return splits


def data_record(spec: DataConfig) -> dict:
    """summary.json's `data`: the dataset and where each of its files was read from (resolved
    path and SHA-256), after load_splits read them."""
    return {"dataset": spec.name,
            "files": datasets.provenance(spec.name, data_dir=spec.data_dir)}


def check_batch_size(spec: DataConfig, batch_size: int) -> None:
    n_train, _, _ = spec.sizes()
    if batch_size > n_train:
        raise ConfigError(f"train.batch_size ({batch_size}) is larger than the training set "
                          f"({n_train} images of {spec.name} after val_size/train_subset); "
                          f"lower train.batch_size")
