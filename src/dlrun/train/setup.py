"""Config -> Setup: every component of a run, validated and built before any data is loaded.

`build_setup(cfg)` is pure: it reads the config, checks it (ConfigError, one line, on bad input)
and builds the model, optimizer, schedule, regularizers and the other nodes through their
registries (dlrun.config.registry). It touches no device, joins no process and imports no
optional package; `attach_runtime` does that, as the explicit next step of a run.
"""
import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import flax.linen as nn
import jax
import optax
from omegaconf import DictConfig, OmegaConf

from dlrun import models, optim
from dlrun.config.registry import build, build_node, require, setattrs
from dlrun.data import catalog, preprocess, views
from dlrun.data import splits as data_splits
from dlrun.data.arrays import DataInfo
from dlrun.errors import ConfigError
from dlrun.models import objectives
from dlrun.optim import regularizers
from dlrun.optim.averaging import AVERAGINGS, Averaging
from dlrun.runs import layout, tracking
from dlrun.runs.checkpoints import CheckpointConfig
from dlrun.runtime import distributed
from dlrun.sampling import SAMPLERS, HMCConfig
from dlrun.sampling import check as check_sampler
from dlrun.sweeps import pruning
from dlrun.train import early_stopping

PRECISIONS = ("float32", "bfloat16")  # train.precision: the step's compute dtype (dlrun.train.step)
TOP_LEVEL_KEYS = ("model", "optim", "schedule", "regularizer", "dataset", "train", "checkpoint",
                  "resume", "early_stopping", "plots", "prune", "dist", "progress", "logger",
                  "averaging", "param_groups", "sampler")
OPTIONAL_KEYS = ("regularizer", "checkpoint", "resume", "early_stopping", "plots", "prune", "dist",
                 "progress", "logger", "averaging", "param_groups", "sampler")  # defaults when absent


