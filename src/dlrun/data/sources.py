"""Raw datasets: find, verify and read MNIST, Fashion-MNIST and the bundled MNIST sample.

`load_raw(name)` returns `(x_train, y_train, x_test, y_test)`: images uint8 (N, 28, 28) and
labels uint8 (N,), exactly as stored. Scaling, splitting off validation data and batching are
the input pipeline's job, not this module's.

- mnist_sample: 5,000 real MNIST digits (4,000 train / 1,000 test) shipped inside the package
  (dlrun/data/mnist_sample.npz, see MNIST_SAMPLE_LICENSE.txt there). Works offline.
- mnist, fashion_mnist: the four standard IDX gzip files, read from `data_dir` when it is given
  (and only from there: an explicit data_dir is authoritative); otherwise looked for in the
  cache dir, then system dirs (Debian's dataset-fashion-mnist package), then downloaded from
  the mirrors into the cache dir.

Every file is checked against a known SHA-256 before it is read, and a download is written to
the cache (atomically) only after its checksum matched, so the cache never holds a bad or
partial file. Problems the user can fix raise `DataError` with a one-line message.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from dlrun.errors import ConfigError, DataError
from dlrun.data.download import download as download_file, one_line as _one_line, short as _short

IMAGE_SHAPE = (28, 28)
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# SHA-256 of src/dlrun/data/mnist_sample.npz as written by scripts/make_mnist_sample.py.
MNIST_SAMPLE_SHA256 = "663a3325e58d48f5a1b70bc6de83e56ed34ddd57ffcf9bbacc502c068fe75e68"
MNIST_SAMPLE_FILE = "mnist_sample.npz"



@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset consists of and where to find it."""

    # file name -> accepted SHA-256 digests (more than one where a mirror or distribution
    # recompressed the same data).
    files: dict[str, tuple[str, ...]]
    counts: tuple[int, int]  # (train, test) number of examples
    source: str = "idx"  # "idx": four IDX gzip files; "package": bundled .npz
    mirrors: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()
    how_to_get: str = ""  # appended to "not found" errors
    num_classes: int = 10
    image_shape: tuple[int, int, int] = (28, 28, 1)  # (height, width, channels) of every image


REGISTRY: dict[str, DatasetSpec] = {
    "mnist_sample": DatasetSpec(
        files={MNIST_SAMPLE_FILE: (MNIST_SAMPLE_SHA256,)},
        counts=(4000, 1000),
        source="package",
        how_to_get="reinstall dlrun, or regenerate the file with scripts/make_mnist_sample.py",
    ),
    # MNIST SHA-256s confirmed in tensorflow/datasets
    # tensorflow_datasets/url_checksums/mnist.txt (the cvdf-datasets mirror; same four
    # digests with sizes 9912422 / 28881 / 1648877 / 4542), and in many independent
    # projects that pin the same digests for the yann.lecun.com and ossci-datasets copies.
    "mnist": DatasetSpec(
        files={
            TRAIN_IMAGES: ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",),
            TRAIN_LABELS: ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",),
            TEST_IMAGES: ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",),
            TEST_LABELS: ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",),
        },
        counts=(60000, 10000),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        how_to_get=("put the four files " + ", ".join(IDX_FILES)
                    + " in a directory and pass dataset.data_dir=DIR"),
    ),
    # Fashion-MNIST: two digests per file. The first is the upstream download
    # (fashion-mnist.s3-website..., confirmed in tensorflow/datasets
    # tensorflow_datasets/url_checksums/fashion_mnist.txt); the second is Debian's
    # dataset-fashion-mnist 0.0~git20200523.55506a9-1, which recompresses the same IDX data
    # without the file name in the gzip header (24 bytes smaller), measured on the installed files.
    "fashion_mnist": DatasetSpec(
        files={
            TRAIN_IMAGES: ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                           "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
            TRAIN_LABELS: ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                           "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
            TEST_IMAGES: ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                          "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
            TEST_LABELS: ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                          "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
        },
        counts=(60000, 10000),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        how_to_get=("install it with `apt-get install dataset-fashion-mnist` or put the four "
                    "files " + ", ".join(IDX_FILES) + " in a directory and pass "
                    "dataset.data_dir=DIR"),
    ),
}

# (resolved path, size, mtime_ns) -> SHA-256, so each file is hashed once per process.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def load_raw(name: str, *, data_dir: str | None = None, cache_dir: str | None = None,
             download: bool = True, mirrors: list[str] | None = None, timeout: float = 10.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test): images uint8 (N,28,28), labels uint8 (N,)."""
    spec = dataset_spec(name)
    if spec.source == "package":
        return _load_package_npz(name, spec)
    paths = locate_files(name, data_dir=data_dir, cache_dir=cache_dir, download=download,
                         mirrors=mirrors, timeout=timeout)
    x_train, y_train = _read_split(name, spec, "train", paths[TRAIN_IMAGES], paths[TRAIN_LABELS])
    x_test, y_test = _read_split(name, spec, "test", paths[TEST_IMAGES], paths[TEST_LABELS])
    return x_train, y_train, x_test, y_test


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for `name`; ConfigError listing the valid names if there is none."""
    if name not in REGISTRY:
        valid = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"dataset {name!r} is unknown; valid names: {valid}")
    return REGISTRY[name]


