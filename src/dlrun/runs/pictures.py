"""The pictures of the seed documents, written into the run directory at the end of a run
(`plots: true`, the default). matplotlib draws with its non-interactive Agg canvas (never a
window); pure image grids are written as PNG directly from numpy.

  learning_curves.png     error (classifiers) or reconstruction cost (autoencoders, RBMs) per
                          epoch on every split measured, as the seed notebook plots them, and
                          the loss beside it; titled with the run
  confusion_matrix.png    test split: true class (rows) x predicted class (columns), with
  confusion_matrix.csv    the counts also as CSV (classifiers)
  test_images.png         the first 40 test images (in colour where they are) titled
                          predicted/true with the class names, red where wrong (the notebook's
                          view_image)
  filters.png             first-layer weights tiled as images (dense and autoencoder/RBM
                          layers: one image-shaped tile per unit, at most 100; convnets: one
                          tile per filter, in colour for RGB input; logistic regression: one
                          template per class), enlarged to at least 56 pixels a side
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

MIN_TILE = 56  # pixels: tiles (filters, images) are enlarged to at least this side


def zoom_for(side: int) -> int:
    """The integer enlargement that makes a tile of `side` pixels at least MIN_TILE."""
    return max(2, -(-MIN_TILE // max(side, 1)))


def short_names(names, k: int, width: int = 12) -> list[str]:
    """Class names for labels 0..k-1 (the label itself where the dataset has none), cut to
    `width` characters."""
    names = list(names) if names else [str(i) for i in range(k)]
    return [n if len(n) <= width else n[:width - 1] + "." for n in names]


# ---- PNG without matplotlib: image grids -------------------------------------------------------
def png_bytes(image: np.ndarray) -> bytes:
    """8-bit PNG of a (h, w) greyscale or (h, w, 3) colour array in [0, 1]."""
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    colour = pixels.ndim == 3
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 2 if colour else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def tile(images: np.ndarray, columns: int, scale_each: bool = True, border: int = 1,
         zoom: int = 2) -> np.ndarray:
    """(N, h, w) or (N, h, w, 3) -> one (rows*(h+b)+b, columns*(w+b)+b[, 3]) image; each tile
    rescaled to [0, 1] on its own (filters: DLT's tile_raster_images) or all together; enlarged
    `zoom` times."""
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    grid = np.ones((rows * (h + border) + border, columns * (w + border) + border, *images.shape[3:]))
    for i, img in enumerate(images):
        if scale_each:
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        r, c = divmod(i, columns)
        grid[border + r * (h + border):border + r * (h + border) + h,
             border + c * (w + border):border + c * (w + border) + w] = img
    return grid.repeat(zoom, 0).repeat(zoom, 1)


def write_png(path: Path, image: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(image))


def drawable(images: np.ndarray) -> np.ndarray:
    """(N, h, w, C) -> what a grid shows: (N, h, w) for one channel, (N, h, w, 3) for colour
    (a fourth channel, alpha, is dropped)."""
    images = np.asarray(images)
    if images.ndim == 3:
        return images
    return images[..., 0] if images.shape[-1] == 1 else images[..., :3]


def first_layer_filters(params: dict, image_shape: tuple,
                        to_pixels: Optional[Callable] = None) -> Optional[np.ndarray]:
    """(N, h, w[, 3]) images of the first layer's weights, or None if they are not image-shaped."""
    for name in ("conv_0", "stem", "stage0_block0_conv0", "hidden_0", "out"):  # cnn/lenet, vgg/resnet, dense
        if name in params and "kernel" in params[name]:
            kernel = np.asarray(params[name]["kernel"], np.float64)
            if kernel.ndim == 4:  # (kh, kw, C, F)
                return drawable(np.moveaxis(kernel, -1, 0)) if kernel.shape[2] in (1, 3, 4) else None
            if to_pixels is not None:
                kernel = to_pixels(kernel)
            if kernel.shape[0] != int(np.prod(image_shape)):
                return None
            return drawable(kernel.T[:100].reshape(-1, *image_shape))
    return None


# ---- matplotlib figures --------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg canvas by default; no pyplot, so never a window
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> None:
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def _curve(ax, history: list[dict], metric: str) -> bool:
    """One line per split that has `metric` against the epoch; False when there is none."""
    from matplotlib.ticker import MaxNLocator
    drawn = False
    for split in ("train", "train_eval", "val", "test"):
        key = f"{split}_{metric}"
        points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if points:
            x, y = zip(*points)
            y = [100 * v for v in y] if metric == "error" else y
            ax.plot(x, y, marker="." if len(x) < 30 else None, label=split.replace("_", " "))
            drawn = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    last = max((r["epoch"] for r in history), default=1)
    ax.set_xlim(0.5, max(last, 2) + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)" if metric == "error" else metric.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend()
    return drawn


def learning_curves(history: list[dict], metric: str, path: Path, title: str = "") -> None:
    """The selection metric (error in %, on a log scale with plain-number labels, or a cost) and,
    beside it, the loss, per epoch on every split measured."""
    from matplotlib.ticker import LogFormatter, ScalarFormatter
    second = "loss" if metric != "loss" else None
    fig = _figure(10 if second else 6, 4)
    axes = fig.subplots(1, 2 if second else 1, squeeze=False)[0]
    _curve(axes[0], history, metric)
    if metric == "error":
        values = [100 * r[k] for r in history for k in r if k.endswith("_error") and r[k]]
        if values and max(values) / max(min(values), 1e-9) > 3:  # spans enough for a log scale
            axes[0].set_yscale("log")
            axes[0].yaxis.set_major_formatter(ScalarFormatter())
            axes[0].yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if second:
        _curve(axes[1], history, second)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def confusion(predicted: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """(k, k) counts: row = true class, column = predicted class."""
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def confusion_matrix(matrix: np.ndarray, png: Path, csv: Path, title: str = "test split",
                     class_names=()) -> None:
    """The counts as CSV and as a picture with the class names on both axes (the counts in the
    cells for up to 20 classes, the names for up to 40)."""
    k = len(matrix)
    names = short_names(class_names, k, width=40)
    quote = lambda n: '"' + n.replace('"', '""') + '"' if ("," in n or '"' in n) else n  # noqa: E731
    atomic_write_text(csv, "true\\predicted," + ",".join(map(quote, names)) + "\n" + "".join(
        f"{quote(names[i])}," + ",".join(map(str, row)) + "\n" for i, row in enumerate(matrix)))
    side = min(12, max(5, 0.45 * k + 2))
    fig = _figure(side + 0.5, side)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    if k <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > matrix.max() / 2 else "black")
    if k <= 40:
        labels = short_names(class_names, k)
        ax.set_xticks(range(k), labels, rotation=90 if max(map(len, labels)) > 2 else 0)
        ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    error = 1 - np.trace(matrix) / matrix.sum()
    ax.set_title(f"{title}: {matrix.sum()} images, {100 * error:.2f} % error")
    _save(fig, png)


def test_images(images: np.ndarray, predicted: np.ndarray, labels: np.ndarray, path: Path,
                class_names=()) -> None:
    """The first 40 images in a 5 x 8 grid, in colour where they are, each titled
    'predicted/true' (class names where the dataset has them), red where wrong (one image and
    40 labels: drawing 40 separate axes takes seconds)."""
    images = drawable(images)
    n, columns = min(len(images), 40), 8
    rows = -(-n // columns)
    h, w = images.shape[1:3]
    cell_h, cell_w = h + max(8, h // 3), w + 2
    colour = images.ndim == 4
    grid = np.ones((rows * cell_h, columns * cell_w, *images.shape[3:])) * (1.0 if colour else 0.0)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * cell_h + cell_h - h:(r + 1) * cell_h, c * cell_w + 1:c * cell_w + 1 + w] = images[i]
    k = int(max(predicted.max(initial=0), labels.max(initial=0))) + 1
    names = short_names(class_names, max(k, len(class_names)), width=10)
    fig = _figure(columns * 1.3, rows * 1.5)
    ax = fig.subplots()
    ax.imshow(grid if colour else grid, cmap=None if colour else "gray_r", vmin=0, vmax=1,
              interpolation="nearest")
    for i in range(n):
        r, c = divmod(i, columns)
        text = f"{names[predicted[i]]}/{names[labels[i]]}" if class_names else f"{predicted[i]}/{labels[i]}"
        ax.text(c * cell_w + cell_w / 2, r * cell_h + (cell_h - h) / 2 - 0.5, text, ha="center",
                va="center", fontsize=7, color="black" if predicted[i] == labels[i] else "red")
    ax.set_axis_off()
    _save(fig, path)


# ---- everything a run writes -----------------------------------------------------------------------
def write_all(run_dir: Path, objective: str, history: list[dict], select_metric: str,
              params: dict, test_x: np.ndarray, test_y: np.ndarray,
              predict: Optional[Callable] = None, reconstruct: Optional[Callable] = None,
              gibbs: Optional[Callable] = None, to_pixels: Optional[Callable] = None,
              class_names=(), title: str = "", images: bool = True) -> list[str]:
    """Write the pictures that apply to this run; returns their file names.

    test_x (N, H, W, C) floats in [0, 1] and test_y (N,) labels: the test split. predict:
    images -> labels (classifiers); reconstruct: images -> reconstructions (autoencoders,
    RBMs); gibbs: (images, steps) -> samples (RBMs); to_pixels maps first-layer weights from a
    preprocessed space back to pixels. images=False (test_x holds token ids): the learning
    curves and the confusion matrix only."""
    written = []
    shape = test_x.shape[1:]
    zoom = zoom_for(min(shape[:2]))
    if history:
        learning_curves(history, select_metric, run_dir / "learning_curves.png", title)
        written.append("learning_curves.png")
    if predict is not None:
        predicted = predict(test_x)
        k = max(len(class_names), int(max(predicted.max(), test_y.max())) + 1)
        confusion_matrix(confusion(predicted, test_y, k), run_dir / "confusion_matrix.png",
                         run_dir / "confusion_matrix.csv", class_names=class_names)
        written += ["confusion_matrix.png", "confusion_matrix.csv"]
        if images:
            test_images(test_x[:40], predicted[:40], test_y[:40], run_dir / "test_images.png", class_names)
            written.append("test_images.png")
    filters = first_layer_filters(params, shape, to_pixels) if images else None
    if filters is not None:
        write_png(run_dir / "filters.png", tile(filters, 10 if len(filters) > 10 else len(filters),
                                                zoom=zoom_for(min(filters.shape[1:3]))))
        written.append("filters.png")
    if reconstruct is not None:
        originals = test_x[:10]
        both = np.concatenate([originals, reconstruct(originals).reshape(originals.shape)])
        write_png(run_dir / "reconstructions.png", tile(drawable(both), 10, scale_each=False, zoom=zoom))
        written.append("reconstructions.png")
    if gibbs is not None:
        rows = [test_x[:10]]
        for _ in range(9):
            rows.append(gibbs(rows[-1], 200).reshape(rows[0].shape))
        write_png(run_dir / "rbm_samples.png", tile(drawable(np.concatenate(rows)), 10,
                                                    scale_each=False, zoom=zoom))
        written.append("rbm_samples.png")
    return written


def piano_rolls(path: Path, samples: np.ndarray, piece: np.ndarray, low: int) -> None:
    """A test piece (frames, P) above the generated sequences (n, frames, P): time across,
    MIDI pitch (low + column) up, a dark cell where the pitch sounds."""
    rolls = [("test piece", piece)] + [(f"sample {i}", r) for i, r in enumerate(samples, 1)]
    fig = _figure(10, 2.2 * len(rolls))
    for ax, (label, roll) in zip(fig.subplots(len(rolls), 1, squeeze=False)[:, 0], rolls):
        ax.imshow(np.asarray(roll).T, aspect="auto", origin="lower", cmap="Greys",
                  interpolation="nearest", extent=(0, len(roll), low - 0.5, low + roll.shape[1] - 0.5))
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("MIDI pitch")
    ax.set_xlabel("frame")
    _save(fig, path)


def rbm_gibbs(params: dict, key: jax.Array) -> Callable:
    """(images (n, H, W, C), steps) -> flat visible means after `steps` steps of block Gibbs sampling
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
        return np.asarray(run(v, jax.random.fold_in(key, calls[0]), steps))

    return gibbs
