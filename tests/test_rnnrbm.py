"""The RNN-RBM on Bach's chorales (issue 18): piano rolls from music21's scores, the split by
piece, MIDI out, annealed importance sampling against an exact partition function, the model's
masking and causality, training through the usual loop (resume included) and the CLI."""
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import music21  # the music extra; make test installs it (a missing extra fails, never skips)
import pytest

from dlrun import models, train
from dlrun.config.registry import build
from dlrun.data import music
from dlrun.errors import ConfigError, FileError
from dlrun.models.objectives import OBJECTIVES
from dlrun.models.rnnrbm import ais_log_partition, free_energy, frame_biases, generate
from dlrun.train import sequences
from conftest import describe, run_dirs
from _config import compose

PIECES = 12  # chorales in the quick runs (about 1 s to parse, then cached for the session)


def make(**kw):
    return build("model", models.MODELS, {"name": "rnnrbm", **kw}, num_classes=88, dropout={},
                 input_shape=(16, 88, 1))


# ---- rolls, split, MIDI ------------------------------------------------------------------------
def test_piano_roll_marks_the_pitches_sounding_at_each_step():
    notes = [(0.0, 1.0, 60), (0.5, 1.0, 62), (2.0, 0.5, 64), (0.0, 3.0, 48)]
    roll = music.piano_roll(notes, 1.0)
    assert roll.shape == (3, 128)
    assert [sorted(np.nonzero(f)[0]) for f in roll] == [[48, 60], [48, 62], [48, 64]]
    eighth = music.piano_roll(notes, 0.5)  # a finer step catches the off-beat onset
    assert eighth.shape == (6, 128) and eighth[1, 62] == 1 and eighth[1, 60] == 1 and eighth[3, 62] == 0


def test_split_is_by_piece_fixed_and_disjoint():
    names = [f"bach/bwv{i}" for i in range(371)]
    parts = music.split_by_piece(names)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [223, 74, 74]
    assert sorted(itertools.chain(*parts.values())) == list(range(371))
    assert music.split_by_piece(list(reversed(names)))["test"] == sorted(
        370 - i for i in parts["test"])  # by name, not by position
    small = music.split_by_piece(names[:3])
    assert all(len(small[s]) == 1 for s in small)


def test_transposing_to_c_moves_the_tonic_by_the_fewest_semitones():
    roll = np.zeros((2, 128), np.uint8)
    roll[0, [67, 71, 74]] = 1  # a G major chord
    roll[1, [69, 72, 76]] = 1  # A minor
    assert list(np.nonzero(music.to_c(roll, 7)[0])[0]) == [72, 76, 79]  # up 5: C major
    assert list(np.nonzero(music.to_c(roll, 9)[1])[0]) == [72, 75, 79]  # up 3: C minor
    assert list(np.nonzero(music.to_c(roll, 2)[0])[0]) == [65, 69, 72]  # D: down 2
    assert np.array_equal(music.to_c(roll, 0), roll)


def test_chunks_and_rows_pad_with_silence_and_label_lengths():
    roll = np.ones((250, 4), np.uint8)
    assert [len(c) for c in music.chunks(roll, 100)] == [100, 100, 50]
    assert len(music.chunks(roll, 0)) == 1
    x, y = music.as_rows(music.chunks(roll, 100), 100)
    assert x.shape == (3, 100, 4, 1) and x.dtype == np.float32 and list(y) == [100, 100, 50]
    assert x[2, 50:].sum() == 0 and x[2, :50].all()


def test_midi_round_trips_through_music21(tmp_path):
    roll = np.zeros((8, 88), np.uint8)
    roll[0:2, 60 - 21] = 1  # middle C for two frames
    roll[1:4, 64 - 21] = 1
    roll[5, 67 - 21] = roll[7, 67 - 21] = 1  # the same pitch twice, apart
    path = tmp_path / "x.mid"
    path.write_bytes(music.midi_bytes(roll, 21, 0.5))
    score = music21.converter.parse(str(path))
    notes = sorted((float(n.offset), float(n.quarterLength), p.midi)
                   for n in score.flatten().notes for p in n.pitches)
    assert notes == [(0.0, 1.0, 60), (0.5, 1.5, 64), (2.5, 0.5, 67), (3.5, 0.5, 67)]
    assert np.array_equal(music.piano_roll(notes, 0.5)[:, 21:109], roll)


def midi_note_ticks(data: bytes) -> list[int]:
    """The ticks of every note event of a MIDI file, as music21's low-level reader reads them."""
    midi = music21.midi.MidiFile()
    midi.readstr(data)
    now, ticks = 0, []
    for event in midi.tracks[0].events:
        if isinstance(event, music21.midi.DeltaTime):
            now += event.time
        elif event.type in (music21.midi.ChannelVoiceMessages.NOTE_ON,
                            music21.midi.ChannelVoiceMessages.NOTE_OFF):
            ticks.append(now)
    return ticks


