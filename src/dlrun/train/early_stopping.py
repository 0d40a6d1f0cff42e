"""Early stopping: the `early_stopping` config group. Both algorithms of the seed documents.

  patience  the slides' algorithm 1: validate after every epoch; stop when `max_patience`
            epochs have passed without a new best, but never before `min_epochs`.
  dlt       the slides' algorithm 2, as DLT's logistic_sgd.py/mlp.py/convolutional_mlp.py run
            it: patience counts optimizer steps (DLT's `iter`); a validation error below
            `improvement_threshold` x the best so far raises patience to
            max(patience, step x patience_increase); the run stops once patience <= step.
            DLT validates every min(n_train_batches, patience / 2) steps, which is every epoch
            for its settings (83 batches of 600 < 5000 / 2); dlrun validates at epoch ends.

A stopper is a pure function of the metric history (the selected error of each evaluated
epoch and the step it was taken at), so a resumed run reaches the same decision from the
metrics its checkpoint carries. When a run stops, or ends, with early stopping on, its
parameters are restored to the best epoch's: params.pkl equals best_params.pkl.
"""
from typing import Callable, Optional, Sequence

from dlrun.config.registry import require

# (epoch, step, error) of each evaluated epoch, oldest first -> stop now?
Stopper = Callable[[Sequence[tuple[int, int, float]]], bool]


def none() -> Optional[Stopper]:
    """Train for train.epochs."""
    return None


def patience(min_epochs: int = 50, max_patience: int = 20) -> Stopper:
    """Stop once `max_patience` epochs have passed since the best validation error, but not
    before epoch `min_epochs` (the slides: minEpochs 50, maxPatience 20)."""
    require(min_epochs >= 1, f"min_epochs must be >= 1 (got {min_epochs})")
    require(max_patience >= 1, f"max_patience must be >= 1 (got {max_patience})")

    def stop(history: Sequence[tuple[int, int, float]]) -> bool:
        if not history or history[-1][0] < min_epochs:
            return False
        best_epoch = min(history, key=lambda h: h[2])[0]  # the first of equal bests
        return history[-1][0] - best_epoch >= max_patience

    return stop


def dlt(patience: int = 5000, patience_increase: float = 2.0,
        improvement_threshold: float = 0.995) -> Stopper:
    """DLT's geometric patience in optimizer steps (see the module docstring). DLT's `iter` at
    a validation is the 0-based index of the step just taken: dlrun's step count - 1."""
    require(patience >= 1, f"patience must be >= 1 (got {patience})")
    require(patience_increase >= 1, f"patience_increase must be >= 1 (got {patience_increase})")
    require(0 < improvement_threshold <= 1,
            f"improvement_threshold must be in (0, 1] (got {improvement_threshold})")

    def stop(history: Sequence[tuple[int, int, float]]) -> bool:
        budget, best = float(patience), float("inf")
        for _, step, error in history:
            if error < best:
                if error < best * improvement_threshold:
                    budget = max(budget, (step - 1) * patience_increase)
                best = error
        return bool(history) and budget <= history[-1][1] - 1

    return stop


STOPPERS: dict[str, Callable[..., Optional[Stopper]]] = {"none": none, "patience": patience,
                                                         "dlt": dlt}
