"""Input transforms: preprocessing fitted on the training split (`dataset.preprocess`) and
random data augmentation on the device (`dataset.augment`).

Preprocessing is an affine map of the flattened pixels, x' = (x - mean) @ matrix (or
(x - mean) / scale for standardize), fitted once on the training split only, in float64 on
the host, and stored with the run as preprocess.npz so that evaluation (and a resumed run, which
refits it to the same numbers) applies exactly the same transform:

  standardize  per-pixel mean 0, standard deviation 1 (pixels constant on the training split
               keep scale 1, as scikit-learn's StandardScaler does)
  pca          the slides' PCA whitening: sigma = Xc^T Xc / n, [U, S] = svd(sigma), keep the
               components with S > 1e-5 (or the first pca_dims), x' = Xc U / sqrt(S + eps);
               the output has fewer dimensions, so only for dense models
  zca          ZCA whitening: the PCA-whitened data rotated back, Xc U diag(1/sqrt(S + eps)) U^T;
               stays image-shaped, so convnets and recurrent nets can use it

Augmentation (the slides' "data enrichment") draws a new random transformation of every
training image at every step inside the jitted step, from the step's key: translations by up
to max_shift pixels, scalings by a factor in [1 - max_scale, 1 + max_scale] about the centre,
and elastic distortions (Simard et al. 2003: a random displacement field, uniform in [-1, 1],
smoothed by a Gaussian of elastic_sigma pixels and scaled by elastic_alpha), all resampled
bilinearly in one pass. Evaluation never augments.
"""
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

from dlrun.data.views import VIEW_AUGMENT
from dlrun.runs.atomic import atomic_write_bytes

PREPROCESS = ("none", "standardize", "pca", "zca")
WARPS = ("shift", "scale", "elastic")  # interpolated: augment() below
AUGMENT = WARPS + VIEW_AUGMENT  # and the exact views of dlrun.data.views


@dataclass(frozen=True)
class Transform:
    """A fitted preprocessing transform: x' = (x - mean) @ matrix, or (x - mean) / scale."""

    name: str
    mean: np.ndarray                      # (P,): P = H*W*C pixels
    matrix: Optional[np.ndarray] = None   # (P, d) for pca and zca
    scale: Optional[np.ndarray] = None    # (P,) for standardize

    @property
    def dims(self) -> int:
        return self.mean.size if self.matrix is None else self.matrix.shape[1]

    @property
    def image_shaped(self) -> bool:
        return self.dims == self.mean.size

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) pixels in [0, 1] -> (B, H, W, C) when it keeps every dimension, else (B, d)."""
        flat = x.reshape(x.shape[0], -1) - jnp.asarray(self.mean, jnp.float32)
        if self.matrix is not None:
            flat = flat @ jnp.asarray(self.matrix, jnp.float32)
        else:
            flat = flat / jnp.asarray(self.scale, jnp.float32)
        return flat.reshape(x.shape) if self.image_shaped else flat

    def pixel_space(self, kernel: np.ndarray) -> np.ndarray:
        """First-layer weights (d, H) seen from the pixels: the (784, H) filters the model
        applies to x - mean (for pictures of filters)."""
        if self.matrix is not None:
            return self.matrix @ kernel
        return kernel / self.scale[:, None]

    def save(self, path: Path) -> None:
        """Write preprocess.npz: name, mean and matrix or scale (float64), atomically."""
        arrays = {k: v for k, v in (("mean", self.mean), ("matrix", self.matrix),
                                    ("scale", self.scale)) if v is not None}
        buffer = io.BytesIO()
        np.savez(buffer, name=np.asarray(self.name), **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "Transform":
        """Read preprocess.npz as `save` wrote it (no pickles); FileError if it is missing or
        damaged."""
        from dlrun.errors import FileError
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            name = str(arrays.pop("name"))
            if name not in PREPROCESS[1:] or "mean" not in arrays:
                raise ValueError(f"unknown transform '{name}'")
            return cls(name, arrays["mean"], arrays.get("matrix"), arrays.get("scale"))
        except FileNotFoundError:
            raise FileError(f"{path}: no such file; the run was trained with dataset.preprocess "
                            f"and needs it") from None
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise FileError(f"cannot read {path} ({exc}); it is damaged or not from dlrun") from None


def fit(name: str, images: np.ndarray, eps: float = 1e-5, dims: int = 0) -> Optional[Transform]:
    """Fit preprocessing `name` on training images (N, H, W[, C]), uint8 0-255 or floats in
    [0, 1]; None for 'none'."""
    if name == "none":
        return None
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x / 255.0 if images.dtype == np.uint8 else x
    mean = x.mean(0)
    centred = x - mean
    if name == "standardize":
        std = centred.std(0)
        return Transform(name, mean, scale=np.where(std > 0, std, 1.0))
    sigma = centred.T @ centred / len(x)
    u, s, _ = np.linalg.svd(sigma)
    if name == "pca":
        keep = dims if dims else int(np.sum(s > 1e-5))
        return Transform(name, mean, matrix=u[:, :keep] / np.sqrt(s[:keep] + eps))
    return Transform(name, mean, matrix=(u / np.sqrt(s + eps)) @ u.T)


# ---- augmentation --------------------------------------------------------------------------
def _blur_matrix(side: int, sigma: float) -> jax.Array:
    """The (side, side) banded Gaussian blur matrix, each row normalised by the full kernel's sum."""
    t = np.arange(side)
    g = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
    g /= np.exp(-0.5 * (np.arange(-side, side + 1) / sigma) ** 2).sum()
    return jnp.asarray(g, jnp.float32)


