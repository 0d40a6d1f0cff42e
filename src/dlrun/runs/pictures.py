"""The pictures of the seed documents, written into the run directory at the end of a run
(`plots: true`, the default). matplotlib draws with its non-interactive Agg canvas (never a
window); pure image grids are written as PNG directly from numpy.

  learning_curves.png     error (classifiers) or reconstruction cost (autoencoders, RBMs) per
                          epoch on every split measured, as the seed notebook plots them
  confusion_matrix.png    test split: true class (rows) x predicted class (columns), with
  confusion_matrix.csv    the counts also as CSV (classifiers)
  test_images.png         the first 40 test images titled predicted/true, red where wrong
                          (the notebook's view_image)
  filters.png             first-layer weights tiled as images (dense and autoencoder/RBM
                          layers: one 28x28 tile per unit, at most 100; convnets: one tile
                          per filter; logistic regression: one template per class)
  reconstructions.png     autoencoders and RBMs: 10 test images (top) and their
                          reconstructions (bottom)
  rbm_samples.png         RBMs: 10 Gibbs chains started at test images, one row every
                          200 steps (DLT's sampling figure, which takes 1,000 steps per row:
                          here 0.66 ms per step for 10 chains, so 9 rows would cost 6 s)
"""
import struct
import zlib
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dlrun.runs.atomic import atomic_write_bytes, atomic_write_text

LABELS = "0123456789"


# ---- PNG without matplotlib: image grids -------------------------------------------------------
def png_bytes(image: np.ndarray) -> bytes:
    """8-bit greyscale PNG of a 2-D array in [0, 1]."""
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def tile(images: np.ndarray, columns: int, scale_each: bool = True, border: int = 1,
         zoom: int = 2) -> np.ndarray:
    """(N, h, w) -> one (rows*(h+b), columns*(w+b)) image; each tile rescaled to [0, 1] on its
    own (filters: DLT's tile_raster_images) or all together; enlarged `zoom` times."""
    n, h, w = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * (h + border) + border, columns * (w + border) + border))
    for i, img in enumerate(images):
        if scale_each:
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        r, c = divmod(i, columns)
        grid[border + r * (h + border):border + r * (h + border) + h,
             border + c * (w + border):border + c * (w + border) + w] = img
    return np.kron(grid, np.ones((zoom, zoom)))


def write_png(path: Path, image: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(image))


def first_layer_filters(params: dict, to_pixels: Optional[Callable] = None) -> Optional[np.ndarray]:
    """(N, h, w) images of the first layer's weights, or None if they are not image-shaped."""
    for name in ("conv_0", "hidden_0", "out"):
        if name in params and "kernel" in params[name]:
            kernel = np.asarray(params[name]["kernel"], np.float64)
            if kernel.ndim == 4:  # (kh, kw, 1, C)
                return np.moveaxis(kernel[:, :, 0, :], -1, 0) if kernel.shape[2] == 1 else None
            if to_pixels is not None:
                kernel = to_pixels(kernel)
            if kernel.shape[0] != 784:
                return None
            return kernel.T[:100].reshape(-1, 28, 28)
    return None


# ---- matplotlib figures --------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg canvas by default; no pyplot, so never a window
    return Figure(figsize=(width, height), dpi=80, layout="constrained")


def _save(fig, path: Path) -> None:
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def learning_curves(history: list[dict], metric: str, path: Path) -> None:
    """One line per split that has `metric` (error in %, or loss), against the epoch."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    epochs = [r["epoch"] for r in history]
    for split in ("train", "train_eval", "val", "test"):
        key = f"{split}_{metric}"
        points = [(e, r[key]) for e, r in zip(epochs, history) if r.get(key) is not None]
        if points:
            x, y = zip(*points)
            y = [100 * v for v in y] if metric == "error" else y
            ax.plot(x, y, marker="." if len(x) < 30 else None, label=split.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)" if metric == "error" else metric.replace("_", " "))
    if metric == "error":
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)


def confusion(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(10, 10) counts: row = true class, column = predicted class."""
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def confusion_matrix(matrix: np.ndarray, png: Path, csv: Path, title: str = "test split") -> None:
    atomic_write_text(csv, "true\\predicted," + ",".join(LABELS) + "\n" + "".join(
        f"{LABELS[i]}," + ",".join(map(str, row)) + "\n" for i, row in enumerate(matrix)))
    fig = _figure(5, 4.5)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    error = 1 - np.trace(matrix) / matrix.sum()
    ax.set_title(f"{title}: {matrix.sum()} images, {100 * error:.2f} % error")
    _save(fig, png)


