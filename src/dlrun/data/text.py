"""Text classification data: the aclImdb layout and plain folders of text files, read into padded
token ids with a vocabulary built on the training split (DLT's code/imdb_preprocess.py and
imdb.py, the data of its LSTM tutorial).

Layouts (the folder is only ever read):
  imdb         root/{train,test}/{neg,pos}/*.txt: the Large Movie Review Dataset (aclImdb)
               as distributed; labels neg = 0, pos = 1 (as DLT); train/unsup and the other
               files are ignored
  text_folder  root/{train,test[,val]}/<class>/<file>: one example per file, the class names
               the folder names (sorted), as an image folder; every file not starting with "."

Tokens: a text's first line (first_line, as DLT: aclImdb reviews are one line) or all of it,
decoded as UTF-8 (undecodable bytes replaced), `<br />` tags made spaces, lowercased
(lowercase), split by TOKEN into words (letters, with inner apostrophes: "don't"), numbers and
single punctuation marks. DLT ran Moses' tokenizer.perl and split on whitespace; this regex
is the stand-in (it keeps "don't" whole where Moses gives "don 't").

Vocabulary: the tokens of every text under train/ (before any is held out for validation, as
DLT counted them), sorted by count, most frequent first, ties alphabetically (DLT's order of
ties was arbitrary); the word of rank r (0-based) gets id r + 2, 0 is padding and 1 unknown,
and only ids below vocab_size are kept (DLT's n_words): every other word becomes 1.

Encoding: each text's ids, padded with 0 at the end to maxlen, the extra tokens cut (long:
truncate); long: drop leaves the training texts of maxlen tokens or more out (DLT's
`len(x) < maxlen` filter), the held-out splits being truncated either way (DLT evaluated them at
full length, which one (N, maxlen) array cannot hold). The training texts are put in a fixed
random order (SPLIT_SEED) so that a validation split drawn from them (val_fraction, DLT's
valid_portion, or the common val_size) holds both classes.

What is read is cached like an image folder's decoding: <cache>/text/<key>/ holds the ids, the
labels and vocab.json, keyed by the settings and every file's name, size and modification
time. Reading 50,000 made-up reviews of 230 words (examples/make_reviews.py) took 14 s on 2
busy cores; loading them from the cache 0.6-0.8 s (listing and stat-ing the 50,000 files).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dlrun.data import formats
from dlrun.data.arrays import Arrays, check
from dlrun.errors import DataError, FileError
from dlrun.runs import layout
from dlrun.runs.atomic import atomic_write_text

PAD, UNK = 0, 1  # reserved ids: padding (masked out by the model) and unknown words
FIRST_ID = 2  # the id of the most frequent word
TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+|[^\w\s]")  # words, numbers, punctuation marks
BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)  # IMDB's line breaks
IMDB_CLASSES = ("neg", "pos")  # label 0, 1
SPLIT_SEED = 123  # the training texts' fixed order (DLT's SEED)
CACHE_FORMAT = 1  # bump when the cached layout changes: old caches are then not reused
LONG = ("truncate", "drop")


@dataclass(frozen=True)
class TextSettings:
    """How texts become ids: the `dataset` keys of dlrun.data.catalog.TextFolderConfig."""

    vocab_size: int
    maxlen: int
    long: str
    lowercase: bool
    first_line: bool
    val_fraction: float

    def as_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "maxlen": self.maxlen, "long": self.long,
                "lowercase": self.lowercase, "first_line": self.first_line,
                "val_fraction": self.val_fraction}


# ---- tokens ------------------------------------------------------------------------------------
def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """A text's tokens: `<br />` as a space, lowercased, words / numbers / punctuation marks."""
    text = BREAK.sub(" ", text)
    return TOKEN.findall(text.lower() if lowercase else text)