@dataclass(frozen=True)
class TrainConfig:
    """The `train` node of the config (see conf/config.yaml for units): its keys, types and
    defaults are these fields, and __post_init__ checks them."""

    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    eval_every: int = 1
    eval_train: bool = False
    eval_batch_size: int = 1000
    loop: str = "auto"
    compile_cache: bool = True
    num_seeds: int = 1
    lrs: List[float] = ()
    scan_unroll: int = 4
    nan_policy: str = "raise"
    label_smoothing: float = 0.0
    top_k: int = 0
    tta: str = "none"
    precision: str = "float32"
    clip_norm: float = 0.0

    def __post_init__(self):
        setattrs(self, lrs=tuple(self.lrs))
        require(self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})")
        require(self.batch_size >= 0, f"batch_size must be >= 1, or 0 for the whole training "
                                      f"split (got {self.batch_size})")
        require(self.seed >= 0, f"seed must be >= 0 (got {self.seed})")
        require(self.eval_every >= 1, f"eval_every must be >= 1 (got {self.eval_every})")
        require(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1 (got {self.eval_batch_size})")
        require(self.loop in ("auto", "step", "scan"), f"loop must be auto, step or scan (got '{self.loop}')")
        require(self.num_seeds >= 1, f"num_seeds must be >= 1 (got {self.num_seeds})")
        lrs, n = self.lrs, self.num_seeds
        if lrs and n % len(lrs):
            raise ConfigError(
                f"lrs gives {len(lrs)} learning rates for train.num_seeds={n} copies; "
                f"num_seeds must be a multiple of it (copy i trains at lrs[i % {len(lrs)}]), e.g. "
                f"train.num_seeds={len(lrs) * max(1, n // len(lrs))}, or lrs=[] to use optim.lr for all")
        require(all(lr > 0 for lr in lrs), f"every entry of lrs must be > 0 (got {list(lrs)})")
        require(self.scan_unroll >= 1, f"scan_unroll must be >= 1 (got {self.scan_unroll})")
        require(self.nan_policy in ("raise", "skip"),
                f"nan_policy must be raise or skip (got '{self.nan_policy}')")
        require(0 <= self.label_smoothing < 1,
                f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        require(self.top_k >= 0, f"top_k must be >= 0 (0 = no top-k metric; got {self.top_k})")
        require(self.tta in views.TTA, f"tta must be one of {', '.join(views.TTA)} (got '{self.tta}')")
        require(self.clip_norm >= 0, f"clip_norm must be >= 0 (0 = off; got {self.clip_norm})")
        require(self.precision in PRECISIONS,
                f"precision must be one of {', '.join(PRECISIONS)} (got '{self.precision}')")


@dataclass(frozen=True)
class Setup:
    """Everything built from a config before any data is loaded or anything compiled."""

    model: nn.Module
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    reg: regularizers.Regularization
    dataset: catalog.DataConfig
    data: DataInfo  # the dataset's input shape, classes and split sizes
    train: TrainConfig
    loop: str
    steps_per_epoch: int
    lr_scales: Optional[tuple]  # per copy (train.num_seeds > 1): its lr / optim.lr
    checkpoint: CheckpointConfig
    stopper: Optional[early_stopping.Stopper] = None  # None: train for train.epochs
    objective: objectives.Objective = objectives.OBJECTIVES["classify"]
    phases: tuple = ()  # sda/dbn: the model config of each greedy pretraining phase
    full_batch: bool = False  # optim is a full-batch method (lbfgs, cg): one step per epoch
    transform: Optional[preprocess.Transform] = None  # dataset.preprocess, fitted on the data
    prune: Optional[pruning.PruneConfig] = None  # sweeps: dlrun's median rule (None: off)
    mesh: Optional[jax.sharding.Mesh] = None  # data parallel over its devices (dlrun.runtime.distributed)
    loggers: tuple = ()  # dlrun.runs.tracking.LoggerSpec of each selected logger (logger=[...])
    stream: bool = False  # the splits stay on the host; batches are copied to the device
    label: str = ""  # "model=.. optim=.. dataset=..": what the pictures' titles name
    averaging: Optional[Averaging] = None  # averaged weights for evaluation (None: off)
    sampler: Optional[HMCConfig] = None  # HMC from the model's energy (dlrun.sampling; None: off)

    @property
    def copies(self) -> int:
        return self.train.num_seeds

    @property
    def seeds(self) -> list[int]:
        return [seed for seed, _ in layout.copies(self.train.seed, self.copies, 0.0, ())]

    def select_key(self, splits) -> str:
        """The record key that picks the best epoch: the objective's metric on val, else test."""
        return f"{'val' if 'val' in splits else 'test'}_{self.objective.select}"


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer steps per pass over n examples: full batches only, or with the partial one."""
    return n // batch_size if drop_last else -(-n // batch_size)


def build_setup(cfg: DictConfig, data: Optional[DataInfo] = None) -> Setup:
    """Validate the whole config and build its components; raises ConfigError on bad input.
    The dataset describes itself (reading a user's files once; the built-in ones need no
    reading) unless `data` is given: a finished run's own record of it (dlrun-eval, -predict)."""
    check_top_level(cfg)
    tc = build_node("train", TrainConfig, cfg.train)
    ds = build("dataset", catalog.DATASETS, cfg.dataset)
    data = described(ds, data)
    n_train = ds.sizes(data)[0]
    if tc.batch_size == 0:  # full batch: one step per epoch on the whole training split
        tc = dataclasses.replace(tc, batch_size=n_train, drop_last=False)
    data_splits.check_batch_size(ds, data, tc.batch_size)
    reg = regularizers.build_all(cfg.get("regularizer") or {})  # regularizer=[]: none
    check_kind(cfg, data, tc)
    model = build("model", models.MODELS, cfg.model, num_classes=data.num_classes, dropout=reg.dropout,
                  input_shape=data.image_shape, vocab_size=data.vocab_size)
    full_batch = cfg.optim.name in optim.FULL_BATCH
    if full_batch:
        tc = full_batch_train(cfg, tc, model, reg, n_train)
    steps = steps_per_epoch(n_train, tc.batch_size, tc.drop_last)
    require(steps * tc.epochs < 2**31,
            f"train.epochs ({tc.epochs}) x {steps} steps per epoch overflows the int32 step "
            f"counter; use at most {(2**31 - 1) // steps} epochs")
    lr_of = build("schedule", optim.SCHEDULES, cfg.schedule, steps_per_epoch=steps,
                  total_steps=steps * tc.epochs)
    base = build("optim", optim.OPTIMIZERS, cfg.optim, schedule=lr_of)
    lr_schedule = lr_of(float(cfg.optim.lr))
    param_groups = optim.groups.parse(cfg.get("param_groups"))
    require(param_groups.plain or not full_batch,
            f"param_groups do not apply to optim={cfg.optim.name} (one line search for all)")
    tx = optim.make_optimizer(base, list(reg.update_steps), lr_schedule, tc.clip_norm, param_groups)
    stream = data_splits.streams(ds, data)
    loop = tc.loop if tc.loop != "auto" else ("scan" if scan_friendly(model) and not stream else "step")
    ck = build_node("checkpoint", CheckpointConfig, cfg.get("checkpoint"))
    stopper = build("early_stopping", early_stopping.STOPPERS,
                    cfg.get("early_stopping") or {"name": "none"})
    prune = build_node("prune", pruning.PruneConfig, cfg.get("prune"))
    phases = tuple(models.pretraining_phases(OmegaConf.to_container(cfg.model, resolve=True)))
    check_combinations(cfg, ds, data, tc, model, stopper, prune, phases)
    check_stream(stream, loop, tc, model, phases, full_batch)
    averaging = build("averaging", AVERAGINGS, cfg.get("averaging") or {"name": "none"})
    check_recipe(cfg, ds, data, tc, model, stream, averaging, phases)
    sampler = build("sampler", SAMPLERS, cfg.get("sampler") or {"name": "none"})
    check_sampler(cfg.model.name, model, sampler, training_options(cfg, tc, stopper, averaging, prune))
    return Setup(model, tx, lr_schedule, reg, ds, data, tc, loop, steps, lr_scales(cfg, tc), ck,
                 stopper, objectives.of(model, tc.label_smoothing, tc.top_k), phases, full_batch,
                 prune=prune if prune.enabled else None,
                 loggers=tracking.build_all(cfg.get("logger")), stream=stream,
                 averaging=averaging, sampler=sampler,
                 label=f"model={cfg.model.name} optim={cfg.optim.name} dataset={cfg.dataset.name}")


def training_options(cfg: DictConfig, tc: TrainConfig, stopper, averaging, prune) -> list[str]:
    """The options set that only a trained model uses (a model with nothing to train refuses them)."""
    return [option for option, on in (
        (f"train.num_seeds={tc.num_seeds}", tc.num_seeds > 1),
        (f"early_stopping={cfg.early_stopping.name if stopper else ''}", stopper is not None),
        (f"averaging={cfg.averaging.name if averaging else ''}", averaging is not None),
        ("prune.enabled=true", prune.enabled)) if on]


def described(ds: catalog.DataConfig, data: Optional[DataInfo]) -> DataInfo:
    """The dataset's description (read from it unless given), checked against its config."""
    data = data or ds.describe()
    try:
        ds.check(data)
    except ConfigError as e:
        raise ConfigError(f"dataset.{e}") from None
    return data


def scan_friendly(model) -> bool:
    """Whether the model trains fastest as one lax.scan per epoch (dlrun's dense nets say so;
    a user's module that does not say is trained one jitted step at a time)."""
    return bool(getattr(model, "scan_friendly", False))


def check_kind(cfg: DictConfig, data: DataInfo, tc: TrainConfig) -> None:
    """The model and options fit the kind of data (images, token ids, piano rolls)."""
    check_tokens(cfg, data, tc)
    check_rolls(cfg, data)


def check_tokens(cfg: DictConfig, data: DataInfo, tc: TrainConfig) -> None:
    """Token ids (a text dataset) go to a model that embeds them, without test-time views."""
    if data.kind != "tokens":
        return
    require(cfg.model.name in models.recurrent.TOKEN_MODELS,
            f"dataset={cfg.dataset.name} holds token ids (texts); model={cfg.model.name} reads "
            f"images: use model={' or model='.join(models.recurrent.TOKEN_MODELS)}")
    require(tc.tta == "none", f"train.tta flips and shifts images; the texts of "
                              f"dataset={cfg.dataset.name} take none (train.tta=none)")


def check_rolls(cfg: DictConfig, data: DataInfo) -> None:
    """Piano rolls (dataset=chorales) and the RNN-RBM go together: neither makes sense without
    the other (a roll's label is its length, not a class)."""
    rolls, rnnrbm = data.kind == "roll", cfg.model.name == "rnnrbm"
    require(rolls or not rnnrbm, f"model=rnnrbm models sequences of binary frames (piano rolls); "
                                 f"dataset={cfg.dataset.name} holds {data.kind}s: use dataset=chorales")
    require(rnnrbm or not rolls, f"dataset={cfg.dataset.name} holds piano rolls, whose labels are "
                                 f"lengths, not classes: use model=rnnrbm")


def check_stream(stream: bool, loop: str, tc: TrainConfig, model, phases, full_batch: bool) -> None:
    """What streaming from the host (dataset.placement=host, or auto over the budget) supports."""
    if not stream:
        return
    require(loop == "step", "dataset.placement=host streams one batch per step: use train.loop=step "
                            "(or auto)")
    require(tc.num_seeds == 1 and not phases and not full_batch
            and not isinstance(model, models.NearestNeighbours),
            "data streamed from the host (dataset.placement=host, or a dataset over "
            "dataset.device_budget_mb) trains one model by minibatch steps: not train.num_seeds "
            "> 1, pretraining (sda, dbn), full-batch optimizers or knn; raise "
            "dataset.device_budget_mb or use placement=device")


def check_recipe(cfg: DictConfig, ds: catalog.DataConfig, data: DataInfo, tc: TrainConfig, model,
                 stream: bool, averaging: Optional[Averaging], phases: tuple) -> None:
    """The classification options (label smoothing, top-k, test-time augmentation), the
    alternating flips and weight averaging, where they apply."""
    require(averaging is None or not (phases or isinstance(model, models.NearestNeighbours)),
            f"averaging={cfg.averaging.name if averaging else ''} averages the weights of one "
            f"training run; model={cfg.model.name} pretrains layer by layer or has no training: "
            f"use averaging=none")
    classifier = objectives.of(model).name == "classify" and not isinstance(model, models.NearestNeighbours)
    require(classifier or not (tc.label_smoothing or tc.top_k or tc.tta != "none"),
            "train.label_smoothing, train.top_k and train.tta apply to classifiers trained by "
            "gradient steps (not knn, autoencoders or RBMs)")
    require(tc.top_k < data.num_classes,
            f"train.top_k must be smaller than the {data.num_classes} classes (got {tc.top_k})")
    require(not (stream and "flip_alternate" in ds.augment),
            "dataset.augment=[flip_alternate] needs the split on the device (it flips each "
            "example by its row); use flip, or dataset.placement=device")


def check_top_level(cfg: DictConfig) -> None:
    unknown = sorted(set(cfg) - set(TOP_LEVEL_KEYS))
    require(not unknown, f"unknown top-level key(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(TOP_LEVEL_KEYS)}")
    for key in TOP_LEVEL_KEYS:
        require(key in cfg or key in OPTIONAL_KEYS, f"the config has no '{key}' node")


def full_batch_train(cfg: DictConfig, tc: TrainConfig, model, reg, n_train: int) -> TrainConfig:
    """optim=lbfgs|cg: one line-searched iteration on the whole training split per epoch."""
    require(objectives.of(model).name != "cd",
            f"optim={cfg.optim.name} minimises an objective by line search; an RBM's CD "
            f"update is not the gradient of one: use optim=sgd")
    require(not reg.update_steps,
            f"optim={cfg.optim.name} line-searches the objective, which a regularizer acting "
            f"on the updates (weight_decay, max_norm) would change behind its back: use "
            f"regularizer=l2 or l1 (part of the objective)")
    require(not tc.lrs, f"train.lrs cannot scale optim={cfg.optim.name} (its line search "
                        f"picks the step); sweep optim.lr with -m instead")
    return dataclasses.replace(tc, batch_size=n_train, drop_last=False, shuffle=False)


def lr_scales(cfg: DictConfig, tc: TrainConfig) -> Optional[tuple]:
    """Each copy's learning rate / optim.lr (train.num_seeds > 1), or None for one run."""
    if tc.num_seeds == 1:
        return None
    lr = float(cfg.optim.lr)
    require(lr > 0, "train.num_seeds > 1 needs optim.lr > 0")
    require(not tc.lrs or cfg.optim.name != "rprop",
            "train.lrs cannot scale rprop (its step sizes adapt and are clipped on their own "
            "scale); sweep optim.lr with -m instead")
    if not tc.lrs:
        return (1.0,) * tc.num_seeds
    return tuple(copy_lr / lr for _, copy_lr in layout.copies(tc.seed, tc.num_seeds, lr, tc.lrs))


def check_combinations(cfg: DictConfig, ds, data, tc: TrainConfig, model, stopper, prune, phases) -> None:
    """The options that do not go together, each refused with the fix."""
    name = cfg.model.name
    knn = isinstance(model, models.NearestNeighbours)
    require(stopper is None or ds.sizes(data)[1] > 0,
            f"early_stopping={cfg.early_stopping.name if stopper else ''} needs a validation "
            f"split (dataset.val_size > 0; the seed presets have none), so that it never selects "
            f"on the test set")
    if ds.preprocess != "none":
        require(objectives.of(model).name == "classify" and not phases,
                f"dataset.preprocess={ds.preprocess} is for classifiers trained directly; "
                f"model={name} models pixel intensities in [0, 1] (or pretrains on them)")
        require(ds.preprocess != "pca" or isinstance(model, (models.Dense, models.NearestNeighbours)),
                "dataset.preprocess=pca keeps fewer dimensions than pixels, so the input is no "
                "longer an image: use it with logreg, mlp or knn, or use zca (image-shaped)")
    require(not (ds.augment and knn), "dataset.augment does not apply to knn, which has no "
                                      "training steps")
    require(not knn or (tc.num_seeds == 1 and stopper is None),
            "model=knn has no training: train.num_seeds and early_stopping do not apply to it "
            "(knn is deterministic; compare k with -m model.k=1,3,5)")
    require(not phases or tc.num_seeds == 1,
            f"model={name} pretrains layer by layer; train.num_seeds > 1 is not supported "
            f"for it (sweep train.seed with -m instead)")
    require(not prune.enabled or (tc.num_seeds == 1 and not knn),
            "prune.enabled=true prunes whole trials; it does not apply to train.num_seeds > 1 "
            "copies or to knn (no epochs)")


def attach_runtime(setup: Setup, cfg: DictConfig) -> Setup:
    """The run's side effects before training, after build_setup: import the selected loggers'
    packages (a missing one stops the run here), join the other processes (dist.enabled) and
    build the data-parallel device mesh. Returns the Setup with its mesh."""
    tracking.require_packages(setup.loggers)
    dist = distributed.parse(cfg.get("dist"))
    distributed.initialize(dist)  # multi-process: before anything below touches the backend
    knn = isinstance(setup.model, models.NearestNeighbours)
    require(distributed.processes() == 1 or not (setup.phases or knn or setup.prune),
            f"dist.enabled=true (several processes) supports models trained in one run; not "
            f"model={cfg.model.name} (pretraining phases or knn) or prune.enabled=true")
    mesh = None if knn else distributed.make_mesh(
        dist, setup.train.batch_size, "the full batch (the whole training split)"
        if setup.full_batch or cfg.train.batch_size == 0 else "train.batch_size")
    require(mesh is None or not setup.stream,
            "data streamed from the host trains on one device; with several, raise "
            "dataset.device_budget_mb (or placement=device) or set dist.data_parallel=false")
    return dataclasses.replace(setup, mesh=mesh)
