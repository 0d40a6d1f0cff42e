"""Dataset splits for training: on the device, or streamed from host memory.

A source's arrays (dlrun.data.catalog: the `dataset` group) are split into train / val / test.
Where they fit `dataset.device_budget_mb` (or with dataset.placement=device) each split is put on
the device once, padded to a multiple of the evaluation batch with label -1 rows so that
evaluation compiles one shape; training only ever indexes the first `n` rows, and batches are
gathered on the device inside the jitted step. Otherwise (placement=host, or auto over the
budget) the splits stay in host memory, or memory-mapped on disk for sources that allow it
(uncompressed npz members, the image-folder cache), and every batch is gathered on the host
and copied to the device ahead of the step that needs it (dlrun.train.epoch, `Prefetch`): the
same rows in the same order, so the same numbers as device-resident training with loop=step.
Pixels stay uint8 (or the source's float32 in [0, 1]) until the jitted step scales them; a text
source's token ids (N, T) stay int32 throughout (the model embeds them).
"""
import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dlrun.data.arrays import DataInfo
from dlrun.data.catalog import DataConfig
from dlrun.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """One split. On the device (`on_device`): x (n_pad, H, W, C) uint8 (or float32) pixels and
    y (n_pad,) int32 with -1 = padding. On the host: numpy arrays (or memory maps) of exactly
    n rows, gathered batch by batch.

    Pixels stay uint8 on the device and become float32 in [0, 1] (`pixels`) inside the jitted
    step, fused into the batch gather: a quarter of the memory, and a quarter of the memory
    traffic for whole-split evaluation, which is bandwidth-bound (radford_logreg evaluates all
    60,000 training images after every epoch: 47 ms as float32, see docs/speed.md).
    """

    x: jax.Array | np.ndarray
    y: jax.Array | np.ndarray
    n: int
    on_device: bool = True


def pixels(x: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [0, 1], the models' input (float images are already); int32
    token ids (a text source) are left as they are."""
    if x.dtype == jnp.int32:
        return x
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def host_images(split: Split, limit: Optional[int] = None) -> np.ndarray:
    """The split's first `limit` (default all) real images on the host as (n, H, W, C) float32
    in [0, 1] (token ids: (n, T) int32, as they are): what the pictures draw and dlrun-eval
    classifies."""
    x = np.asarray(split.x[:split.n if limit is None else min(limit, split.n)])
    if x.dtype == np.int32:
        return x
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def host_labels(split: Split) -> np.ndarray:
    return np.asarray(split.y[:split.n])


def to_device(images: np.ndarray, labels: np.ndarray, multiple: int) -> Split:
    """(N, H, W) or (N, H, W, C) images and their labels, padded to a multiple of `multiple`
    rows, on the device as a Split (NHWC)."""
    n = len(images)
    pad = -n % multiple
    images = images[..., None] if images.ndim == 3 else images  # (N, T) token ids stay
    x = np.zeros((n + pad, *images.shape[1:]), images.dtype)
    x[:n] = images
    y = np.full((n + pad,), -1, np.int32)
    y[:n] = labels
    return Split(jax.device_put(x), jax.device_put(y), n)


def on_host(images: np.ndarray, labels: np.ndarray) -> Split:
    """A split left where the source put it (RAM or a memory map): nothing is copied."""
    return Split(images, np.asarray(labels, np.int32), len(images), on_device=False)


def split_bytes(info: DataInfo, spec: DataConfig) -> int:
    """The device memory the splits would take (uint8 pixels or int32 token ids, int32 labels)."""
    return sum(spec.sizes(info)) * (info.example_bytes() + 4)


def streams(spec: DataConfig, info: DataInfo) -> bool:
    """Whether the splits stay on the host: placement=host, or auto and over the budget."""
    if spec.placement != "auto":
        return spec.placement == "host"
    return split_bytes(info, spec) > spec.device_budget_mb * 2**20


def load_splits(spec: DataConfig, eval_batch_size: int, stream: bool = False) -> dict[str, Split]:
    """Load and split: {'train', 'val' (when there is one), 'test'}, on the device, or left on
    the host when `stream`."""
    data = spec.load()
    n_fit = len(data.x_train) - spec.val_size
    end = n_fit if spec.train_subset is None else min(n_fit, spec.train_subset)
    parts = {"train": (data.x_train[:end], data.y_train[:end])}
    if data.x_val is not None:
        parts["val"] = (data.x_val, data.y_val)
    elif spec.val_size:
        parts["val"] = (data.x_train[n_fit:], data.y_train[n_fit:])
    parts["test"] = (data.x_test, data.y_test)
    place = on_host if stream else (lambda x, y: to_device(x, y, eval_batch_size))
    return {name: place(x, y) for name, (x, y) in parts.items()}


def host_batches(split: Split, idx: np.ndarray, depth: int = 2) -> Iterator[tuple]:
    """(x, y) device arrays of split's rows idx[i] for each step i, gathered on the host by a
    background thread `depth` steps ahead of the consumer (prefetch), in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for rows in idx:
                if stop.is_set():
                    return
                q.put((jax.device_put(np.asarray(split.x[rows])), jax.device_put(split.y[rows])))
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)
        q.put(None)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def check_batch_size(spec: DataConfig, info: DataInfo, batch_size: int) -> None:
    n_train, _, _ = spec.sizes(info)
    if batch_size > n_train:
        raise ConfigError(f"train.batch_size ({batch_size}) is larger than the training set "
                          f"({n_train} images of {spec.name} after val_size/train_subset); "
                          f"lower train.batch_size")