def read_text(path: Path, first_line: bool) -> str:
    """The text of one example file (its first line only with first_line)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    return text.split("\n", 1)[0] if first_line else text


# ---- vocabulary --------------------------------------------------------------------------------
def count_words(texts: list[list[str]]) -> list[tuple[str, int]]:
    """(word, count) of every distinct token, most frequent first, ties alphabetically."""
    counts = Counter(token for tokens in texts for token in tokens)
    return sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))


def vocabulary(ranked: list[tuple[str, int]], vocab_size: int) -> dict[str, int]:
    """word -> id for the words whose id (rank + 2) is below vocab_size."""
    return {word: FIRST_ID + r for r, (word, _) in enumerate(ranked[:max(0, vocab_size - FIRST_ID)])}


def encode(tokens: list[str], ids: dict[str, int], maxlen: int) -> np.ndarray:
    """(maxlen,) int32: the tokens' ids (UNK for other words), cut to maxlen, padded with PAD."""
    row = np.full((maxlen,), PAD, np.int32)
    kept = [ids.get(t, UNK) for t in tokens[:maxlen]]
    row[:len(kept)] = kept
    return row


def vocab_record(ranked: list[tuple[str, int]], settings: TextSettings) -> dict:
    """What vocab.json holds: the kept words in id order (id = index + 2), their training
    counts, and how texts were turned into ids (enough to encode a new text as training did)."""
    kept = ranked[:max(0, settings.vocab_size - FIRST_ID)]
    return {"pad": PAD, "unk": UNK, "first_id": FIRST_ID, "tokenizer": TOKEN.pattern,
            **settings.as_dict(), "words": [w for w, _ in kept], "counts": [c for _, c in kept]}


def ids_of(record: dict) -> dict[str, int]:
    """word -> id of a vocab.json record."""
    return {w: record["first_id"] + i for i, w in enumerate(record["words"])}


def encoder(record: dict) -> Callable[[str], np.ndarray]:
    """text -> (maxlen,) ids, tokenised and encoded as the run that saved `record` did."""
    ids = ids_of(record)

    def encode_one(text: str) -> np.ndarray:
        if record["first_line"]:
            text = text.split("\n", 1)[0]
        return encode(tokenize(text, record["lowercase"]), ids, record["maxlen"])

    return encode_one


def encode_text(text: str, record: dict) -> np.ndarray:
    """(maxlen,) ids of one new text (encoder(record)(text))."""
    return encoder(record)(text)


# ---- the layouts -------------------------------------------------------------------------------
def list_texts(root: Path, classes: Optional[tuple[str, ...]]) -> dict[str, dict[str, list[Path]]]:
    """{split: {class: files}} of root/{train,test[,val]}/<class>/; `classes` fixed (imdb: its
    *.txt in neg/ and pos/) or None (every non-hidden file of every class folder)."""
    hint = f" ({', '.join(c + '/*.txt' for c in classes)})" if classes else ""
    return formats.list_split_folders(root, "text files", "<file>",
                                      lambda folder: class_files(folder, classes), hint)


def class_files(folder: Path, classes: Optional[tuple[str, ...]]) -> dict[str, list[Path]]:
    if classes:
        missing = [c for c in classes if not (folder / c).is_dir()]
        if missing:
            raise DataError(f"{folder} has no {', '.join(m + '/' for m in missing)} folder; the "
                            f"aclImdb layout has {' and '.join(c + '/' for c in classes)} in train/ "
                            f"and test/ (for other classes use dataset=text_folder)")
        return {c: files_in(folder / c, ".txt") for c in classes}
    by_class = {d.name: files_in(d) for d in sorted(folder.iterdir())
                if d.is_dir() and not d.name.startswith(".")}
    return {c: ps for c, ps in by_class.items() if ps}


