"""A run's config identity: what resume and dlrun-report compare runs by.

Two configs are the same run when they agree on every key but NEUTRAL_KEYS (`config_hash`);
`config_diff` names the keys that differ, for the refusal of a resume.
"""
import hashlib
import json
from typing import Any

# Config keys a resumed run may change: the run length, and keys that never change the numbers.
# `dist` (devices, processes) is neutral: a run may resume on another number of devices; its
# numbers then agree with an uninterrupted run to float rounding (the all-reduce sums in another
# order), not bit for bit.
NEUTRAL_KEYS = ("train.epochs", "train.compile_cache", "checkpoint", "resume", "plots", "dist",
                "progress", "logger")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def is_neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NEUTRAL_KEYS)


def comparable(config: dict) -> dict[str, Any]:
    """The flattened config without the keys a resumed run may change."""
    return {k: v for k, v in flatten(config).items() if not is_neutral(k)}


def config_hash(config: dict) -> str:
    """Identity of a run's config: equal for configs that differ only in NEUTRAL_KEYS."""
    text = json.dumps(comparable(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def difference_rank(key: str, a: dict, b: dict) -> int:
    """What differs first: a chosen option (`model.name`: logreg there, mlp here), then a value
    both configs set, then keys only one has (the other option's settings)."""
    if key.endswith(".name"):
        return 0
    return 1 if key in a and key in b else 2


def config_diff(theirs: dict, ours: dict, limit: int = 4) -> str:
    """'optim.lr (0.1 there, 0.5 here), ...' for the non-neutral keys that differ."""
    a, b = comparable(theirs), comparable(ours)
    keys = sorted((k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")),
                  key=lambda k: (difference_rank(k, a, b), k))
    text = ", ".join(f"{k} ({a.get(k, '<absent>')} there, {b.get(k, '<absent>')} here)"
                     for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
