"""Training objectives: what a model's output is scored by.

Every model class names its objective (`objective`, a ClassVar); the training step and the
evaluator only ever call `per_example` of that objective, so a new kind of model needs no change
to the loop. An objective turns the model's output for a batch into

  loss     (B,)    what the optimizer minimises (averaged over the batch, plus the penalty)
  metrics  (K, B)  what is reported, per example; metrics[0] is the reported `loss`

and the loop sums the metrics over each epoch (training batches, in training mode) and over
each held-out split (eval mode), writing them as `<split>_<metric>` in metrics.jsonl
(`train_loss`, `val_error`, `test_mse`, ...). `select` is the metric that picks the best epoch,
drives early stopping and tags the best checkpoint (on the validation split, else the test split).
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Objective(NamedTuple):
    name: str
    metrics: tuple[str, ...]
    select: str
    per_example: Callable  # (model, output, labels) -> (loss (B,), metrics (K, B))
    percent: tuple[str, ...] = ()  # metrics printed as percentages


def _classify(model, logits: jax.Array, y: jax.Array):
    """Softmax cross-entropy; error = 1 where the arg-max class is not the label (y = -1 rows
    are padding, weighted 0 by the caller)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
    wrong = (jnp.argmax(logits, -1) != y).astype(jnp.float32)
    return ce, jnp.stack([ce, wrong])


def reconstruction_costs(logits: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per example: (cross-entropy summed over the units, DLT's dA cost
    -sum(x log z + (1-x) log(1-z)) with z = sigmoid(logits); squared error summed over the units)."""
    xent = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, target), axis=-1)
    sq = jnp.sum((jax.nn.sigmoid(logits) - target) ** 2, axis=-1)
    return xent, sq


def _reconstruct(model, out: dict, y: jax.Array):
    """Autoencoders: out = {'logits': reconstruction before the sigmoid, 'target': the clean
    input}. loss = the model's `loss` (cross_entropy or squared, summed over the units);
    mse = mean squared error per unit (comparable across losses and layer sizes)."""
    xent, sq = reconstruction_costs(out["logits"], out["target"])
    loss = xent if model.loss == "cross_entropy" else sq
    return loss, jnp.stack([loss, sq / out["target"].shape[-1]])


def _contrastive_divergence(model, out: dict, y: jax.Array):
    """RBMs: out['surrogate'] = F(v_data) - mean F(v_chain end) (free energies, the chain ends
    held constant), whose gradient is the CD-k / PCD-k estimate of the log-likelihood gradient.
    It is not itself a cost, so the reported loss is the mean-field reconstruction
    cross-entropy (DLT's CD monitor); pseudo_ll is DLT's PCD monitor, the log pseudo-likelihood
    D * log sigmoid(F(v with one random bit flipped) - F(v)) (higher is better)."""
    xent, sq = reconstruction_costs(out["logits"], out["target"])
    return out["surrogate"], jnp.stack([xent, sq / out["target"].shape[-1], out["pseudo_ll"]])


def _sequence_cd(model, out: dict, y: jax.Array):
    """The RNN-RBM over padded sequences, y = each row's real frames (-1: a padding row). The
    loss is DLT's cost, the mean over the sequence's frames of F(v_t) - F(v_t^(k)) (the CD
    surrogate); the metrics are per sequence: 'loss' the mean cross-entropy of a frame under
    its prediction from the frames before it (nats), 'frame_acc' the expected TP / (TP + FP + FN)
    of those predictions (Bay et al. 2009, the RNN-RBM paper's ACC). The paper's figures, pooled over
    every frame and with the AIS log-likelihood, are the run's end report (dlrun.train.sequences)."""
    mask = (jnp.arange(out["gap"].shape[1])[None] < y[:, None]).astype(jnp.float32)  # (B, T)
    frames = jnp.maximum(jnp.sum(mask, -1), 1.0)
    per_frame = lambda a: jnp.sum(mask * a, -1) / frames  # noqa: E731
    tp, fp, fn = (jnp.sum(mask * out[k], -1) for k in ("tp", "fp", "fn"))
    acc = tp / jnp.maximum(tp + fp + fn, 1.0)
    return per_frame(out["gap"]), jnp.stack([per_frame(out["xent"]), acc])


def classify(label_smoothing: float = 0.0, top_k: int = 0) -> Objective:
    """The classification objective with train.label_smoothing (the loss is the cross-entropy
    against (1 - s) * one_hot + s / K; the reported loss is that loss) and train.top_k (adds the
    metric top<k>_error: 1 where the label is not among the k largest logits)."""
    if not label_smoothing and not top_k:
        return OBJECTIVES["classify"]

    def per_example(model, logits, y):
        labels = jnp.maximum(y, 0)
        loss, metrics = _classify(model, logits, y)
        if label_smoothing:
            soft = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
            loss = optax.softmax_cross_entropy(logits, soft)
            metrics = metrics.at[0].set(loss)
        if top_k:
            label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
            above = jnp.sum(logits > label_logit, axis=-1)  # classes ranked above the label
            metrics = jnp.concatenate([metrics, (above >= top_k).astype(jnp.float32)[None]])
        return loss, metrics

    top = (f"top{top_k}_error",) if top_k else ()
    return Objective("classify", ("loss", "error", *top), "error", per_example,
                     percent=("error", *top))


OBJECTIVES: dict[str, Objective] = {
    "classify": Objective("classify", ("loss", "error"), "error", _classify, percent=("error",)),
    "reconstruct": Objective("reconstruct", ("loss", "mse"), "loss", _reconstruct),
    "cd": Objective("cd", ("loss", "mse", "pseudo_ll"), "loss", _contrastive_divergence),
    "rnnrbm": Objective("rnnrbm", ("loss", "frame_acc"), "loss", _sequence_cd, percent=("frame_acc",)),
}


def of(model, label_smoothing: float = 0.0, top_k: int = 0) -> Objective:
    """The objective a model is trained by (classification unless its class says otherwise;
    label_smoothing and top_k apply to classification)."""
    name = getattr(model, "objective", "classify")
    return classify(label_smoothing, top_k) if name == "classify" else OBJECTIVES[name]
