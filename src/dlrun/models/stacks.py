"""Greedily pretrained stacks (sda, dbn): the classifier, and the config of each pretraining phase."""
import inspect
from typing import List

import flax.linen as nn

from dlrun.config.registry import require
from dlrun.models.layers import RECON_LOSSES, Dense, _check_common


def sda(hidden: List[int] = (1000, 1000, 1000), corruption: List[float] = (0.1, 0.2, 0.3),
        tied: bool = True, loss: str = "cross_entropy", pretrain_epochs: int = 15,
        pretrain_lr: float = 0.001, pretrain_batch_size: int = 20, init: str = "glorot",
        init_std: float = 0.01, *, num_classes: int, dropout: dict) -> nn.Module:
    """Stacked denoising autoencoders (DLT's SdA): each sigmoid layer is first trained as a
    denoising autoencoder on the output of the layers under it (one pretraining phase per
    layer: plain SGD, pretrain_lr, pretrain_epochs, pretrain_batch_size), then the whole stack
    with a softmax on top is fine-tuned as a classifier by the run's own optim and train."""
    _check_stack(hidden, init, init_std, pretrain_epochs, pretrain_lr, pretrain_batch_size)
    require(len(corruption) == len(hidden) and all(0 <= c < 1 for c in corruption),
            f"corruption needs one level in [0, 1) per layer ({len(hidden)}), got {list(corruption)}")
    require(loss in RECON_LOSSES, f"loss must be one of {', '.join(RECON_LOSSES)} (got '{loss}')")
    return _stack_classifier(hidden, init, init_std, num_classes, dropout)


def dbn(hidden: List[int] = (1000, 1000, 1000), k: int = 1, persistent: bool = False,
        chains: int = 100, pretrain_epochs: int = 100, pretrain_lr: float = 0.01,
        pretrain_batch_size: int = 10, init: str = "glorot", init_std: float = 0.01, *,
        num_classes: int, dropout: dict) -> nn.Module:
    """Deep belief net (DLT's DBN): each sigmoid layer is first trained as an RBM by CD-k/PCD-k
    on the mean activations of the layers under it (one phase per layer, plain SGD), then the
    stack with a softmax on top is fine-tuned as a classifier by the run's optim and train."""
    _check_stack(hidden, init, init_std, pretrain_epochs, pretrain_lr, pretrain_batch_size)
    require(k >= 1 and chains >= 1, f"k and chains must be >= 1 (got {k}, {chains})")
    return _stack_classifier(hidden, init, init_std, num_classes, dropout)


def _check_stack(hidden, init, init_std, epochs, lr, batch_size) -> None:
    require(len(hidden) > 0 and all(h > 0 for h in hidden),
            f"hidden must be a non-empty list of positive sizes (got {list(hidden)})")
    _check_common("sigmoid", init, init_std)
    require(epochs >= 0, f"pretrain_epochs must be >= 0 (0: no pretraining; got {epochs})")
    require(lr > 0 and batch_size >= 1, "pretrain_lr must be > 0 and pretrain_batch_size >= 1")


def _stack_classifier(hidden, init, init_std, num_classes, dropout) -> nn.Module:
    """The fine-tuned network: the pretrained sigmoid layers (same parameter names) + softmax."""
    return Dense(tuple(hidden), "sigmoid", True, init, init_std, num_classes,
                 dropout_input=dropout.get("input", 0.0), dropout_hidden=dropout.get("hidden", 0.0),
                 dropconnect_keep=dropout.get("dropconnect_keep", 1.0))


def pretraining_phases(node: dict) -> list[dict]:
    """The model config of each pretraining phase of an sda/dbn config node (plain dict), in
    order; [] for every other model or with pretrain_epochs 0. Phase i trains layer i on top of
    layers 0..i-1, which it receives frozen from the phases before."""
    name = node.get("name")
    if name not in PRETRAINING or node.get("pretrain_epochs", 1) == 0:
        return []
    hidden = list(node.get("hidden", inspect.signature(PRETRAINING[name]).parameters["hidden"].default))
    common = {k: node[k] for k in ("init", "init_std") if k in node}
    phases = []
    for i, units in enumerate(hidden):
        if name == "sda":
            layer = {"name": "autoencoder", "hidden": units, "below": hidden[:i],
                     "corruption": list(node.get("corruption", (0.1, 0.2, 0.3)))[i],
                     **{k: node[k] for k in ("tied", "loss") if k in node}}
        else:
            layer = {"name": "rbm", "hidden": units, "below": hidden[:i],
                     **{k: node[k] for k in ("k", "persistent", "chains") if k in node}}
        phases.append({**layer, **common})
    return phases


def pretraining_settings(node: dict) -> dict:
    """(epochs, lr, batch_size) of an sda/dbn node's pretraining phases, defaults filled in."""
    builder = PRETRAINING[node["name"]]
    defaults = {p.name: p.default for p in inspect.signature(builder).parameters.values()}
    return {k: node.get(k, defaults[k]) for k in ("pretrain_epochs", "pretrain_lr", "pretrain_batch_size")}


PRETRAINING = {"sda": sda, "dbn": dbn}  # the stacks whose phases pretraining_phases derives
