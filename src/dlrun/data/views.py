"""Exact views of an image batch (B, H, W, C): horizontal flips and whole-pixel translations with
reflect padding. Training draws them at random (dataset.augment=[flip], [flip_alternate],
[crop]; airbench's flips and +-2-pixel translations) and test-time augmentation averages the
logits over a fixed set of them (train.tta). Nothing is interpolated: every output pixel is an
input pixel."""
import jax
import jax.numpy as jnp

VIEW_AUGMENT = ("flip", "flip_alternate", "crop")
TTA = ("none", "flip", "flip_shift")


def flip(x: jax.Array) -> jax.Array:
    """Mirror left-right."""
    return x[:, :, ::-1, :]


def shift(x: jax.Array, dy: int, dx: int) -> jax.Array:
    """Translate by (dy, dx) whole pixels, the border filled by reflection."""
    p = max(abs(dy), abs(dx))
    if not p:
        return x
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    return padded[:, p - dy:p - dy + h, p - dx:p - dx + w, :]


def random_crop(x: jax.Array, key: jax.Array, pad: int) -> jax.Array:
    """Each image translated by its own (dy, dx) drawn uniformly from [-pad, pad]^2: a crop of the
    reflect-padded image."""
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def flip_mask(kinds: tuple, key: jax.Array, rows: jax.Array, n: int, epoch: jax.Array) -> jax.Array:
    """Which images of the batch (rows: their indices into the split of n) are flipped.
    flip: each at random, every step. flip_alternate (airbench): each example has a fixed random
    bit (drawn once per run from `key`) and is flipped on even epochs where it is set and on odd
    epochs where it is not, so over two epochs every example is seen both ways."""
    if "flip_alternate" in kinds:
        # one bit per row of the split, drawn in every step and indexed: n draws (60,000 for
        # Fashion-MNIST: 0.59 ms jitted alone, under 1 % of the 40-100 ms step of a convnet that
        # uses it). A draw per batch row would be
        # cheaper but would change speedrun_fashion_bn's measured flips.
        fixed = jax.random.bernoulli(key, 0.5, (n,))[rows]
        return fixed ^ (epoch % 2 == 1)
    return jax.random.bernoulli(jax.random.fold_in(key, epoch), 0.5, rows.shape)


def training_views(x: jax.Array, kinds: tuple, crop_pad: int, key: jax.Array, run_key: jax.Array,
                   rows: jax.Array, n: int, epoch: jax.Array) -> jax.Array:
    """dataset.augment's flips and crops of a training batch (key: this step's, run_key: the
    run's, for the alternating flips' fixed bits)."""
    if "crop" in kinds and crop_pad:
        x = random_crop(x, jax.random.fold_in(key, 3), crop_pad)
    if "flip" in kinds or "flip_alternate" in kinds:
        mask_key = run_key if "flip_alternate" in kinds else jax.random.fold_in(key, 4)
        mask = flip_mask(kinds, mask_key, rows, n, epoch)
        x = jnp.where(mask[:, None, None, None], flip(x), x)
    return x


def tta_views(x: jax.Array, tta: str) -> list[jax.Array]:
    """The views test-time augmentation averages the logits over: none: the image; flip: it and
    its mirror; flip_shift: those two, each also translated by one pixel up-left and down-right
    (6 views; airbench's multi-view evaluation)."""
    if tta == "none":
        return [x]
    views = [x, flip(x)]
    if tta == "flip_shift":
        views += [shift(v, d, d) for v in views[:2] for d in (-1, 1)]
    return views
