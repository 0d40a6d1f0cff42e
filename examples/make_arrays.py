"""Write an .npz in the layout `dataset=npz` reads, from the MNIST sample that ships with dlrun:
the digits as 32x32 colour images (coloured ink on a coloured background), with class names.

    python examples/make_arrays.py my_arrays.npz
    dlrun dataset=npz dataset.path=my_arrays.npz

Your own file needs only x_train, y_train, x_test, y_test (and optionally x_val, y_val,
class_names): images uint8 0-255 or floats in [0, 1], (N, H, W) or (N, H, W, C); integer labels.
"""
import sys
from importlib import resources

import numpy as np

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def colour(x: np.ndarray) -> np.ndarray:
    """(N, 28, 28) digits -> (N, 32, 32, 3): the ink orange, the background blue."""
    ink = x[..., None].astype(np.float32) / 255.0
    rgb = ink * np.array([255, 140, 0]) + (1 - ink) * np.array([20, 40, 160])
    out = np.zeros((len(x), 32, 32, 3), np.uint8)
    out[:, 2:30, 2:30] = np.round(rgb).astype(np.uint8)
    return out


def main(path: str) -> None:
    with resources.files("dlrun.data").joinpath("mnist_sample.npz").open("rb") as f:
        sample = dict(np.load(f))
    np.savez(path, x_train=colour(sample["x_train"]), y_train=sample["y_train"],
             x_test=colour(sample["x_test"]), y_test=sample["y_test"], class_names=np.array(NAMES))
    print(f"wrote {path}: {len(sample['x_train'])} train / {len(sample['x_test'])} test images, "
          f"32x32x3, {len(NAMES)} classes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "my_arrays.npz")
