"""Data in the formats users bring, made from the shipped MNIST sample (real digits): an .npz of
32x32 RGB images with 100 classes, CIFAR-10 python-version batches, an ImageFolder tree of RGB
PNGs of mixed sizes, and a pip-installable plugin package."""
import pickle
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from dlrun.data import sources


def sample(n_train: int = 4000, n_test: int = 1000):
    x_train, y_train, x_test, y_test = sources.load_raw("mnist_sample")
    return x_train[:n_train], y_train[:n_train], x_test[:n_test], y_test[:n_test]


def rgb32(x: np.ndarray) -> np.ndarray:
    """(N, 28, 28) digits -> (N, 32, 32, 3): a different colour mapping per channel."""
    out = np.zeros((len(x), 32, 32, 3), np.uint8)
    out[:, 2:30, 2:30, 0] = x
    out[:, 2:30, 2:30, 1] = x // 2
    out[:, 2:30, 2:30, 2] = 255 - x
    return out


def hundred_classes(y: np.ndarray) -> np.ndarray:
    """Labels 0..99: the digit times ten plus the image's position mod ten."""
    return y.astype(np.int64) * 10 + np.arange(len(y)) % 10


def write_npz(path: Path, n_train: int = 2000, n_test: int = 500, classes: int = 100,
              compressed: bool = False) -> Path:
    x_train, y_train, x_test, y_test = sample(n_train, n_test)
    if classes == 100:
        y_train, y_test = hundred_classes(y_train), hundred_classes(y_test)
    save = np.savez_compressed if compressed else np.savez
    save(path, x_train=rgb32(x_train), y_train=y_train, x_test=rgb32(x_test), y_test=y_test,
         class_names=np.array([f"class {i}" for i in range(classes)]))
    return path


def write_cifar(folder: Path, n_train: int = 2000, n_test: int = 500) -> Path:
    """CIFAR-10's python-version files: data_batch_1..5, test_batch, batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = sample(n_train, n_test)
    rows = lambda x: rgb32(x).transpose(0, 3, 1, 2).reshape(len(x), 3072)  # noqa: E731
    for i, part in enumerate(np.array_split(np.arange(len(x_train)), 5), 1):
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": y_train[part].tolist(),
                 b"data": rows(x_train[part]), b"filenames": [b"x.png"] * len(part)}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": y_test.tolist(),
            b"data": rows(x_test), b"filenames": [b"x.png"] * len(x_test)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": names, b"num_cases_per_batch": n_train // 5, b"num_vis": 3072}, protocol=2))
    return folder


def write_image_folder(root: Path, n_train: int = 300, n_test: int = 100) -> Path:
    """root/{train,test}/<digit name>/<i>.png: RGB PNGs, two in three 28x28, the rest 40x36."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    x_train, y_train, x_test, y_test = sample(n_train, n_test)
    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i, (img, label) in enumerate(zip(xs, ys)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            rgb = Image.fromarray(np.stack([img, img // 2, 255 - img], -1))
            (rgb if i % 3 else rgb.resize((36, 40), Image.BILINEAR)).save(folder / f"{i}.png")
    return root


def write_plugin(where: Path) -> Path:
    """A package `dlrun-tinyplug` registering model=tiny_mlp and dataset=tiny_digits through
    entry points, with their YAML options in tinyplug/conf/."""
    pkg = where / "tinyplug"
    (pkg / "conf" / "model").mkdir(parents=True)
    (pkg / "conf" / "dataset").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import flax.linen as nn
        import numpy as np


        class TinyMLP(nn.Module):
            num_classes: int
            hidden: int = 32

            @nn.compact
            def __call__(self, x, train: bool = False):
                x = nn.relu(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
                return nn.Dense(self.num_classes)(x)


        def digits(n_train: int = 1000, invert: bool = False):
            from importlib import resources
            with resources.files("dlrun.data").joinpath("mnist_sample.npz").open("rb") as f:
                s = dict(np.load(f))
            fix = (lambda x: 255 - x) if invert else (lambda x: x)
            return {"x_train": fix(s["x_train"][:n_train]), "y_train": s["y_train"][:n_train],
                    "x_test": fix(s["x_test"]), "y_test": s["y_test"]}
        '''))
    (pkg / "conf" / "__init__.py").write_text("")
    (pkg / "conf" / "model" / "tiny_mlp.yaml").write_text(
        "# the plugin's MLP\nname: tiny_mlp\nhidden: 48   # hidden units\n")
    (pkg / "conf" / "dataset" / "tiny_digits.yaml").write_text(
        "# the plugin's digits\nname: tiny_digits\nn_train: 800   # training images\n"
        "invert: false   # white on black\nval_size: 100   # held out\n")
    (where / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "dlrun-tinyplug"
        version = "0.1"

        [project.entry-points."dlrun.models"]
        tiny_mlp = "tinyplug:TinyMLP"

        [project.entry-points."dlrun.datasets"]
        tiny_digits = "tinyplug:digits"

        [project.entry-points."dlrun.conf"]
        tinyplug = "tinyplug.conf"

        [tool.setuptools]
        packages = ["tinyplug", "tinyplug.conf"]

        [tool.setuptools.package-data]
        "tinyplug.conf" = ["*/*.yaml"]
        '''))
    return where