def default_cache_dir(cache_dir: str | None = None) -> Path:
    """`cache_dir`, else $DLRUN_CACHE_DIR, else $XDG_CACHE_HOME/dlrun, else ~/.cache/dlrun."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("DLRUN_CACHE_DIR"):
        return Path(os.environ["DLRUN_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "dlrun"
    return Path.home() / ".cache" / "dlrun"


def search_dirs(name: str, *, cache_dir: str | None = None) -> list[Path]:
    """Directories looked in for `name`'s files when no data_dir is given: the cache, then
    system dirs."""
    spec = dataset_spec(name)
    dirs = [default_cache_dir(cache_dir) / name] + [Path(d) for d in spec.system_dirs]
    return list(dict.fromkeys(dirs))


def locate_files(name: str, *, data_dir: str | None = None, cache_dir: str | None = None,
                 download: bool = True, mirrors: list[str] | None = None,
                 timeout: float = 10.0) -> dict[str, Path]:
    """Path of each verified file of `name`. An explicit data_dir is authoritative: the files
    are read from there or not at all (`in_data_dir`). Otherwise the cache and system dirs are
    looked in, and missing files downloaded into the cache dir."""
    spec = dataset_spec(name)
    if data_dir:
        return in_data_dir(name, spec, Path(data_dir).expanduser(), cache_dir)
    dirs = search_dirs(name, cache_dir=cache_dir)
    found: dict[str, Path] = {}
    for fname, accepted in spec.files.items():
        path = next((d / fname for d in dirs if (d / fname).is_file()), None)
        if path is not None:
            _verify_file(name, path, accepted, default_cache_dir(cache_dir))
            found[fname] = path
    missing = [f for f in spec.files if f not in found]
    if not missing:
        return found

    where = ", ".join(str(d) for d in dirs)
    if not download:
        raise DataError(f"{name}: {', '.join(missing)} not found (looked in {where}) and "
                        f"downloading is disabled; to fix: {spec.how_to_get}")
    urls = list(spec.mirrors if mirrors is None else mirrors)
    cache = default_cache_dir(cache_dir) / name
    for fname in missing:
        path, failures = download_file(name, fname, spec.files[fname], urls, cache, timeout)
        if path is None:
            tried = "; ".join(failures) if failures else "no mirrors configured"
            raise DataError(f"{name}: {fname} not found (looked in {where}) and could not be "
                            f"downloaded ({tried}); to fix: {spec.how_to_get}")
        found[fname] = path
    return found


def in_data_dir(name: str, spec: DatasetSpec, data_dir: Path, cache_dir: str | None
                ) -> dict[str, Path]:
    """The files of `name` in the user's data_dir, verified; DataError naming data_dir if it
    is not a directory or lacks any of them (never a silent fallback to another copy)."""
    elsewhere = (f"or leave dataset.data_dir unset (null) to use the copies in "
                 f"{', '.join(map(str, search_dirs(name, cache_dir=cache_dir)))} or download them")
    if not data_dir.is_dir():
        what = "a file" if data_dir.exists() else "not there"
        raise DataError(f"{name}: dataset.data_dir={data_dir} is {what}, not a directory; give "
                        f"the directory holding {', '.join(spec.files)}, {elsewhere}")
    missing = [f for f in spec.files if not (data_dir / f).is_file()]
    if missing:
        raise DataError(f"{name}: dataset.data_dir={data_dir} lacks {', '.join(missing)}; put "
                        f"the files there, {elsewhere}")
    found = {f: data_dir / f for f in spec.files}
    for fname, path in found.items():
        _verify_file(name, path, spec.files[fname], default_cache_dir(cache_dir))
    return found


def provenance(name: str, *, data_dir: str | None = None, cache_dir: str | None = None
               ) -> list[dict]:
    """Where `name`'s data was read from: one {file, path (resolved), sha256} per file, for
    summary.json. Call after load_raw (the files are found and hashed then; this re-reads
    nothing)."""
    spec = dataset_spec(name)
    if spec.source == "package":
        (fname, accepted), = spec.files.items()
        return [{"file": fname, "path": str(resources.files("dlrun.data").joinpath(fname)),
                 "sha256": accepted[0]}]
    paths = locate_files(name, data_dir=data_dir, cache_dir=cache_dir, download=False)
    return [{"file": f, "path": str(p.resolve()), "sha256": sha256_file(p)}
            for f, p in paths.items()]


def read_idx(source: str | os.PathLike | bytes, *, name: str | None = None) -> np.ndarray:
    """Parse a gzip-compressed IDX file (uint8 labels 0x00000801 or images 0x00000803).

    `source` is a path or the file's bytes; `name` labels error messages (default: the path).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, raw = name or "IDX data", bytes(source)
    else:
        label = name or str(source)
        try:
            raw = Path(source).read_bytes()
        except OSError as e:
            raise DataError(f"{label}: cannot read ({_one_line(e)})") from e
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{label}: corrupt gzip data ({_one_line(e)}); delete the file and "
                        "download it again") from e
    return _parse_idx(label, data)


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, computed once per process per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


