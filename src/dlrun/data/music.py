"""Polyphonic music as binary piano rolls: the Bach chorales inside music21's wheel (JSB Chorales).

The RNN-RBM paper (Boulanger-Lewandowski, Bengio & Vincent, ICML 2012) evaluates on JSB Chorales,
Bach's four-part chorales as piano rolls over the 88 piano keys (MIDI 21..108); the published
files use a quarter-note step (docs/music.md: which step the paper's figures used). music21 ships those chorales in MusicXML (`corpus.chorales.Iterator`: 371 of them);
`read_chorales` parses them once, turns each into a piano roll and caches the rolls under the
dlrun cache directory, so later runs read one .npz (about 0.1 s instead of about a minute).

A roll is (frames, pitches) uint8: frame t is on for a pitch when a note of that pitch sounds
at time t * step quarter notes (onset <= t * step < onset + duration), the rule of DLT's
`midiread` (`roll[ceil(on/dt):ceil(off/dt)] = 1`) and of the published JSB files.

The split is by piece and fixed: the pieces sorted by the SHA-1 of their names, the first 60 %
train, the next 20 % validation, the rest test (the paper's split: 229/76/77 of 382 pieces;
music21's 371 give 223/74/74). `split_rows` turns pieces into the rows dlrun trains on: each
row a sequence padded with silent frames, its label the number of real frames.

`write_midi` writes a roll as a standard MIDI file (format 0, one track), for the generated
sequences of model=rnnrbm.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dlrun.data.arrays import Arrays
from dlrun.data.download import one_line
from dlrun.data.formats import progress
from dlrun.errors import DataError

log = logging.getLogger("dlrun")

CACHE_FORMAT = 2  # bump when the cached layout changes: old caches are then not reused
SPLIT_FRACTIONS = (0.6, 0.2)  # train, validation; the rest is test
TICKS_PER_QUARTER = 480
MIDI_PITCHES = 128


# ---- notes -> rolls ----------------------------------------------------------------------------
def piano_roll(notes: Sequence[tuple[float, float, int]], step: float) -> np.ndarray:
    """(onset, duration, midi pitch) in quarter notes -> (frames, 128) uint8 roll at `step`
    quarter notes per frame; frames = ceil(end / step)."""
    end = max((on + dur for on, dur, _ in notes), default=0.0)
    roll = np.zeros((math.ceil(end / step - 1e-9), MIDI_PITCHES), np.uint8)
    for on, dur, pitch in notes:
        first, stop = math.ceil(on / step - 1e-9), math.ceil((on + dur) / step - 1e-9)
        roll[first:stop, pitch] = 1
    return roll


def chorale_notes(name: str) -> tuple[list[tuple[float, float, int]], int]:
    """The notes of music21's chorale `name` as (onset, duration, midi) in quarter notes, ties
    merged, onsets from the first sounded note; and its tonic's pitch class (0 = C), from
    music21's key analysis (Krumhansl-Schmuckler)."""
    from music21 import corpus
    score = corpus.parse(name).stripTies()
    notes = [(float(n.offset), float(n.quarterLength), int(p.midi))
             for n in score.flatten().notes for p in n.pitches]
    return notes, int(score.analyze("key").tonic.pitchClass)


def to_c(roll: np.ndarray, tonic: int) -> np.ndarray:
    """A (frames, 128) roll moved by the fewest semitones (-6..+5) that bring its tonic to C:
    C major or C minor."""
    shift = (-tonic + 6) % 12 - 6
    out = np.zeros_like(roll)
    if shift >= 0:
        out[:, shift:] = roll[:, :roll.shape[1] - shift]
    else:
        out[:, :shift] = roll[:, -shift:]
    return out


def chorale_names() -> list[str]:
    """The chorales music21 ships, in its (Riemenschneider) order: 'bach/bwv269', ..."""
    try:
        from music21 import corpus
    except ImportError:
        raise DataError("dataset=chorales reads the Bach chorales with music21, which is not "
                        "installed; pip install -e '.[music]' (make test installs it)") from None
    return list(corpus.chorales.Iterator(returnType="filename"))


# ---- the cache ---------------------------------------------------------------------------------
def read_chorales(step: float, pieces: Optional[int],
                  cache_dir: Path) -> tuple[list[str], list[np.ndarray], np.ndarray, dict]:
    """(names, rolls (frames, 128) uint8, tonics (pitch classes), provenance) of the first
    `pieces` chorales (None: all), parsed once with music21, then read from
    cache_dir/chorales/<key>.npz."""
    names = chorale_names()[:pieces]
    import music21
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, music21.__version__, step, names]).encode()
                         ).hexdigest()[:20]
    path = cache_dir / "chorales" / f"{key}.npz"
    record = {"file": "chorales", "source": f"music21 {music21.__version__} corpus (bach)",
              "pieces": len(names), "cache": str(path), "key": key}
    if path.is_file():
        with np.load(path) as z:
            return names, np.split(z["frames"], z["offsets"][1:-1]), z["tonics"], record
    rolls, tonics = parse_all(names, step)
    write_cache(path, rolls, tonics)
    return names, rolls, tonics, record


