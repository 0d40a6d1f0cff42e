"""Models: the `model` config group. Name -> builder of a Flax Linen module.

Every model is called as `module.apply(variables, x, train=bool, rngs={'dropout': k, 'sample': k2})`
with `x` of shape (B, H, W, C) float32 (the dataset's image shape, dlrun.data.sources). What it returns is what its objective scores
(dlrun.models.objectives, named by the class's `objective`): logits (B, num_classes) for classifiers,
{'logits', 'target'} for autoencoders, {'surrogate', 'logits', 'target', 'pseudo_ll'} for RBMs.
Dropout rates are model arguments (they come from `regularizer=dropout`, see regularizers.py)
and act only when `train=True`; 'sample' feeds the autoencoders' corruption and the RBMs' Gibbs
chains. `variables` holds 'params' (a plain nested dict: {'hidden_0': {'kernel', 'bias'}, ...})
and, for some models, other collections carried in the training state but never trained:
'frozen' (pretrained layers under the one being trained, set by sda/dbn), 'chains' (PCD's
persistent Gibbs chains) and 'batch_stats' (BatchNorm's running statistics, vgg/resnet); the
last two are updated by every training step (the class's `mutable`).

Two models are not trained by gradient steps alone: `knn` memorises the training split
(NearestNeighbours), and `sda`/`dbn` are classifiers preceded by greedy layer-wise pretraining
phases (`PRETRAINING` gives the config of each phase; dlrun.train runs them). `gaussian`
(dlrun.models.energy) has nothing to train: it is the target of sampler=hmc (dlrun.sampling).
"""
from typing import Callable

from dlrun.config.plugins import Custom
from dlrun.models.classifiers import ConvNet, cnn, lenet, logreg, mlp
from dlrun.models.conv import Conv, conv_matmul, conv_shift, conv_shift_matmul, conv_xla, max_pool_ceil
from dlrun.models.energy import Gaussian, gaussian
from dlrun.models.knn import NearestNeighbours, knn
from dlrun.models.layers import ACTIVATIONS, INITS, Dense, DenseLayer, kernel_init
from dlrun.models.modern import ConvStack, resnet, vgg
from dlrun.models.recurrent import Recurrent, lstm, rnn
from dlrun.models.rnnrbm import RnnRbm, rnnrbm
from dlrun.models.stacks import PRETRAINING, dbn, pretraining_phases, pretraining_settings, sda
from dlrun.models.unsupervised import RBM, Autoencoder, autoencoder, free_energy, rbm

MODELS: dict[str, Callable] = {"logreg": logreg, "mlp": mlp, "cnn": cnn, "lenet": lenet,
                               "vgg": vgg, "resnet": resnet,
                               "rnn": rnn, "lstm": lstm, "rnnrbm": rnnrbm, "autoencoder": autoencoder, "rbm": rbm,
                               "sda": sda, "dbn": dbn, "knn": knn, "gaussian": gaussian,  # sampler=hmc
                               "custom": Custom("model")}  # model.target=MODULE:ATTR (plugins)

__all__ = ["ACTIVATIONS", "INITS", "MODELS", "PRETRAINING", "RBM", "Autoencoder", "Conv", "ConvNet", "ConvStack",
           "Dense", "DenseLayer", "Gaussian", "NearestNeighbours", "Recurrent", "RnnRbm", "autoencoder", "cnn",
           "conv_matmul", "conv_shift", "conv_shift_matmul", "conv_xla", "dbn", "free_energy",
           "kernel_init", "knn", "lenet", "logreg", "lstm", "max_pool_ceil", "mlp",
           "pretraining_phases", "pretraining_settings", "rbm", "resnet", "rnn", "rnnrbm", "sda", "vgg"]