# --------------------------------------------------------------------------- internals


def _verify_file(name: str, path: Path, accepted: tuple[str, ...], cache_root: Path) -> None:
    try:
        actual = sha256_file(path)
    except OSError as e:
        raise DataError(f"{name}: cannot read {path} ({_one_line(e)}); "
                        "check its permissions") from e
    if actual not in accepted:
        expected = " or ".join(_short(d) for d in accepted)
        in_cache = cache_root.resolve() in path.resolve().parents  # ours to delete, not the user's
        fix = ("delete it (it is downloaded again when a network is available) or replace it with "
               "the official file" if in_cache else "replace it with the official file")
        raise DataError(f"{name}: {path} has SHA-256 {_short(actual)}, expected {expected}; the "
                        f"file is corrupt, incomplete or not the official {path.name}: {fix}")


_IDX_MAGIC = {0x00000801: 1, 0x00000803: 3}  # magic -> number of dimensions (uint8 only)


def _parse_idx(label: str, data: bytes) -> np.ndarray:
    if len(data) < 4:
        raise DataError(f"{label}: {len(data)} bytes is too short for an IDX header; the file "
                        "is truncated: delete it and download it again")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in _IDX_MAGIC:
        raise DataError(f"{label}: not a uint8 IDX labels/images file (magic 0x{magic:08x}, "
                        "expected 0x00000801 or 0x00000803); use the original *-ubyte.gz files")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{label}: IDX header truncated ({len(data)} of {header} bytes); "
                        "delete the file and download it again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = 1
    for d in dims:
        expected *= d
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "followed by extra data"
        raise DataError(f"{label}: IDX payload is {what}: header {'x'.join(map(str, dims))} needs "
                        f"{expected} bytes, got {got}; delete the file and download it again")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def _read_split(name: str, spec: DatasetSpec, split: str, images_path: Path, labels_path: Path
                ) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, name=f"{name}: {images_path}")
    labels = read_idx(labels_path, name=f"{name}: {labels_path}")
    return _check_arrays(name, spec, split, images, labels,
                         f"{images_path.name} and {labels_path.name} in {images_path.parent}")


def _check_arrays(name: str, spec: DatasetSpec, split: str, images: np.ndarray,
                  labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Shapes, dtypes, counts and label range of one split; DataError naming `where`."""
    fix = "replace the files with the official ones"
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{name}: {split} images in {where} have shape {images.shape} "
                        f"{images.dtype}, expected (N, 28, 28) uint8; {fix}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{name}: {split} labels in {where} have shape {labels.shape} "
                        f"{labels.dtype}, expected (N,) uint8; {fix}")
    if len(images) != len(labels):
        raise DataError(f"{name}: {split} split has {len(images)} images but {len(labels)} labels "
                        f"({where}); the files do not belong together: {fix}")
    expected = spec.counts[0 if split == "train" else 1]
    if len(images) != expected:
        raise DataError(f"{name}: {split} split has {len(images)} examples, expected {expected} "
                        f"({where}); {fix}")
    if len(labels) and int(labels.max()) >= spec.num_classes:
        raise DataError(f"{name}: {split} labels in {where} go up to {int(labels.max())}, "
                        f"expected 0..{spec.num_classes - 1}; {fix}")
    return images, labels


def _load_package_npz(name: str, spec: DatasetSpec
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    (fname, accepted), = spec.files.items()
    resource = resources.files("dlrun.data").joinpath(fname)
    try:
        raw = resource.read_bytes()
    except OSError as e:
        raise DataError(f"{name}: cannot read the bundled {fname} ({_one_line(e)}); "
                        f"{spec.how_to_get}") from e
    actual = hashlib.sha256(raw).hexdigest()
    if actual not in accepted:
        raise DataError(f"{name}: the bundled {fname} has SHA-256 {_short(actual)}, expected "
                        f"{_short(accepted[0])}; it was modified: {spec.how_to_get}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{name}: the bundled {fname} is unreadable ({_one_line(e)}); "
                        f"{spec.how_to_get}") from e
    where = f"the bundled {fname}"
    x_train, y_train = _check_arrays(name, spec, "train", arrays["x_train"], arrays["y_train"],
                                     where)
    x_test, y_test = _check_arrays(name, spec, "test", arrays["x_test"], arrays["y_test"], where)
    return x_train, y_train, x_test, y_test
