"""The RNN-RBM (Boulanger-Lewandowski, Bengio & Vincent, ICML 2012; DLT's rnnrbm.py): a sequence
of binary frames (piano-roll time steps) modelled by an RBM per time step whose biases an RNN
sets from the frames before it.

    u_t   = tanh(bu + v_t Wvu + u_{t-1} Wuu),   u_0 = 0
    bv_t  = bv + u_{t-1} Wuv,   bh_t = bh + u_{t-1} Wuh
    P(v_t | v_<t) = the RBM (W, bv_t, bh_t):  F(v) = -v.bv_t - sum_j softplus((v W + bh_t)_j)

Training is DLT's: CD-k at every time step, the Gibbs chain starting at the data frame, and the
gradient of F(v_t) - F(v_t^(k)) with the chain's end held constant, which reaches the RNN
through bv_t and bh_t (backpropagation through time). Input x (B, T, P, 1) 0/1 frames, padded
after each sequence's end; the objective (dlrun.models.objectives, 'rnnrbm') masks the padding
with the row's label, its real length.

Outside the module, for a trained model's parameters: `generate` (DLT's generation: each frame
a Gibbs chain of k steps from silence, fed back to the RNN) and `ais_log_partition` (for the
paper's log-likelihood: each frame's RBM partition function estimated by annealed importance
sampling, Salakhutdinov & Murray 2008; dlrun.train.sequences).
"""
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlrun.config.registry import require


def free_energy(v: jax.Array, w: jax.Array, bv: jax.Array, bh: jax.Array) -> jax.Array:
    """F(v) = -v.bv - sum_j softplus((v W + bh)_j), over the last axis: (..., P) -> (...)."""
    return -jnp.sum(v * bv, -1) - jnp.sum(jax.nn.softplus(v @ w + bh), -1)


def gibbs(key: jax.Array, v: jax.Array, w: jax.Array, bv: jax.Array, bh: jax.Array,
          steps: int) -> jax.Array:
    """`steps` block Gibbs steps v -> h -> v from v (..., P); returns the last visible sample."""
    def step(t, v):
        kh, kv = jax.random.split(jax.random.fold_in(key, t))
        h = jax.random.bernoulli(kh, jax.nn.sigmoid(v @ w + bh)).astype(v.dtype)
        return jax.random.bernoulli(kv, jax.nn.sigmoid(h @ w.T + bv)).astype(v.dtype)
    return jax.lax.fori_loop(0, steps, step, v)


def rnn_step(p: dict, u: jax.Array, v: jax.Array) -> jax.Array:
    """u_t from u_{t-1} (B, U) and the frame v_t (B, P)."""
    return jnp.tanh(p["bu"] + v @ p["Wvu"] + u @ p["Wuu"])


