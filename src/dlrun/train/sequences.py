"""The end of an RNN-RBM run (model=rnnrbm): the paper's figures on the test split, and music.

`sequence_report` computes, from the final parameters:
  test_nll     the negative log-likelihood per frame, -log P(v_t | v_<t) averaged over every
               real frame of the test pieces (nats), each frame's RBM partition function
               estimated by annealed importance sampling (model.ais_runs, model.ais_betas);
               the paper's Table 1 reports the log-likelihood, its negative (JSB: -6.27)
  test_acc     the expected frame-level accuracy TP / (TP + FP + FN) pooled over every test
               frame (the paper's ACC), each pitch predicted on with the probability of its
               mean-field marginal given the frames before it
and writes `model.samples` generated sequences (DLT's generation) as MIDI files
(<run dir>/samples/sample_<i>.mid) and, with plots, a picture of them beside the first test
piece (piano_rolls.png). It goes into summary.json under "sequences".
"""
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dlrun.data import music
from dlrun.models.rnnrbm import (RnnRbm, ais_log_partition, frame_biases, free_energy, generate,
                                 predict_logits)
from dlrun.runs import layout
from dlrun.runs.atomic import atomic_write_bytes
from dlrun.train.setup import Setup

log = logging.getLogger("dlrun")

FRAMES_PER_CALL = 1024  # frames per AIS call: memory ~ frames x runs x (P + H) floats


def real_frames(params: dict, x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    """(v, bv_t, bh_t) of every real frame of sequences x (N, T, P, 1): (F, P), (F, P), (F, H)."""
    v = x[..., 0]
    bv, bh = jax.jit(frame_biases)(params, jnp.asarray(v))
    real = np.arange(x.shape[1])[None] < lengths[:, None]  # (N, T)
    return v[real], np.asarray(bv)[real], np.asarray(bh)[real]


def frame_log_likelihoods(params: dict, v: np.ndarray, bv: np.ndarray, bh: np.ndarray,
                          key: jax.Array, runs: int, betas: int) -> np.ndarray:
    """log P(v_t | v_<t) = -F(v_t) - log Z_t of frames given their biases (F,), Z_t by AIS in
    chunks of at most FRAMES_PER_CALL frames (the last padded, so one program serves all)."""
    w = params["W"]

    @jax.jit
    def chunk(k, v, bv, bh):
        return -free_energy(v, w, bv, bh) - ais_log_partition(k, w, bv, bh, runs, betas)

    n, out = len(v), []
    size = min(FRAMES_PER_CALL, n)
    for i, s in enumerate(range(0, n, size)):
        rows = np.minimum(np.arange(s, s + size), n - 1)
        ll = chunk(jax.random.fold_in(key, i), v[rows], bv[rows], bh[rows])
        out.append(np.asarray(ll)[:min(size, n - s)])
    return np.concatenate(out)


def test_figures(model: RnnRbm, variables: dict, x: np.ndarray, lengths: np.ndarray,
                 key: jax.Array) -> dict:
    """test_nll and test_acc (module docstring) of sequences x (N, T, P, 1) with real lengths."""
    params = variables["params"]
    v, bv, bh = real_frames(params, x, lengths)
    ll = frame_log_likelihoods(params, v, bv, bh, key, model.ais_runs, model.ais_betas)
    q = np.asarray(jax.nn.sigmoid(jax.jit(predict_logits, static_argnums=3)(
        params["W"], bv, bh, model.mean_field)), np.float64)
    tp, fp, fn = (float(np.sum(a)) for a in (q * v, q * (1 - v), (1 - q) * v))
    return {"test_nll": float(-ll.mean()), "test_acc": tp / max(tp + fp + fn, 1.0),
            "test_frames": int(len(v)), "test_pieces": int(len(x)),
            "ais": {"runs": model.ais_runs, "betas": model.ais_betas}}


def write_samples(run_dir: Path, rolls: np.ndarray, low: int, step: float) -> list[str]:
    """Each generated roll (frames, P) as <run dir>/samples/sample_<i>.mid; their names."""
    names = []
    for i, roll in enumerate(rolls, 1):
        name = f"{layout.MIDI_SAMPLES}/sample_{i}.mid"
        atomic_write_bytes(run_dir / name, music.midi_bytes(roll, low, step))
        names.append(name)
    return names


def sequence_report(setup: Setup, variables: dict, splits: dict, run_dir: Path, seed: int,
                    plots: bool) -> dict:
    """summary.json's "sequences": the test figures, the generated MIDI files and the picture."""
    t0 = time.perf_counter()
    model, ds, test = setup.model, setup.dataset, splits["test"]
    key = jax.random.fold_in(jax.random.key(seed), 7)
    x, lengths = np.asarray(test.x[:test.n]), np.asarray(test.y[:test.n])
    report = test_figures(model, variables, x, lengths, key)
    files = []
    if model.samples:
        rolls = np.asarray(jax.jit(generate, static_argnums=(2, 3, 4))(
            variables["params"], jax.random.fold_in(key, 1), model.samples, model.generate_frames,
            model.generate_steps))
        files = write_samples(run_dir, rolls, ds.low, ds.step)
        if plots:
            from dlrun.runs import pictures
            pictures.piano_rolls(run_dir / layout.PIANO_ROLLS, rolls, x[0, :lengths[0], :, 0], ds.low)
            files.append(layout.PIANO_ROLLS)
    report.update(files=files, seconds=time.perf_counter() - t0)
    log.info("test: %.3f nats per frame (AIS, %d runs x %d betas), frame accuracy %.2f%% over %d "
             "frames; %s (%.1fs)", report["test_nll"], model.ais_runs, model.ais_betas,
             100 * report["test_acc"], report["test_frames"], ", ".join(files) or "no samples",
             report["seconds"])
    return report
