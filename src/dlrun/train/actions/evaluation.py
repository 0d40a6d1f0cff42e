"""Evaluation on the held-out splits every train.eval_every epochs and after the last one."""
from typing import Callable

from dlrun.train.actions import Loop
from dlrun.train.evaluate import add_evaluation


class Evaluation:
    def __init__(self, evaluate: Callable):
        self.evaluate = evaluate  # dlrun.train.evaluate.make_evaluator's function

    def __call__(self, loop: Loop) -> None:
        tc = loop.setup.train
        if loop.epoch % tc.eval_every == 0 or loop.epoch == tc.epochs:
            add_evaluation(loop.records, loop.setup, loop.state, self.evaluate, loop.splits)
