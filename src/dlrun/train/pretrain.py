"""The greedy layer-wise pretraining trainer of sda and dbn: each layer a run of its own."""
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dlrun import models
from dlrun.runs import layout, ownership
from dlrun.runs.atomic import load_arrays
from dlrun.runs.checkpoints import has_checkpoint
from dlrun.train.setup import Setup

log = logging.getLogger("dlrun")


def pretrain(setup: Setup, cfg: DictConfig, run_dir: Path, splits: dict, ctx) -> dict:
    """Phase i trains layer i (an autoencoder or RBM) on the frozen layers 0..i-1 pretrained
    before it, as a complete run of its own in run_dir/pretrain_<i>/ (metrics, parameters,
    checkpoints). A phase that finished is read back, one with a checkpoint is resumed, so a
    stopped stack resumes where it stopped. ctx: the stack's dlrun.train.trainer.Context.
    Returns the pretrained layers, {'params': {'hidden_<i>': ...}}, to start fine-tuning from."""
    from dlrun.train.trainer import Context, train_and_evaluate
    settings = models.pretraining_settings(OmegaConf.to_container(cfg.model, resolve=True))
    layers: dict = {}
    for i, node in enumerate(setup.phases):
        sub_dir = layout.phase_dir(run_dir, i)
        if not layout.has_summary(sub_dir):
            log.info("pretraining layer %d of %d (%s, %d hidden units) in %s", i + 1,
                     len(setup.phases), node["name"], node["hidden"], sub_dir.name)
            ownership.mkdirs(sub_dir)
            train_and_evaluate(phase_config(cfg, node, settings), str(sub_dir), Context(
                resume=has_checkpoint(sub_dir), stop=ctx.stop, hint_dir=ctx.hint_dir or run_dir,
                init_from={"frozen": dict(layers)} if layers else None, splits=splits))
        else:
            log.info("pretraining layer %d of %d: done before, read from %s", i + 1,
                     len(setup.phases), sub_dir.name)
        layers[f"hidden_{i}"] = load_arrays(sub_dir / layout.PARAMS)[f"hidden_{i}"]
    log.info("fine-tuning the pretrained stack as a classifier")
    return {"params": layers}


def phase_config(cfg: DictConfig, model_node: dict, settings: dict) -> DictConfig:
    """The config of one pretraining phase of an sda/dbn run: the layer's model, plain SGD at
    pretrain_lr for pretrain_epochs in batches of pretrain_batch_size, no regularizer, no early
    stopping; data, seed, loop and checkpoint settings as the run's."""
    sub = OmegaConf.to_container(cfg, resolve=True)
    sub.update(model=model_node, optim={"name": "sgd", "lr": settings["pretrain_lr"]},
               schedule={"name": "constant"}, regularizer={}, early_stopping={"name": "none"},
               logger={},  # the phases' metrics are in pretrain_<i>/metrics.jsonl only
               resume=False, prune={"enabled": False})
    sub["train"] = {**sub["train"], "epochs": settings["pretrain_epochs"], "num_seeds": 1, "lrs": [],
                    "batch_size": settings["pretrain_batch_size"], "eval_train": False}
    return OmegaConf.create(sub)
