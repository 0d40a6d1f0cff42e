"""Training: config -> Setup -> state -> the jitted step -> epochs -> evaluation -> the loop.

Reading order, one module per stage:
  setup.py     Setup: every component built and validated from the config (pure), and
               attach_runtime (processes, device mesh, logger packages)
  state.py     TrainState and how it is initialised (one run, or N copies)
  step.py      the training step, one pure function, and the epoch's named running sums
  epoch.py     one epoch compiled in its loop form (scan or step)
  evaluate.py  evaluation over a split and each epoch's metrics record
  start.py     where training starts: fresh, restored from a checkpoint, agreed by processes
  loop.py      the loop: epochs, then the periodic actions (actions/), then finish
  actions/     evaluation, metrics files, loggers and display, console, best epoch, pruning,
               early stopping, stop signals, checkpointing
  trainer.py   train_and_evaluate(cfg, workdir, ctx): the CLI's entry; picks the trainer
  knn.py, pretrain.py  the other trainers (nearest neighbours; greedy layer-wise pretraining)
  summary.py   summary.json, for every trainer
"""
from dlrun.train.epoch import epoch_order, make_epoch_runner
from dlrun.train.evaluate import TrainingDiverged, eval_output, make_evaluator, setup_evaluator
from dlrun.train.setup import Setup, attach_runtime, build_setup, steps_per_epoch
from dlrun.train.start import Start, fresh_start
from dlrun.train.state import (TrainState, count_params, init_state, init_states, loaded_variables,
                               model_variables, run_keys, saved_params)
from dlrun.train.step import epoch_acc, make_train_step
from dlrun.train.trainer import Context, train_and_evaluate

__all__ = ["Context", "Setup", "Start", "TrainState", "TrainingDiverged", "attach_runtime",
           "build_setup", "count_params", "epoch_acc", "epoch_order", "eval_output", "fresh_start",
           "init_state", "init_states", "loaded_variables", "make_epoch_runner", "make_evaluator",
           "make_train_step", "model_variables", "run_keys", "saved_params", "setup_evaluator",
           "steps_per_epoch", "train_and_evaluate"]
