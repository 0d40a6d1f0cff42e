"""Atomic file writes (a reader never sees a partial file) and safe pickle reads.

Every file dlrun produces goes through `atomic_write_bytes`: write to a temporary file in the
same directory, flush and fsync, then rename over the target (rename is atomic on POSIX). A file (or directory) that did not
exist before is noted as this invocation's (dlrun.runs.ownership), so a refused run can remove it.
Parameter pickles are read back with `load_arrays`, which never executes code from the file.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.runs import ownership
from dlrun.errors import FileError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    path = Path(path)
    ownership.mkdirs(path.parent)
    existed = os.path.lexists(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)  # the temporary file this call made
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # "File too large" alone does not say which
        raise
    if not existed:
        ownership.note(path, "file")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_pickle(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


# What a pickle of nested dicts of numpy arrays needs, under numpy 2 (`numpy._core`) and 1.x
# (`numpy.core`) names: nothing that can call into anything else.
_ARRAY_GLOBALS = {(mod, name) for core in ("numpy._core", "numpy.core") for mod, name in (
    (f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
    (f"{core}.numeric", "_frombuffer"))} | {("numpy", "dtype"), ("numpy", "ndarray")}
_PLAIN = (dict, list, tuple, str, int, float, bool, type(None))


class ArraysOnly(pickle.Unpickler):
    """An unpickler that resolves only numpy's array constructors: loading runs no code."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a parameter file never "
                                     f"needs")


def load_arrays(path: str | os.PathLike) -> Any:
    """Read a pickle of plain containers (dict, list, tuple, str, numbers) and numpy arrays,
    such as params.pkl, without executing anything from the file: a restricted unpickler
    resolves only numpy's array constructors, and object arrays are refused. Raises FileError
    with one line saying what is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = ArraysOnly(f).load()
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except EOFError:
        raise FileError(f"{path} is truncated or empty (a copy cut short?); nothing in it was run. "
                        f"Use a complete params.pkl written by dlrun") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as exc:
        raise FileError(f"{path} is not a parameter file dlrun can read safely ({exc}); "
                        f"nothing in it was run. Use a params.pkl written by dlrun") from None
    _check_plain(obj, path)
    return obj


def _check_plain(obj: Any, path: Path) -> None:
    if isinstance(obj, np.ndarray) or isinstance(obj, np.generic):
        if obj.dtype.hasobject:
            raise FileError(f"{path} holds an object array; dlrun parameter files hold numbers only")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, path)
            _check_plain(value, path)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_plain(value, path)
    elif not isinstance(obj, _PLAIN):
        raise FileError(f"{path} holds a {type(obj).__name__}; dlrun parameter files hold "
                        f"numpy arrays in plain containers only")