def files_in(folder: Path, suffix: str = "") -> list[Path]:
    """The files in `folder` (not starting with "."; ending with `suffix`), sorted by name
    (os.scandir: pathlib's globbing takes seconds for aclImdb's 50,000 files)."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith(".")
                       and e.name.endswith(suffix))
    return [folder / name for name in names]


def check_classes(root: Path, listing: dict) -> list[str]:
    """The class names (train/'s folders, sorted); DataError for an empty class or a held-out
    split with a class train/ lacks."""
    classes = sorted(listing["train"])
    for split, by_class in listing.items():
        extra = sorted(set(by_class) - set(classes))
        if extra:
            raise DataError(f"{root}/{split} has class folder(s) {', '.join(extra)} that "
                            f"{root}/train lacks; every class needs training texts")
        empty = [c for c, ps in by_class.items() if not ps]
        if empty:
            raise DataError(f"{root}/{split}/{empty[0]} holds no text files; every class needs "
                            f"examples in every split")
    if len(classes) < 2:
        raise DataError(f"{root}/train holds one class folder ({classes[0]}); a classifier needs "
                        f"at least two")
    return classes


# ---- reading -----------------------------------------------------------------------------------
def read_split(by_class: dict[str, list[Path]], classes: list[str], settings: TextSettings):
    """(tokens per text, labels int32) of one split, in class-folder then file-name order."""
    tokens, labels = [], []
    for c, paths in by_class.items():
        for p in paths:
            tokens.append(tokenize(read_text(p, settings.first_line), settings.lowercase))
            labels.append(classes.index(c))
    return tokens, np.asarray(labels, np.int32)


def encode_split(tokens: list[list[str]], labels: np.ndarray, ids: dict[str, int],
                 maxlen: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([encode(t, ids, maxlen) for t in tokens]) if tokens else np.zeros((0, maxlen), np.int32)
    return x, labels


def training_split(tokens: list[list[str]], labels: np.ndarray, settings: TextSettings,
                   root: Path) -> tuple[list[list[str]], np.ndarray]:
    """The training texts in their fixed random order, the long ones left out with long=drop."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(tokens))
    tokens, labels = [tokens[i] for i in order], labels[order]
    if settings.long == "drop":
        keep = [i for i, t in enumerate(tokens) if len(t) < settings.maxlen]
        if not keep:
            raise DataError(f"{root}/train: every text has {settings.maxlen} tokens or more, and "
                            f"dataset.long=drop leaves them out; raise dataset.maxlen or use "
                            f"dataset.long=truncate")
        tokens, labels = [tokens[i] for i in keep], labels[keep]
    return tokens, labels


def read_corpus(root: Path, listing: dict, settings: TextSettings
                ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], dict]:
    """({split: (ids (N, maxlen) int32, labels (N,) int32)}, class names, vocab.json record) of
    the files list_texts found."""
    names = check_classes(root, listing)
    read = {split: read_split(by_class, names, settings) for split, by_class in listing.items()}
    ranked = count_words(read["train"][0])
    ids = vocabulary(ranked, settings.vocab_size)
    train = training_split(*read["train"], settings, root)
    parts = {"train": encode_split(*train, ids, settings.maxlen)}
    if "val" in read:
        if settings.val_fraction:
            raise DataError(f"{root} has a val/ folder and dataset.val_fraction is "
                            f"{settings.val_fraction}; set dataset.val_fraction=0 to use the folder")
        parts["val"] = encode_split(*read["val"], ids, settings.maxlen)
    elif settings.val_fraction:
        parts = hold_out(parts["train"], settings.val_fraction, root)
    parts["test"] = encode_split(*read["test"], ids, settings.maxlen)
    return parts, names, vocab_record(ranked, settings)


def hold_out(train: tuple[np.ndarray, np.ndarray], fraction: float, root: Path) -> dict:
    """The last `fraction` of the (shuffled) training texts as the val split (DLT's
    valid_portion: n_train = round(n * (1 - fraction)))."""
    x, y = train
    n_train = int(round(len(x) * (1.0 - fraction)))
    if not 0 < n_train < len(x):
        raise DataError(f"{root}/train: dataset.val_fraction={fraction} of {len(x)} training "
                        f"texts leaves no training or no validation text")
    return {"train": (x[:n_train], y[:n_train]), "val": (x[n_train:], y[n_train:])}