def test_chorales_are_read_once_then_cached(tmp_path):
    names, rolls, tonics, record = music.read_chorales(1.0, 4, tmp_path)
    assert len(rolls) == 4 and Path(record["cache"]).is_file()
    assert names[0] == "bach/bwv269" and tonics[0] == 7  # G major
    assert all(r.dtype == np.uint8 and r.shape[1] == 128 and 2 <= r.sum(1).max() <= 4 for r in rolls)
    again = music.read_chorales(1.0, 4, tmp_path)[1]  # from the cache: no music21 parse
    assert all(np.array_equal(a, b) for a, b in zip(rolls, again))
    assert [p.name for p in (tmp_path / "chorales").iterdir()] == [Path(record["cache"]).name]


# ---- annealed importance sampling --------------------------------------------------------------
def exact_log_z(w, bv, bh):
    v = np.array(list(itertools.product([0.0, 1.0], repeat=w.shape[0])), np.float32)
    return float(jax.nn.logsumexp(-free_energy(v, w, bv, bh)))


def test_ais_estimates_the_partition_function():
    rng = np.random.RandomState(0)
    w = jnp.asarray(0.5 * rng.randn(10, 6), jnp.float32)
    bv = jnp.asarray(rng.randn(3, 10) - 1.0, jnp.float32)
    bh = jnp.asarray(rng.randn(3, 6), jnp.float32)
    exact = [exact_log_z(w, bv[i], bh[i]) for i in range(3)]
    est = ais_log_partition(jax.random.key(0), w, bv, bh, runs=64, betas=500)
    assert np.allclose(est, exact, atol=0.05), (est, exact)
    rough = ais_log_partition(jax.random.key(0), w, bv, bh, runs=4, betas=5)
    assert np.abs(np.asarray(rough) - exact).max() > np.abs(np.asarray(est) - exact).max()


def test_frame_log_likelihoods_are_normalised():
    """exp(log P(v | biases)) summed over every frame of 8 pitches is 1 (AIS close enough)."""
    rng = np.random.RandomState(1)
    p = {"W": jnp.asarray(rng.randn(8, 5), jnp.float32)}
    bv, bh = np.tile(rng.randn(1, 8), (256, 1)), np.tile(rng.randn(1, 5), (256, 1))
    v = np.array(list(itertools.product([0.0, 1.0], repeat=8)), np.float32)
    ll = sequences.frame_log_likelihoods(p, v, bv.astype(np.float32), bh.astype(np.float32),
                                         jax.random.key(0), 64, 300)
    assert abs(float(jax.nn.logsumexp(ll)) - 0.0) < 0.05


# ---- the model ---------------------------------------------------------------------------------
def test_model_layout_metrics_and_mask():
    model = make(hidden=20, recurrent=10, k=2)
    x = (np.random.RandomState(0).rand(3, 16, 88, 1) < 0.05).astype(np.float32)
    variables = model.init({"params": jax.random.key(0)}, x)
    shapes = jax.tree.map(np.shape, variables["params"])
    assert shapes == {"W": (88, 20), "bv": (88,), "bh": (20,), "bu": (10,), "Wuh": (10, 20),
                      "Wuv": (10, 88), "Wvu": (88, 10), "Wuu": (10, 10)}
    out = model.apply(variables, x)
    assert set(out) == {"gap", "xent", "tp", "fp", "fn"} and out["xent"].shape == (3, 16)
    assert not np.asarray(out["gap"]).any()  # no Gibbs chain in evaluation
    objective = OBJECTIVES["rnnrbm"]
    y = jnp.array([16, 9, -1])
    loss, metrics = objective.per_example(model, out, y)
    assert metrics.shape == (2, 3) and float(metrics[0, 2]) == 0.0  # a padding row counts nothing
    # frames after a row's end change nothing of its metrics (the labels are lengths)
    noisy = x.copy()
    noisy[1, 9:] = 1.0
    _, again = objective.per_example(model, model.apply(variables, noisy), y)
    assert np.allclose(again[:, 1], metrics[:, 1]) and np.allclose(again[:, 0], metrics[:, 0])


def test_the_rnn_is_causal_and_the_cd_gradient_reaches_it():
    model = make(hidden=20, recurrent=10, k=1, rnn_init_std=0.1)
    x = (np.random.RandomState(0).rand(2, 16, 88, 1) < 0.05).astype(np.float32)
    params = model.init({"params": jax.random.key(0)}, x)["params"]
    bv, _ = frame_biases(params, jnp.asarray(x[..., 0]))
    later = x.copy()
    later[:, 10:] = 1.0 - later[:, 10:]
    bv2, _ = frame_biases(params, jnp.asarray(later[..., 0]))
    assert np.allclose(bv[:, :11], bv2[:, :11]) and not np.allclose(bv[:, 11:], bv2[:, 11:])

    def loss(p):
        out = model.apply({"params": p}, x, train=True, rngs={"sample": jax.random.key(1)})
        return jnp.mean(OBJECTIVES["rnnrbm"].per_example(model, out, jnp.array([16, 12]))[0])

    grads = jax.grad(loss)(params)
    assert all(float(jnp.abs(grads[k]).sum()) > 0 for k in ("W", "bv", "bh", "Wuv", "Wuh", "Wvu", "Wuu"))