def test_images(images: np.ndarray, predicted: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """The first 40 images in a 5 x 8 grid, each titled 'predicted/true', red where wrong (one
    image and 40 labels: drawing 40 separate axes takes seconds)."""
    n, columns = min(len(images), 40), 8
    rows = -(-n // columns)
    grid = np.zeros((rows * 36, columns * 30))
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * 36 + 8:r * 36 + 36, c * 30 + 1:c * 30 + 29] = images[i]
    fig = _figure(columns * 0.9, rows * 1.08)
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    for i in range(n):
        r, c = divmod(i, columns)
        ax.text(c * 30 + 15, r * 36 + 4, f"{predicted[i]}/{labels[i]}", ha="center", va="center",
                fontsize=8, color="black" if predicted[i] == labels[i] else "red")
    ax.set_axis_off()
    _save(fig, path)


# ---- everything a run writes -----------------------------------------------------------------------
def write_all(run_dir: Path, objective: str, history: list[dict], select_metric: str,
              params: dict, test_x: np.ndarray, test_y: np.ndarray,
              predict: Optional[Callable] = None, reconstruct: Optional[Callable] = None,
              gibbs: Optional[Callable] = None, to_pixels: Optional[Callable] = None) -> list[str]:
    """Write the pictures that apply to this run; returns their file names.

    test_x (N, 28, 28) floats in [0, 1] and test_y (N,) labels: the test split. predict:
    images -> labels (classifiers); reconstruct: images -> reconstructions (autoencoders,
    RBMs); gibbs: (images, steps) -> samples (RBMs); to_pixels maps first-layer weights from a
    preprocessed space back to pixels."""
    written = []
    if history:
        learning_curves(history, select_metric, run_dir / "learning_curves.png")
        written.append("learning_curves.png")
    if predict is not None:
        predicted = predict(test_x)
        confusion_matrix(confusion(predicted, test_y), run_dir / "confusion_matrix.png",
                         run_dir / "confusion_matrix.csv")
        test_images(test_x[:40], predicted[:40], test_y[:40], run_dir / "test_images.png")
        written += ["confusion_matrix.png", "confusion_matrix.csv", "test_images.png"]
    filters = first_layer_filters(params, to_pixels)
    if filters is not None:
        write_png(run_dir / "filters.png", tile(filters, 10 if len(filters) > 10 else len(filters)))
        written.append("filters.png")
    if reconstruct is not None:
        originals = test_x[:10]
        both = np.concatenate([originals, reconstruct(originals).reshape(-1, 28, 28)])
        write_png(run_dir / "reconstructions.png", tile(both, 10, scale_each=False))
        written.append("reconstructions.png")
    if gibbs is not None:
        rows = [test_x[:10]]
        for _ in range(9):
            rows.append(gibbs(rows[-1], 200))
        write_png(run_dir / "rbm_samples.png", tile(np.concatenate(rows), 10, scale_each=False))
        written.append("rbm_samples.png")
    return written


def rbm_gibbs(params: dict, key: jax.Array) -> Callable:
    """(images (n, 28, 28), steps) -> visible means after `steps` steps of block Gibbs sampling
    v -> h -> v of a first-layer RBM (params hidden_0, visible_0), chains started at images."""
    w = jnp.asarray(params["hidden_0"]["kernel"])
    hb, vb = jnp.asarray(params["hidden_0"]["bias"]), jnp.asarray(params["visible_0"]["bias"])

    @jax.jit
    def run(v, k, steps):
        def body(t, carry):
            v, _ = carry
            kh, kv = jax.random.split(jax.random.fold_in(k, t))
            h = jax.random.bernoulli(kh, jax.nn.sigmoid(v @ w + hb)).astype(jnp.float32)
            mean = jax.nn.sigmoid(h @ w.T + vb)
            return jax.random.bernoulli(kv, mean).astype(jnp.float32), mean
        return jax.lax.fori_loop(0, steps, body, (v, v))[1]

    calls = [0]

    def gibbs(images: np.ndarray, steps: int) -> np.ndarray:
        calls[0] += 1
        v = jnp.asarray(images.reshape(len(images), -1), jnp.float32)
        return np.asarray(run(v, jax.random.fold_in(key, calls[0]), steps)).reshape(-1, 28, 28)

    return gibbs