# ---- the cache ---------------------------------------------------------------------------------
def read_text_folder(root: str, classes: Optional[tuple[str, ...]], settings: TextSettings,
                     cache_dir: Path) -> tuple[Arrays, dict]:
    """(the checked Arrays of token ids, the vocab.json record) of the folder, read once into
    the cache (module docstring) and loaded from it afterwards (memory-mapped)."""
    root_path = Path(root).expanduser()
    listing = list_texts(root_path, classes)
    stats = [file_stat(p, root_path) for by_class in listing.values()
             for paths in by_class.values() for p in paths]
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, list(classes or ()), settings.as_dict(),
                                     stats]).encode()).hexdigest()[:20]
    where = cache_dir / "text" / key
    if not (where / layout.VOCAB).is_file():
        logging.getLogger("dlrun").info("reading %d texts under %s once (cached in %s)",
                                        len(stats), root_path, where)
        write_cache(where, *read_corpus(root_path, listing, settings))
    record = json.loads((where / layout.VOCAB).read_text(encoding="utf-8"))
    done = json.loads((where / "done.json").read_text())
    parts = {s: (np.load(where / f"x_{s}.npy", mmap_mode="r"), np.load(where / f"y_{s}.npy"))
             for s in done["splits"]}
    val = parts.get("val", (None, None))
    provenance = [{"file": "text_folder", "path": str(root_path.resolve()), "texts": len(stats),
                   "cache": str(where), "key": key}]
    vocab = FIRST_ID + len(record["words"])
    arrays = Arrays(*parts["train"], *parts["test"], *val, tuple(done["classes"]),
                    len(done["classes"]), provenance, vocab_size=vocab)
    return check(arrays, str(root_path)), record


def file_stat(path: Path, root: Path) -> tuple[str, int, int]:
    """(path relative to root, size, mtime): what the cache key holds of each file."""
    st = os.stat(path)
    return str(path)[len(str(root)) + 1:], st.st_size, st.st_mtime_ns


def folder_stamp(root: Path) -> tuple:
    """The modification times of root's split and class folders: they change when a file is
    added, removed or renamed (what one process rereads the folder for)."""
    if not root.is_dir():
        return ()
    dirs = [root] + [d for s in ("train", "val", "test") if (root / s).is_dir()
                     for d in [root / s, *sorted((root / s).iterdir())] if d.is_dir()]
    return tuple((str(d), d.stat().st_mtime_ns) for d in dirs)


def write_cache(where: Path, parts: dict, classes: list[str], record: dict) -> None:
    """The splits' ids and labels, vocab.json and done.json into a temporary directory renamed
    into place, so a cache is complete or absent."""
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}-", dir=where.parent))
    try:
        for split, (x, y) in parts.items():
            np.save(tmp / f"x_{split}.npy", x)
            np.save(tmp / f"y_{split}.npy", y)
        (tmp / layout.VOCAB).write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        (tmp / "done.json").write_text(json.dumps({"splits": list(parts), "classes": classes}))
        try:
            os.rename(tmp, where)
        except OSError:  # another process finished the same cache first
            if not (where / layout.VOCAB).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---- the run directory -------------------------------------------------------------------------
def save_vocabulary(run_dir: Path, record: dict) -> None:
    """Write <run dir>/vocab.json, atomically."""
    atomic_write_text(Path(run_dir) / layout.VOCAB, json.dumps(record, ensure_ascii=False) + "\n")


def check_vocabulary(run_dir: Path, record: dict, what: str) -> None:
    """FileError unless the run's vocab.json is `record` (the texts changed since it trained);
    `what` (e.g. "resuming it") is what needs it."""
    path = Path(run_dir) / layout.VOCAB
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FileError(f"{path}: cannot read the run's vocabulary ({e}); {what} needs it") from None
    if saved != record:
        raise FileError(f"the texts under dataset.root give another vocabulary than the run's "
                        f"{path} (the folder or the settings changed since it trained); {what} "
                        f"needs the texts it was trained on")