def parse_all(names: list[str], step: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Every chorale's roll and tonic, with a progress line (about 0.15 s a piece)."""
    log.info("chorales: reading %d pieces with music21 (once; then cached)", len(names))
    t0, rolls, tonics = time.perf_counter(), [], []
    for i, name in enumerate(names):
        try:
            notes, tonic = chorale_notes(name)
            rolls.append(piano_roll(notes, step))
            tonics.append(tonic)
        except Exception as e:  # noqa: BLE001 - music21 raises many kinds on a bad score
            raise DataError(f"chorales: music21 could not read {name} ({type(e).__name__}: "
                            f"{one_line(e)})") from None
        progress(i + 1, len(names), t0, "reading chorales")
    return rolls, np.array(tonics, np.int8)


def write_cache(path: Path, rolls: list[np.ndarray], tonics: np.ndarray) -> None:
    """All rolls in one .npz (frames concatenated, offsets, tonics), written to a temporary file and
    renamed into place: complete or absent. The cache is dlrun's, never a user's file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + [len(r) for r in rolls])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, frames=np.concatenate(rolls), offsets=offsets, tonics=tonics)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---- splits and rows ---------------------------------------------------------------------------
def split_by_piece(names: Sequence[str]) -> dict[str, list[int]]:
    """{'train', 'val', 'test'}: indices into names, fixed by the names alone (sorted by SHA-1;
    60 / 20 / 20 %, at least one piece in each held-out split when there are three pieces)."""
    order = sorted(range(len(names)), key=lambda i: hashlib.sha1(names[i].encode()).hexdigest())
    n = len(order)
    held = max(1, round(SPLIT_FRACTIONS[1] * n)) if n >= 3 else 0  # val and test each
    n_train = n - 2 * held
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + held]),
            "test": sorted(order[n_train + held:])}


def chunks(roll: np.ndarray, length: int) -> list[np.ndarray]:
    """A roll cut into consecutive pieces of at most `length` frames (0: the whole roll), as
    DLT's rnnrbm.py trains: one update per chunk of <= 100 frames, the RNN restarted each."""
    if length <= 0:
        return [roll]
    return [roll[s:s + length] for s in range(0, len(roll), length)]


def as_rows(rolls: Sequence[np.ndarray], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Rolls (t_i, P) -> x (N, frames, P, 1) float32 0/1, padded with silent frames, and
    y (N,) int32 = each row's real length t_i."""
    x = np.zeros((len(rolls), frames, rolls[0].shape[1], 1), np.float32)
    for i, r in enumerate(rolls):
        x[i, :len(r), :, 0] = r
    return x, np.array([len(r) for r in rolls], np.int32)


def chorale_arrays(step: float, low: int, high: int, chunk: int, pieces: Optional[int],
                   cache_dir: str, transpose: str = "c") -> Arrays:
    """dataset=chorales: the split pieces as rows over pitches low..high (notes outside that
    range are dropped, with a warning), each moved to C first with transpose="c". Training rows
    are chunks of `chunk` frames (0: whole pieces); validation and test rows are whole pieces,
    padded to the split's longest."""
    names, rolls, tonics, record = read_chorales(step, pieces, Path(cache_dir))
    if transpose == "c":
        rolls = [to_c(r, int(t)) for r, t in zip(rolls, tonics)]
    outside = sum(int(r[:, :low].sum() + r[:, high + 1:].sum()) for r in rolls)
    if outside:
        log.warning("warning: chorales: %d note frames outside MIDI %d..%d dropped (widen "
                    "dataset.low/high to keep them)", outside, low, high)
    rolls = [r[:, low:high + 1] for r in rolls]
    parts = split_by_piece(names)
    train = [c for i in parts["train"] for c in chunks(rolls[i], chunk)]
    rows = {"train": as_rows(train, max(len(r) for r in train))}
    for split in ("val", "test"):
        held = [rolls[i] for i in parts[split]]
        rows[split] = as_rows(held, max(len(r) for r in held))
    record = {**record, "step_quarter_notes": step, "pitches": [low, high], "transpose": transpose,
              "pieces_per_split": {k: len(v) for k, v in parts.items()},
              "test_pieces": [names[i] for i in parts["test"]]}
    return Arrays(*rows["train"], *rows["test"], *rows["val"], num_classes=high - low + 1,
                  files=[record])


# ---- MIDI out ----------------------------------------------------------------------------------
def _vlq(n: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append((n & 0x7F) | 0x80)
    return bytes(reversed(out))


def midi_bytes(roll: np.ndarray, low: int, step: float, velocity: int = 90,
               tempo_us: int = 500_000) -> bytes:
    """A (frames, P) 0/1 roll, column j = MIDI pitch low + j, as a format-0 MIDI file at `step`
    quarter notes per frame (tempo 120 quarter notes per minute). A note starts where its pitch
    turns on and ends where it turns off (DLT's midiwrite)."""
    padded = np.pad(np.asarray(roll, np.int8), ((1, 1), (0, 0)))
    edges = np.diff(padded, axis=0)  # (frames + 1, P): +1 note on, -1 note off
    ticks = round(step * TICKS_PER_QUARTER)
    events = sorted((t * ticks, int(e > 0), low + p) for t, p in zip(*np.nonzero(edges))
                    for e in [edges[t, p]])  # offs (0) before ons (1) at the same tick
    track, now = bytearray(b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big")), 0
    for tick, on, pitch in events:
        track += _vlq(tick - now) + bytes([0x90 if on else 0x80, pitch, velocity if on else 0])
        now = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_QUARTER)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)
