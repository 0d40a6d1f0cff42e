"""The users' data sources, in process: npz, CIFAR batches, image folders and functions, each
read into NHWC arrays with the shape, classes and names the models are built for, and each
bad input refused in one line naming the file and the fix."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from _config import compose
from _userdata import rgb32, sample, write_cifar, write_image_folder, write_npz
from dlrun.data import formats, splits
from dlrun.errors import ConfigError, DataError
from dlrun.train import build_setup


def test_npz_describes_itself_and_models_are_built_for_it(tmp_path):
    path = write_npz(tmp_path / "a.npz", n_train=300, n_test=50)
    setup = build_setup(compose("dataset=npz", f"dataset.path={path}", "model=cnn",
                                "dataset.val_size=60"))
    assert setup.data.image_shape == (32, 32, 3) and setup.data.num_classes == 100
    assert setup.data.class_names[:2] == ("class 0", "class 1") and not setup.data.digits
    assert setup.dataset.sizes(setup.data) == (240, 60, 50)
    import jax
    from dlrun.train import init_state
    state = init_state(setup, jax.random.key(0))
    assert state.params["conv_0"]["kernel"].shape[2] == 3  # RGB in
    assert state.params["out"]["kernel"].shape[-1] == 100  # 100 classes out


def test_npz_members_are_memory_mapped_unless_compressed(tmp_path):
    plain = formats.read_npz(write_npz(tmp_path / "p.npz", 100, 20), mmap=True)
    packed = formats.read_npz(write_npz(tmp_path / "c.npz", 100, 20, compressed=True), mmap=True)
    assert isinstance(plain.x_train, np.memmap) and not isinstance(packed.x_train, np.memmap)
    np.testing.assert_array_equal(plain.x_train, packed.x_train)
    assert plain.x_train.shape == (100, 32, 32, 3) and plain.y_train.dtype == np.int32


def bad_npz(tmp_path, **arrays):
    x_train, y_train, x_test, y_test = sample(20, 10)
    base = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    base.update(arrays)
    base = {k: v for k, v in base.items() if v is not None}
    path = tmp_path / "bad.npz"
    np.savez(path, **base)
    return path


@pytest.mark.parametrize("change, words", [
    ({"x_train": np.zeros((20, 28), np.uint8)}, ["x_train has shape (20, 28)", "(N, H, W)"]),
    ({"x_test": np.zeros((10, 14, 14), np.uint8)}, ["differ in shape", "train (28, 28, 1)", "test (14, 14, 1)"]),
    ({"y_train": np.zeros(19, np.int64)}, ["19 labels for 20 images"]),
    ({"y_test": np.full(10, -1)}, ["label -1", "0..K-1"]),
    ({"y_test": np.full(10, 12), "class_names": np.array(list("abcdefghij"))}, ["label 12 is out of range for 10 classes"]),
    ({"x_train": np.full((20, 28, 28), 2.0, np.float32)}, ["floats in [2, 2]", "[0, 1]"]),
    ({"y_train": np.zeros((20, 10), np.float32)}, ["labels must be integers", "not one-hot"]),
    ({"y_test": None}, ["x_test and y_test come together"]),
    ({"X_train": np.zeros(3)}, ["unknown array(s) X_train"]),
    ({"x_train": np.zeros((20, 3, 28, 28), np.uint8)}, ["channels-last", "transpose"]),
])
def test_npz_refusals_name_the_file_and_the_fix(tmp_path, change, words):
    path = bad_npz(tmp_path, **change)
    with pytest.raises(DataError) as e:
        formats.read_npz(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    for w in words:
        assert w in message, message


def test_unreadable_npz_files_are_refused(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        formats.read_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="without object arrays"):
        formats.read_npz(tmp_path / "obj.npz")
    with pytest.raises(DataError, match="no such file"):
        formats.read_npz(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="dataset.path is required"):
        build_setup(compose("dataset=npz"))


def test_cifar_batches_read_as_32x32_rgb_with_names(tmp_path):
    folder = write_cifar(tmp_path / "cifar", n_train=100, n_test=20)
    data = formats.read_cifar("cifar10", str(folder))
    x_train, y_train, _, _ = sample(100, 20)
    np.testing.assert_array_equal(data.x_train, rgb32(x_train))  # channel planes -> HWC
    np.testing.assert_array_equal(data.y_train, y_train)
    assert data.class_names[0] == "airplane" and data.x_test.shape == (20, 32, 32, 3)


def test_a_crafted_cifar_pickle_is_refused_and_runs_nothing(tmp_path):
    folder = write_cifar(tmp_path / "cifar", n_train=50, n_test=10)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(DataError) as e:
        formats.read_cifar("cifar10", str(folder))
    assert "posix.system" in str(e.value) or "os.system" in str(e.value)
    assert "nothing in it was run" in str(e.value) and not marker.exists()
    with pytest.raises(DataError, match="lacks data_batch_1"):
        (folder / "data_batch_1").unlink()
        formats.read_cifar("cifar10", str(folder))


def test_image_folder_decodes_once_and_a_changed_file_invalidates(tmp_path, capfd):
    root = write_image_folder(tmp_path / "imgs", n_train=100, n_test=20)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    cache = tmp_path / "cache"
    first = formats.read_image_folder(str(root), None, None, cache)
    assert first.x_train.shape == (100, 28, 28, 3)  # the most common size; RGB
    assert first.class_names == ("eight", "five", "four", "nine", "one", "seven", "six", "three",
                                 "two", "zero")  # the folder names, sorted
    assert "decoding images" in capfd.readouterr().err
    again = formats.read_image_folder(str(root), None, None, cache)
    assert "decoding images" not in capfd.readouterr().err  # from the cache
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # never written to
    changed = next((root / "train").rglob("*.png"))
    Image.new("RGB", (28, 28), (255, 0, 0)).save(changed)
    third = formats.read_image_folder(str(root), None, None, cache)
    assert "decoding images" in capfd.readouterr().err
    assert not np.array_equal(third.x_train, first.x_train)
    sized = formats.read_image_folder(str(root), (16, 20), 1, cache)
    assert sized.x_train.shape == (100, 16, 20, 1)


def test_image_folder_refusals(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        formats.read_image_folder(str(tmp_path / "none"), None, None, tmp_path)
    (tmp_path / "r" / "train" / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "r" / "train" / "a" / "x.png")
    with pytest.raises(DataError, match="no test/ folder"):
        formats.read_image_folder(str(tmp_path / "r"), None, None, tmp_path)
    (tmp_path / "r" / "test" / "b").mkdir(parents=True)
    (tmp_path / "r" / "test" / "b" / "y.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="that .*train lacks"):
        formats.read_image_folder(str(tmp_path / "r"), None, None, tmp_path)


def numbers(n_train: int = 200, offset: int = 0):
    x_train, y_train, x_test, y_test = sample(n_train, 50)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": (y_test + offset) % 10}


class Records:
    """A random-access source as grain defines one: len() and [i] -> a record."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def sources_fn():
    x_train, y_train, x_test, y_test = sample(200, 30)
    return {"train": Records(x_train, y_train), "test": Records(x_test, y_test)}


