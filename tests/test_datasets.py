"""Tests for dlrun.data.sources: the bundled sample, the IDX reader, checksums, search and download."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from dlrun.data import sources as datasets
from dlrun.data.sources import (IDX_FILES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
                            load_raw, read_idx)
from dlrun.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 20, 10


# ----------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, *, magic: int | None = None, payload: bytes | None = None) -> bytes:
    """Gzip-compressed IDX file for a uint8 array (1-D labels or 3-D images)."""
    arr = np.asarray(arr, dtype=np.uint8)
    magic = magic if magic is not None else (0x801 if arr.ndim == 1 else 0x803)
    header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + (arr.tobytes() if payload is None else payload), mtime=0)


def synthetic_arrays(n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: (np.arange(n_train) % 10).astype(np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LABELS: (np.arange(n_test) % 10).astype(np.uint8),
    }


def synthetic_files(arrays: dict[str, np.ndarray] | None = None) -> dict[str, bytes]:
    return {name: idx_bytes(a) for name, a in (arrays or synthetic_arrays()).items()}


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def register(monkeypatch, files: dict[str, bytes], *, name: str = "mnist",
             counts: tuple[int, int] = (N_TRAIN, N_TEST), **changes) -> None:
    """Make `files` the known-good files of dataset `name` for this test."""
    spec = dataclasses.replace(
        datasets.REGISTRY[name], counts=counts, mirrors=(),
        files={f: (hashlib.sha256(data).hexdigest(),) for f, data in files.items()}, **changes)
    monkeypatch.setitem(datasets.REGISTRY, name, spec)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Never touch the real cache, never go through a proxy."""
    monkeypatch.setenv("DLRUN_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server(tmp_path):
    """A local HTTP server serving tmp_path/'served'; yields (base URL, served dir, request log)."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# ----------------------------------------------------------------------------- mnist_sample


def test_mnist_sample_shapes_dtypes_and_classes():
    x_train, y_train, x_test, y_test = load_raw("mnist_sample")
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    for a in (x_train, y_train, x_test, y_test):
        assert a.dtype == np.uint8
    assert np.bincount(y_train, minlength=10).tolist() == [400] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [100] * 10
    assert y_train.max() == 9 and y_test.max() == 9
    assert x_train.max() == 255 and x_train.min() == 0
    assert len(set(y_train[:50].tolist())) > 5  # classes interleaved, not sorted


def test_mnist_sample_is_the_same_every_call():
    first, second = load_raw("mnist_sample"), load_raw("mnist_sample")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_mnist_sample_modified_is_refused(monkeypatch):
    spec = datasets.REGISTRY["mnist_sample"]
    monkeypatch.setitem(datasets.REGISTRY, "mnist_sample",
                        dataclasses.replace(spec, files={"mnist_sample.npz": ("0" * 64,)}))
    with pytest.raises(DataError) as excinfo:
        load_raw("mnist_sample")
    msg = one_line_error(excinfo)
    assert msg.startswith("mnist_sample:") and "modified" in msg


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError) as excinfo:
        load_raw("cifar10")
    msg = str(excinfo.value)
    assert "cifar10" in msg and "mnist_sample" in msg and "fashion_mnist" in msg


# ----------------------------------------------------------------------------- read_idx


def test_read_idx_round_trip(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(idx_bytes(images)), images)
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(labels))
    got = read_idx(path)
    np.testing.assert_array_equal(got, labels)
    assert got.dtype == np.uint8 and got.flags.writeable


@pytest.mark.parametrize("payload, word", [(b"\x01\x02\x03", "truncated"),
                                           (bytes(7), "extra data")])
def test_read_idx_wrong_payload_length(payload, word):
    data = idx_bytes(np.zeros(5, np.uint8), payload=payload)
    with pytest.raises(DataError) as excinfo:
        read_idx(data, name="labels.gz")
    msg = one_line_error(excinfo)
    assert msg.startswith("labels.gz:") and word in msg
    assert "5 bytes" in msg and f"got {len(payload)}" in msg


def test_read_idx_truncated_header():
    with pytest.raises(DataError, match="truncated"):
        read_idx(gzip.compress(struct.pack(">II", 0x803, 2)))


@pytest.mark.parametrize("raw", [b"\x1f\x8b\x08\x00garbage-not-deflate-data",
                                 b"not gzip at all",
                                 idx_bytes(np.zeros(1000, np.uint8))[:20]])
def test_read_idx_corrupt_gzip(tmp_path, raw):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(raw)
    with pytest.raises(DataError) as excinfo:
        read_idx(path)
    msg = one_line_error(excinfo)
    assert msg.startswith(str(path)) and "corrupt" in msg


@pytest.mark.parametrize("magic", [0x802, 0x0D03, 0x12345678])
def test_read_idx_wrong_magic(magic):
    with pytest.raises(DataError) as excinfo:
        read_idx(idx_bytes(np.zeros(4, np.uint8), magic=magic), name="x.gz")
    msg = one_line_error(excinfo)
    assert "magic" in msg and f"0x{magic:08x}" in msg


# ----------------------------------------------------------------------------- local files


def test_loads_from_data_dir(tmp_path, monkeypatch):
    arrays = synthetic_arrays()
    files = synthetic_files(arrays)
    register(monkeypatch, files)
    data_dir = write_files(tmp_path / "data", files)
    out = load_raw("mnist", data_dir=str(data_dir), download=False)
    for got, name in zip(out, (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)):
        np.testing.assert_array_equal(got, arrays[name])
    assert not (tmp_path / "env-cache").exists()  # nothing downloaded or cached


def test_count_mismatch_between_images_and_labels(tmp_path, monkeypatch):
    arrays = synthetic_arrays()
    arrays[TRAIN_LABELS] = arrays[TRAIN_LABELS][:-1]
    files = synthetic_files(arrays)
    register(monkeypatch, files)
    with pytest.raises(DataError) as excinfo:
        load_raw("mnist", data_dir=str(write_files(tmp_path / "d", files)), download=False)
    msg = one_line_error(excinfo)
    assert msg.startswith("mnist:") and "20 images but 19 labels" in msg


def test_images_must_be_28x28(tmp_path, monkeypatch):
    arrays = synthetic_arrays()
    arrays[TEST_IMAGES] = np.zeros((N_TEST, 32, 32), np.uint8)
    files = synthetic_files(arrays)
    register(monkeypatch, files)
    with pytest.raises(DataError, match=r"28, 28"):
        load_raw("mnist", data_dir=str(write_files(tmp_path / "d", files)), download=False)


def test_bad_checksum_in_data_dir(tmp_path):
    data_dir = write_files(tmp_path / "data", synthetic_files())  # not the real MNIST files
    with pytest.raises(DataError) as excinfo:
        load_raw("mnist", data_dir=str(data_dir), download=False)
    msg = one_line_error(excinfo)
    actual = hashlib.sha256((data_dir / TRAIN_IMAGES).read_bytes()).hexdigest()
    assert msg.startswith("mnist:") and str(data_dir / TRAIN_IMAGES) in msg
    assert "440fcabf73cc" in msg and actual[:12] in msg and "replace it" in msg and "delete" not in msg


@pytest.mark.parametrize("mirror", [None, "closed-port"])
def test_absent_dataset_names_searched_dirs(tmp_path, mirror):
    cache = tmp_path / "cache"
    kwargs = ({"download": False} if mirror is None else
              {"mirrors": [f"http://127.0.0.1:{closed_port()}/mnist/"], "timeout": 2.0})
    with pytest.raises(DataError) as excinfo:
        load_raw("mnist", cache_dir=str(cache), **kwargs)
    msg = one_line_error(excinfo)
    assert msg.startswith("mnist:")
    assert str(cache / "mnist") in msg
    assert "dataset.data_dir=DIR" in msg
    if mirror:
        assert "127.0.0.1" in msg
    assert not any(cache.rglob("*"))


def test_absent_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    system_dir = tmp_path / "usr-share"
    spec = dataclasses.replace(datasets.REGISTRY["fashion_mnist"], system_dirs=(str(system_dir),))
    monkeypatch.setitem(datasets.REGISTRY, "fashion_mnist", spec)
    with pytest.raises(DataError) as excinfo:
        load_raw("fashion_mnist", download=False)
    msg = one_line_error(excinfo)
    assert msg.startswith("fashion_mnist:")
    assert str(system_dir) in msg and str(tmp_path / "env-cache" / "fashion_mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "dataset.data_dir=DIR" in msg


def test_cache_dir_resolution(tmp_path, monkeypatch):
    assert datasets.default_cache_dir(str(tmp_path)) == tmp_path
    assert datasets.default_cache_dir() == tmp_path / "env-cache"
    monkeypatch.delenv("DLRUN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.default_cache_dir() == tmp_path / "xdg" / "dlrun"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.default_cache_dir() == tmp_path / "home" / ".cache" / "dlrun"


# ----------------------------------------------------------------------------- download


def test_download_is_verified_cached_and_reused(tmp_path, monkeypatch, server):
    url, served, requests = server
    arrays = synthetic_arrays()
    files = synthetic_files(arrays)
    register(monkeypatch, files)
    write_files(served / "mnist", files)
    cache = tmp_path / "cache"

    first = load_raw("mnist", cache_dir=str(cache), mirrors=[url + "mnist"])
    assert sorted(requests) == sorted(f"/mnist/{f}" for f in IDX_FILES)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(IDX_FILES)
    for f in IDX_FILES:
        assert (cache / "mnist" / f).read_bytes() == files[f]

    second = load_raw("mnist", cache_dir=str(cache), mirrors=[url + "mnist"])
    assert len(requests) == 4  # served from the cache
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[0], arrays[TRAIN_IMAGES])


def test_download_uses_env_cache_and_falls_back_to_next_mirror(tmp_path, monkeypatch, server):
    url, served, requests = server
    files = synthetic_files()
    register(monkeypatch, files)
    write_files(served, files)
    dead = f"http://127.0.0.1:{closed_port()}/"
    load_raw("mnist", mirrors=[dead, url], timeout=2.0)
    assert len(requests) == 4
    assert sorted(p.name for p in (tmp_path / "env-cache" / "mnist").iterdir()) == sorted(IDX_FILES)


def test_download_with_bad_checksum_is_refused_and_not_cached(tmp_path, monkeypatch, server):
    url, served, requests = server
    files = synthetic_files()
    register(monkeypatch, files)
    tampered = dict(files, **{TRAIN_LABELS: idx_bytes(np.full(N_TRAIN, 3, np.uint8))})
    write_files(served, tampered)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as excinfo:
        load_raw("mnist", cache_dir=str(cache), mirrors=[url])
    msg = one_line_error(excinfo)
    assert msg.startswith("mnist:") and TRAIN_LABELS in msg and "SHA-256" in msg
    assert "not cached" in msg
    assert f"/{TRAIN_LABELS}" in requests
    # the good file before it may be cached; the bad one and any temporary file must not be
    leftovers = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert TRAIN_LABELS not in leftovers
    assert all(name in IDX_FILES for name in leftovers), leftovers


def test_corrupt_cached_file_is_reported(tmp_path, monkeypatch):
    files = synthetic_files()
    register(monkeypatch, files)
    cache = tmp_path / "cache"
    write_files(cache / "mnist", dict(files, **{TEST_IMAGES: files[TEST_IMAGES][:-10]}))
    with pytest.raises(DataError) as excinfo:
        load_raw("mnist", cache_dir=str(cache), download=False)
    msg = one_line_error(excinfo)
    assert str(cache / "mnist" / TEST_IMAGES) in msg and "delete it" in msg


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not all((FASHION_DIR / f).is_file() for f in IDX_FILES),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_system_dir(tmp_path):
    x_train, y_train, x_test, y_test = load_raw("fashion_mnist", cache_dir=str(tmp_path),
                                                download=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    assert np.bincount(y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [1000] * 10


@pytest.mark.parametrize("case, words", [("absent", "is not there, not a directory"),
                                         ("a-file", "is a file, not a directory"),
                                         ("partial", f"lacks {TEST_LABELS}")])
def test_an_explicit_data_dir_is_authoritative(tmp_path, monkeypatch, case, words):
    """A good copy in the cache is never used instead of the data_dir the user named."""
    files = synthetic_files()
    register(monkeypatch, files)
    cache = tmp_path / "cache"
    write_files(cache / "mnist", files)
    data_dir = tmp_path / "mine"
    if case == "a-file":
        data_dir.write_text("not a directory")
    elif case == "partial":
        write_files(data_dir, {f: d for f, d in files.items() if f != TEST_LABELS})
    with pytest.raises(DataError) as excinfo:
        load_raw("mnist", data_dir=str(data_dir), cache_dir=str(cache))
    msg = one_line_error(excinfo)
    assert f"dataset.data_dir={data_dir}" in msg and words in msg, msg
    assert "leave dataset.data_dir unset" in msg and str(cache / "mnist") in msg


def test_provenance_names_the_resolved_files_read(tmp_path, monkeypatch):
    files = synthetic_files()
    register(monkeypatch, files)
    real = write_files(tmp_path / "real", files)
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in files:
        (linked / name).symlink_to(real / name)
    load_raw("mnist", data_dir=str(linked), download=False)
    records = datasets.provenance("mnist", data_dir=str(linked))
    assert {r["file"]: (r["path"], r["sha256"]) for r in records} == {
        name: (str(real / name), hashlib.sha256(data).hexdigest()) for name, data in files.items()}