def _gaussian_blur(fields: jax.Array, sigma: float) -> jax.Array:
    """Gaussian smoothing of (N, H, W) fields, zero beyond the border, as two matrix
    products G_H F G_W^T with banded blur matrices (XLA:CPU runs the equivalent
    convolution inside the scan loop of dense models far slower)."""
    gh, gw = _blur_matrix(fields.shape[1], sigma), _blur_matrix(fields.shape[2], sigma)
    return jnp.einsum("ij,njk,lk->nil", gh, fields, gw)


def augment(x: jax.Array, key: jax.Array, kinds: tuple, max_shift: float, max_scale: float,
            elastic_alpha: float, elastic_sigma: float) -> jax.Array:
    """A random transformation of each image of x (B, H, W, C) in [0, 1], bilinear, zero
    outside the image, the same for every channel. Output pixel p samples the input at
    centre + (p - centre) / s - d (+ the elastic displacement)."""
    b, h, w = x.shape[:3]
    k_shift, k_scale, k_elastic = jax.random.split(key, 3)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                              jnp.arange(w, dtype=jnp.float32), indexing="ij")
    rows, cols = jnp.broadcast_to(rows, (b, h, w)), jnp.broadcast_to(cols, (b, h, w))
    if "scale" in kinds:
        s = jax.random.uniform(k_scale, (b, 1, 1), minval=1 - max_scale, maxval=1 + max_scale)
        rows, cols = (h - 1) / 2.0 + (rows - (h - 1) / 2.0) / s, (w - 1) / 2.0 + (cols - (w - 1) / 2.0) / s
    if "shift" in kinds:
        d = jax.random.uniform(k_shift, (2, b, 1, 1), minval=-max_shift, maxval=max_shift)
        rows, cols = rows - d[0], cols - d[1]
    if "elastic" in kinds:
        fields = jax.random.uniform(k_elastic, (2 * b, h, w), minval=-1.0, maxval=1.0)
        fields = elastic_alpha * _gaussian_blur(fields, elastic_sigma)
        rows, cols = rows + fields[:b], cols + fields[b:]
    warp = jax.vmap(lambda img, r, c: map_coordinates(img, [r, c], order=1, mode="constant", cval=0.0))
    return jnp.stack([warp(x[..., c], rows, cols) for c in range(x.shape[-1])], axis=-1)
