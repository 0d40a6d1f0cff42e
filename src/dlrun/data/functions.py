"""dataset=custom: a user's function as a dataset source (docs/your-data.md).

`call_source` imports `dataset.target` (MODULE:FN or an entry point's name; dlrun.config.plugins),
calls it with the node's other keys and turns what it returned into checked `Arrays`: the npz
keys as a dict, a 4-tuple (x_train, y_train, x_test, y_test), or {'train': source, 'test':
source[, 'val': source]} with each source random-access (len() and [i]) or an (x, y) pair.
"""
import numpy as np

from dlrun.config import plugins
from dlrun.data import formats
from dlrun.data.arrays import Arrays, check
from dlrun.errors import DataError


def call_source(target: str, arguments: tuple) -> Arrays:
    fn = plugins.import_target(f"dataset.target={target}", target)
    try:
        out = fn(**dict(arguments))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's function may raise anything
        raise DataError(f"dataset.target={target}: calling it failed ({type(e).__name__}: "
                        f"{plugins.one_line(e)})") from None
    return check(as_arrays(out, target), f"dataset.target={target}")


def as_arrays(out, target: str) -> Arrays:
    """What a dataset function returned -> Arrays: the npz keys, a 4-tuple, or sources."""
    if isinstance(out, tuple) and len(out) == 4:
        return Arrays(*out)
    if isinstance(out, dict) and "train" in out:
        parts = {s: from_source(out[s], f"dataset.target={target} ['{s}']") for s in out}
        val = parts.get("val", (None, None))
        return Arrays(*parts["train"], *parts.get("test", (None, None)), *val,
                      tuple(out.get("class_names", ())))
    if isinstance(out, dict):
        unknown = sorted(set(out) - set(formats.NPZ_KEYS))
        if unknown:
            raise DataError(f"dataset.target={target} returned unknown key(s) {', '.join(unknown)}; "
                            f"return {', '.join(formats.NPZ_KEYS)}")
        return Arrays(out.get("x_train"), out.get("y_train"), out.get("x_test"), out.get("y_test"),
                      out.get("x_val"), out.get("y_val"), tuple(out.get("class_names", ())))
    raise DataError(f"dataset.target={target} returned a {type(out).__name__}; return a dict of "
                    f"arrays (x_train, y_train, x_test, y_test), a 4-tuple of them, or "
                    f"{{'train': source, 'test': source}}")


def from_source(source, label: str) -> tuple[np.ndarray, np.ndarray]:
    """A random-access source (len, [i] -> (image, label) or {'image', 'label'}) as two arrays."""
    if isinstance(source, (list, tuple)) and len(source) == 2 and hasattr(source[0], "shape"):
        return source  # (x, y) arrays
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise DataError(f"{label} is a {type(source).__name__}, not a random-access source "
                        f"(len() and [i])")
    images, labels = [], []
    for i in range(len(source)):
        record = source[i]
        image, label_ = (record["image"], record["label"]) if isinstance(record, dict) else record
        images.append(np.asarray(image))
        labels.append(label_)
    if not images:
        raise DataError(f"{label} is empty")
    return np.stack(images), np.asarray(labels)