def test_a_dataset_function_or_random_access_sources(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    setup = build_setup(compose("dataset=custom", "dataset.target=test_sources:numbers",
                                "+dataset.n_train=150"))
    assert setup.dataset.sizes(setup.data) == (150, 0, 50)
    assert setup.dataset.load().x_train.shape == (150, 28, 28, 1)
    setup = build_setup(compose("dataset=custom", "dataset.target=test_sources:sources_fn"))
    assert setup.data.counts == (200, 0, 30) and setup.data.image_shape == (28, 28, 1)
    with pytest.raises(ConfigError, match="dataset.n_trian is not a setting"):
        build_setup(compose("dataset=custom", "dataset.target=test_sources:numbers", "+dataset.n_trian=1"))
    with pytest.raises(ConfigError, match="cannot import nowhere_pkg .ModuleNotFoundError"):
        build_setup(compose("dataset=custom", "dataset.target=nowhere_pkg:load"))


def test_streaming_is_chosen_by_the_budget():
    setup = build_setup(compose("dataset.device_budget_mb=1"))  # the sample needs 3.9 MB
    assert setup.stream and setup.loop == "step"
    assert not build_setup(compose()).stream
    assert build_setup(compose("dataset.placement=host")).stream
    with pytest.raises(ConfigError, match="train.loop=step"):
        build_setup(compose("dataset.placement=host", "train.loop=scan"))
    with pytest.raises(ConfigError, match="num_seeds"):
        build_setup(compose("dataset.placement=host", "train.num_seeds=2"))
    loaded = splits.load_splits(build_setup(compose()).dataset, 1000, stream=True)
    assert not loaded["train"].on_device and loaded["train"].x.shape == (3500, 28, 28, 1)


def test_streamed_training_equals_device_resident_training(tmp_path):
    """The same seed gives the same metrics, bit for bit, whether the splits live on the device
    or batches stream from the host (loop=step both; the budget forces streaming)."""
    import json

    from dlrun import train
    common = ("train.epochs=2", "train.loop=step", "model.hidden=[64]", "dataset.train_subset=1000")
    train.train_and_evaluate(compose(*common), str(tmp_path / "device"))
    summary = train.train_and_evaluate(compose(*common, "dataset.device_budget_mb=1"), str(tmp_path / "host"))
    assert summary["data"]["placement"] == "host (streamed)"
    records = lambda d: [{k: v for k, v in json.loads(line).items() if "second" not in k}  # noqa: E731
                         for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert records("host") == records("device") and len(records("host")) == 2


def test_cifar100_fine_and_coarse_labels(tmp_path):
    x_train, y_train, x_test, y_test = sample(100, 20)
    rows = lambda x: rgb32(x).transpose(0, 3, 1, 2).reshape(len(x), 3072)  # noqa: E731
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        fine = (y.astype(int) * 10 + np.arange(len(y)) % 10).tolist()
        (tmp_path / name).write_bytes(pickle.dumps({b"data": rows(x), b"fine_labels": fine,
                                                    b"coarse_labels": y.tolist()}, protocol=2))
    (tmp_path / "meta").write_bytes(pickle.dumps({
        b"fine_label_names": [f"f{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, protocol=2))
    fine = build_setup(compose("dataset=cifar100", f"dataset.data_dir={tmp_path}", "dataset.val_size=0",
                               "train.batch_size=50"))
    assert fine.data.num_classes == 100 and fine.data.image_shape == (32, 32, 3)
    coarse = build_setup(compose("dataset=cifar100", f"dataset.data_dir={tmp_path}", "dataset.val_size=0",
                                 "dataset.labels=coarse", "train.batch_size=50"))
    assert coarse.data.num_classes == 20 and coarse.data.class_names[19] == "c19"
    np.testing.assert_array_equal(coarse.dataset.load().y_test, y_test)


def test_a_streamed_run_resumes_bit_for_bit(tmp_path):
    import json

    from dlrun import train
    from dlrun.train.trainer import Context
    common = ("train.loop=step", "model.hidden=[32]", "dataset.train_subset=600", "dataset.placement=host")
    train.train_and_evaluate(compose(*common, "train.epochs=2"), str(tmp_path / "whole"))
    train.train_and_evaluate(compose(*common, "train.epochs=1"), str(tmp_path / "half"))
    train.train_and_evaluate(compose(*common, "train.epochs=2"), str(tmp_path / "half"), Context(resume=True))
    records = lambda d: [{k: v for k, v in json.loads(line).items() if "second" not in k}  # noqa: E731
                         for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert records("half") == records("whole")
    assert (tmp_path / "half" / "params.pkl").read_bytes() == (tmp_path / "whole" / "params.pkl").read_bytes()