def frame_biases(p: dict, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(bv_t (B, T, P), bh_t (B, T, H)) for frames v (B, T, P): the RNN run over the sequence."""
    def step(u, v_t):
        return rnn_step(p, u, v_t), u  # emits u_{t-1}
    u0 = jnp.zeros((v.shape[0], p["Wuu"].shape[0]), v.dtype)
    _, u_prev = jax.lax.scan(step, u0, jnp.swapaxes(v, 0, 1))  # (T, B, U)
    u_prev = jnp.swapaxes(u_prev, 0, 1)
    return p["bv"] + u_prev @ p["Wuv"], p["bh"] + u_prev @ p["Wuh"]


def predict_logits(w: jax.Array, bv: jax.Array, bh: jax.Array, steps: int) -> jax.Array:
    """Each frame's prediction from its biases alone (no look at the frame): `steps` mean-field
    updates q <- sigmoid(sigmoid(q W + bh) W^T + bv) from q = sigmoid(bv); the logits of q."""
    def step(_, logits):
        return jax.nn.sigmoid(jax.nn.sigmoid(logits) @ w + bh) @ w.T + bv
    return jax.lax.fori_loop(0, steps, step, bv)


class RnnRbm(nn.Module):
    """The RNN-RBM over frames x (B, T, P, 1). Returns per frame (B, T): 'gap' = F(v_t) -
    F(v_t^(k)) (training only; zeros in evaluation), 'xent' = the cross-entropy of v_t under
    the mean-field prediction q (nats), and the expected 'tp', 'fp', 'fn' of the prediction,
    each pitch on with probability q (sum q v, sum q (1 - v), sum (1 - q) v): the paper's
    expected frame-level accuracy TP / (TP + FP + FN) (Bay et al. 2009)."""

    hidden: int
    recurrent: int
    k: int
    mean_field: int
    init_std: float
    rnn_init_std: float
    generate_steps: int = 25  # what the run does at its end (dlrun.train.sequences)
    generate_frames: int = 200
    samples: int = 2
    ais_runs: int = 16
    ais_betas: int = 100
    objective: ClassVar[str] = "rnnrbm"
    scan_friendly: ClassVar[bool] = True
    mutable: ClassVar[tuple] = ()

    def parameters(self, pitches: int) -> dict:
        """DLT's initialisation: W ~ N(0, init_std^2), the RNN's weights ~ N(0, rnn_init_std^2),
        biases zero."""
        n, z = nn.initializers.normal, nn.initializers.zeros_init()
        h, u, s, r = self.hidden, self.recurrent, self.init_std, self.rnn_init_std
        shapes = {"W": (pitches, h, n(s)), "bv": (pitches, z), "bh": (h, z), "bu": (u, z),
                  "Wuh": (u, h, n(r)), "Wuv": (u, pitches, n(r)), "Wvu": (pitches, u, n(r)),
                  "Wuu": (u, u, n(r))}
        return {name: self.param(name, spec[-1], spec[:-1]) for name, spec in shapes.items()}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict:
        v = x.reshape(x.shape[:3])  # (B, T, P)
        p = self.parameters(v.shape[-1])
        bv, bh = frame_biases(p, v)  # (B, T, P), (B, T, H)
        logits = predict_logits(p["W"], bv, bh, self.mean_field)
        xent = jnp.sum(jnp.logaddexp(0.0, logits) - v * logits, -1)  # sigmoid cross-entropy
        guess = jax.lax.stop_gradient(jax.nn.sigmoid(logits))  # expected counts under q
        gap = jnp.zeros(v.shape[:2], v.dtype)
        if train:
            held = jax.lax.stop_gradient((p["W"], bv, bh))
            v_neg = jax.lax.stop_gradient(gibbs(self.make_rng("sample"), v, *held, self.k))
            gap = free_energy(v, p["W"], bv, bh) - free_energy(v_neg, p["W"], bv, bh)
        return {"gap": gap, "xent": jax.lax.stop_gradient(xent),
                "tp": jnp.sum(guess * v, -1), "fp": jnp.sum(guess * (1 - v), -1),
                "fn": jnp.sum((1 - guess) * v, -1)}


def generate(params: dict, key: jax.Array, samples: int, frames: int, steps: int) -> jax.Array:
    """DLT's generation: `samples` sequences of `frames` frames (samples, frames, P) 0/1, each
    frame a Gibbs chain of `steps` steps from silence under the RBM the RNN's state sets, the
    sample fed back to the RNN."""
    p = params
    u0 = jnp.zeros((samples, p["Wuu"].shape[0]), jnp.float32)

    def frame(u, t):
        bv, bh = p["bv"] + u @ p["Wuv"], p["bh"] + u @ p["Wuh"]
        v = gibbs(jax.random.fold_in(key, t), jnp.zeros_like(bv), p["W"], bv, bh, steps)
        return rnn_step(p, u, v), v

    _, rolls = jax.lax.scan(frame, u0, jnp.arange(frames))
    return jnp.swapaxes(rolls, 0, 1)


def ais_log_partition(key: jax.Array, w: jax.Array, bv: jax.Array, bh: jax.Array, runs: int,
                      betas: int) -> jax.Array:
    """log Z of the RBMs (w, bv_n, bh_n), n = 0..N-1 (bv (N, P), bh (N, H)), by annealed
    importance sampling with `runs` runs and `betas` inverse temperatures spaced evenly in
    (0, 1]. The path: p_b(v) ~ exp(v.bv) prod_j (1 + exp(bh_j + b (v W)_j)), from the base
    b = 0 (independent units, log Z_0 = sum softplus(bv) + sum softplus(bh)) to the RBM at
    b = 1; each step a Gibbs transition at b. Returns (N,). Unbiased in Z, so log Z is
    underestimated on average (more runs and betas: less)."""
    bv, bh = bv[:, None], bh[:, None]  # (N, 1, P), (N, 1, H)

    def log_p(v, b):  # unnormalised log p_b(v), (N, runs)
        return jnp.sum(v * bv, -1) + jnp.sum(jax.nn.softplus(bh + b * (v @ w)), -1)

    k0, key = jax.random.split(key)
    v = jax.random.bernoulli(k0, jax.nn.sigmoid(bv), (bv.shape[0], runs, bv.shape[-1])).astype(w.dtype)
    grid = jnp.linspace(0.0, 1.0, betas + 1)

    def anneal(i, carry):
        v, log_w = carry
        b_prev, b = grid[i - 1], grid[i]
        log_w = log_w + log_p(v, b) - log_p(v, b_prev)
        kh, kv = jax.random.split(jax.random.fold_in(key, i))
        h = jax.random.bernoulli(kh, jax.nn.sigmoid(bh + b * (v @ w))).astype(w.dtype)
        v = jax.random.bernoulli(kv, jax.nn.sigmoid(bv + b * (h @ w.T))).astype(w.dtype)
        return v, log_w

    _, log_w = jax.lax.fori_loop(1, betas + 1, anneal, (v, jnp.zeros(v.shape[:2], w.dtype)))
    log_z0 = jnp.sum(jax.nn.softplus(bv[:, 0]), -1) + jnp.sum(jax.nn.softplus(bh[:, 0]), -1)
    return log_z0 + jax.nn.logsumexp(log_w, -1) - jnp.log(runs)


def rnnrbm(hidden: int = 150, recurrent: int = 100, k: int = 15, mean_field: int = 5,
           init_std: float = 0.01, rnn_init_std: float = 0.0001, generate_steps: int = 25,
           generate_frames: int = 200, samples: int = 2, ais_runs: int = 16, ais_betas: int = 100,
           *, num_classes: int, dropout: dict, input_shape: tuple) -> nn.Module:
    """The RNN-RBM on piano rolls (dataset=chorales); the generate_* and ais_* keys set what the
    run does at its end (dlrun.train.sequences)."""
    require(hidden > 0 and recurrent > 0,
            f"hidden and recurrent must be > 0 (got {hidden}, {recurrent})")
    require(k >= 1 and generate_steps >= 1, f"k and generate_steps (Gibbs steps) must be >= 1 "
                                            f"(got {k}, {generate_steps})")
    require(mean_field >= 1, f"mean_field (prediction updates) must be >= 1 (got {mean_field})")
    require(init_std > 0 and rnn_init_std > 0, "init_std and rnn_init_std must be > 0")
    require(generate_frames >= 1 and samples >= 0, "generate_frames must be >= 1 and samples >= 0")
    require(ais_runs >= 1 and ais_betas >= 1, f"ais_runs and ais_betas must be >= 1 (got "
                                              f"{ais_runs}, {ais_betas})")
    require(not dropout, "regularizer dropout/dropconnect do not apply to the RNN-RBM")
    require(len(input_shape) == 3 and input_shape[-1] == 1,
            f"model=rnnrbm models piano rolls (frames, pitches, 1), e.g. dataset=chorales; this "
            f"dataset's inputs are {tuple(input_shape)}")
    return RnnRbm(hidden, recurrent, k, mean_field, init_std, rnn_init_std, generate_steps,
                  generate_frames, samples, ais_runs, ais_betas)