def test_generation_is_binary_seeded_and_of_the_asked_length():
    model = make(hidden=20, recurrent=10)
    params = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 16, 88, 1)))["params"]
    rolls = generate(params, jax.random.key(3), 2, 30, 5)
    assert rolls.shape == (2, 30, 88) and set(np.unique(rolls)) <= {0.0, 1.0}
    assert np.array_equal(rolls, generate(params, jax.random.key(3), 2, 30, 5))
    assert not np.array_equal(rolls[0], rolls[1])


@pytest.mark.parametrize("override,fragment", [
    ("model.k=0", "k and generate_steps"), ("model.hidden=0", "hidden and recurrent must be > 0"),
    ("model.ais_betas=0", "ais_runs and ais_betas"), ("model.mean_field=0", "mean_field"),
    ("dataset.step=0", "step must be > 0"), ("dataset.high=20", "low <= high"),
    ("dataset.chunk=-1", "chunk must be >= 0"), ("dataset.pieces=2", "pieces must be >= 3"),
    ("regularizer=[dropout]", "do not apply to the RNN-RBM"),
])
def test_bad_settings_are_refused_in_one_line(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        train.build_setup(compose("+experiment=dlt_rnnrbm", f"dataset.pieces={PIECES}", override))


def test_rolls_and_the_rnnrbm_go_together():
    with pytest.raises(ConfigError, match="model=rnnrbm models sequences"):
        train.build_setup(compose("model=rnnrbm"))
    with pytest.raises(ConfigError, match="use model=rnnrbm"):
        train.build_setup(compose("dataset=chorales", f"dataset.pieces={PIECES}", "train.batch_size=2"))
    with pytest.raises(ConfigError, match="piano rolls take neither"):
        train.build_setup(compose("+experiment=dlt_rnnrbm", "dataset.augment=[flip]"))


# ---- training ----------------------------------------------------------------------------------
def quick(*extra):
    return compose("+experiment=dlt_rnnrbm", f"dataset.pieces={PIECES}", "train.batch_size=2",
                   "optim.lr=0.05", "model.k=3", "model.hidden=50", "model.recurrent=20",
                   "model.generate_frames=16", "model.generate_steps=3", "model.ais_runs=8",
                   "model.ais_betas=40", "checkpoint.every_epochs=1", *extra)


def test_training_lowers_the_loss_and_writes_the_music(tmp_path):
    summary = train.train_and_evaluate(quick("train.epochs=4", "plots=true"), str(tmp_path / "run"))
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 5  # nats per frame; starts at ~55
    assert 0 <= records[-1]["val_frame_acc"] <= 1
    seq = summary["sequences"]
    assert seq["test_frames"] > 50 and 0 < seq["test_nll"] < records[0]["test_loss"]
    assert seq["files"] == ["samples/sample_1.mid", "samples/sample_2.mid", "piano_rolls.png"]
    ticks = midi_note_ticks((run / "samples" / "sample_1.mid").read_bytes())
    assert ticks and max(ticks) <= 16 * music.TICKS_PER_QUARTER  # 16 frames of a quarter note
    assert (run / "piano_rolls.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "summary.json").read_text())["sequences"]["test_nll"] == seq["test_nll"]
    # the finished run through dlrun-eval (its metrics on the test split) and dlrun-predict (refused)
    from dlrun.cli.eval import evaluate
    from dlrun.cli.inference import Model, load_run
    from dlrun.cli.predict import classify
    metrics, matrix, n = evaluate(Model(load_run(str(run))), "chorales", "test")
    assert n == seq["test_pieces"] and matrix is None
    assert metrics["loss"] == pytest.approx(records[-1]["test_loss"], rel=1e-5)
    with pytest.raises(FileError, match="learnt no labels"):
        classify(str(run), [str(run / "piano_rolls.png")])


def test_a_stopped_run_resumes_bit_for_bit(tmp_path):
    whole = train.train_and_evaluate(quick("train.epochs=3", "model.samples=0"),
                                     str(tmp_path / "whole"))
    train.train_and_evaluate(quick("train.epochs=2", "model.samples=0"), str(tmp_path / "part"))
    resumed = train.train_and_evaluate(quick("train.epochs=3", "model.samples=0"), str(tmp_path / "part"),
                                       train.Context(resume=True))
    assert resumed["final"]["test_loss"] == whole["final"]["test_loss"]
    assert resumed["sequences"]["test_nll"] == whole["sequences"]["test_nll"]


@pytest.mark.smoke
def test_dlt_rnnrbm_from_the_command_line(dlrun):
    proc = dlrun("+experiment=dlt_rnnrbm", f"dataset.pieces={PIECES}", "train.epochs=1",
                 "train.batch_size=4", "model.generate_frames=8", "model.ais_betas=20", timeout=300)
    assert proc.returncode == 0, describe(proc)
    run = run_dirs(proc.stdout)[0]
    assert "nats per frame (AIS" in proc.stderr + proc.stdout
    assert {"sample_1.mid", "sample_2.mid"} == {p.name for p in (run / "samples").iterdir()}
    assert (run / "piano_rolls.png").is_file() and (run / "learning_curves.png").is_file()
