"""dlrun.runs.atomic: atomic writes and the restricted reader of parameter pickles."""
import os
import pickle

import numpy as np
import pytest

from dlrun.errors import FileError
from dlrun.runs.atomic import atomic_write_pickle, load_arrays


def test_parameter_files_round_trip(tmp_path):
    params = {"hidden_0": {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros(2, np.float32)},
              "out": {"kernel": np.arange(4.0).reshape(2, 2)}, "step": np.int32(7),
              "meta": ["a", (1, 2.5, None, True)]}
    path = atomic_write_pickle(tmp_path / "params.pkl", params)
    back = load_arrays(path)
    np.testing.assert_array_equal(back["hidden_0"]["kernel"], params["hidden_0"]["kernel"])
    assert back["out"]["kernel"].dtype == np.float64 and back["step"] == 7
    assert back["meta"] == ["a", (1, 2.5, None, True)]


class Payload:
    """A pickle that runs a command when loaded with plain pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: {"kernel": np.ones(2), "x": [p]}],
                         ids=["bare", "nested"])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "params.pkl"
    path.write_bytes(pickle.dumps(wrap(Payload(marker))))
    with pytest.raises(FileError, match="posix.system|os.system|nt.system") as err:
        load_arrays(path)
    assert "nothing in it was run" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the same file through plain pickle does run it:
    assert marker.exists()           # the test's payload is real


@pytest.mark.parametrize("content, expected", [
    (lambda: pickle.dumps({"k": np.ones(1000)})[:200], "truncated"),
    (lambda: b"", "truncated"),
    (lambda: b"not a pickle at all", "not a parameter file"),
    (lambda: pickle.dumps({"k": np.array([1, "x"], dtype=object)}), "object array"),
    (lambda: pickle.dumps({"k": {1, 2}}), "holds a set"),
], ids=["truncated", "empty", "garbage", "object-array", "set"])
def test_broken_or_foreign_files_give_one_line(tmp_path, content, expected):
    path = tmp_path / "params.pkl"
    path.write_bytes(content())
    with pytest.raises(FileError, match=expected) as err:
        load_arrays(path)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileError, match="no such file"):
        load_arrays(tmp_path / "nope.pkl")
