"""Sampling from a model's energy: the `sampler` config group. Name -> builder of its settings.

  none  the run trains its model and nothing more (the default)
  hmc   Hybrid Monte Carlo (dlrun.sampling.hmc): BlackJAX's HMC kernel with DLT's shared,
        adaptive step size. model=gaussian (DLT's test target, nothing to train; the run is
        the sampler's, dlrun.train.sample) or model=rbm (after training, from its free energy
        over a continuous relaxation of its visibles, dlrun.sampling.targets)

Which models have an energy is `targets.has_energy`; `check` refuses the rest before anything
runs.
"""
from typing import Callable, Optional

from dlrun.config.registry import require
from dlrun.models.energy import Gaussian
from dlrun.sampling.hmc import HMCConfig, hmc, none
from dlrun.sampling.targets import has_energy

SAMPLERS: dict[str, Callable] = {"none": none, "hmc": hmc}


def check(model_name: str, model, sampler: Optional[HMCConfig], trained_options: list[str]) -> None:
    """The sampler and the model go together: HMC needs an energy, and model=gaussian has
    nothing but a sampler to run, so none of `trained_options` (the training options set,
    e.g. 'early_stopping=patience') apply to it."""
    require(sampler is None or has_energy(model),
            f"sampler=hmc draws from a model's energy, and model={model_name}"
            f"{' with model.below set' if model_name == 'rbm' else ''} has none: use model=rbm "
            f"(a first layer, model.below=[]) or model=gaussian (dlrun +experiment=dlt_hmc)")
    if isinstance(model, Gaussian):
        require(sampler is not None, "model=gaussian has nothing to train: it is a target for "
                                     "sampler=hmc (dlrun +experiment=dlt_hmc)")
        require(not trained_options,
                f"model=gaussian is sampled, not trained: {', '.join(trained_options)} "
                f"{'does' if len(trained_options) == 1 else 'do'} not apply (compare seeds "
                f"with -m sampler.seed=0,1,2)")


__all__ = ["HMCConfig", "SAMPLERS", "check", "hmc", "none"]
