"""Using a finished run: reading it and rebuilding its model, for `dlrun-eval RUN_DIR`
(dlrun.cli.eval) and `dlrun-predict RUN_DIR IMAGES...` (dlrun.cli.predict).

A run directory (see docs/guide.md, "What a run writes") holds everything needed to rebuild its model:
run.json (the resolved config, the run format and the dlrun version), params.pkl (the final
parameters; the best epoch's under early stopping) and, with `dataset.preprocess`,
preprocess.npz (the transform fitted on its training split). `load_run` checks the directory
and reads them; the model is rebuilt from the config with dlrun.train.build_setup, exactly as
training built it, and the transform is applied as training applied it.

  dlrun-eval     evaluates the run on a split of its dataset (or of another): the objective's
                 metrics (classifiers: error and loss; autoencoders, RBMs: reconstruction
                 metrics), printed, and written with a confusion matrix (classifiers) as
                 eval.json, confusion_matrix.csv and confusion_matrix.png into
                 RUN_DIR/eval/<dataset>-<split>/ (or --out)
  dlrun-predict  classifies image files (PNG, JPEG, anything Pillow reads) and .npy arrays,
                 one line per image: `path[index]: label L (p=0.97)`

Images are made to look like the training data (`prepare_image`): grayscale, inverted if the
background is light (MNIST digits are white on black; decided by the mean of the border
pixels), scaled to [0, 1]. An image of exactly 28x28 pixels is taken as it is (it is assumed to
be laid out like MNIST already, e.g. a digit saved from the data set). Any other size is
normalised the way MNIST itself was made: the bounding box of the ink is resized (aspect kept,
antialiased) to fit in 20x20 pixels and placed in a 28x28 field so that its centre of mass is
at the centre. .npy arrays must already be 28x28 images (uint8 0-255 or floats 0-1) and are
taken as they are.

Every problem the user can fix (a missing or incomplete run, another run format, an unreadable
image, a wrong array shape) is one line `dlrun-eval: error: ...` / `dlrun-predict: error: ...`
with exit code 2, and nothing is written. The checks come before JAX is imported, so a refusal
is quick.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from dlrun.runs import layout
from dlrun import __version__
from dlrun.runs.checkpoints import FORMAT, read_run_info
from dlrun.errors import ConfigError, FileError
from dlrun.runs.atomic import load_arrays

if TYPE_CHECKING:
    from dlrun.data.arrays import DataInfo

BOX = 20  # MNIST's digits fit in a 20x20 box, centred by mass in 28x28
SPLITS = ("test", "val", "train")
PARAMS = ("final", "best", "checkpoint")  # --params: params.pkl, best_params.pkl, newest checkpoint
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


# ---- the run directory -------------------------------------------------------------------------
@dataclass
class FinishedRun:
    dir: Path
    config: dict  # the resolved config, as one copy trains it (train.num_seeds = 1)
    params: Optional[dict]  # params.pkl or best_params.pkl; None: the newest checkpoint's
    data: "DataInfo"  # the dataset's description (input shape, classes) from run.json
    transform: Optional[object] = None  # dlrun.data.preprocess.Transform (preprocess.npz), if any
    which: str = "final"  # PARAMS
    info_dir: Optional[Path] = None  # the directory holding run.json (a copy's: the one above)

    @property
    def model_name(self) -> str:
        return str(self.config["model"]["name"])

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"]["name"])


def load_run(run_dir: str | Path, which: str = "final") -> FinishedRun:
    """Check that `run_dir` is a run this dlrun can read, and read it (JAX is imported only for
    a run with preprocess.npz). which: final (params.pkl of a finished run), best
    (best_params.pkl, written after every improving epoch) or checkpoint (the newest
    checkpoint, read by Model; for a run that stopped early)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise FileError(f"{run_dir} is not a directory; give a run directory, e.g. "
                        f"outputs/<date>/<time>-<id>")
    info_dir, config, info = run_info(run_dir)
    if config.get("model", {}).get("name") == "gaussian":
        raise FileError(f"{run_dir} is a model=gaussian run (HMC's target): nothing was trained; "
                        f"its figures are in {run_dir / layout.SUMMARY}")
    if which == "final" and not (run_dir / layout.SUMMARY).is_file():
        from dlrun.runs.checkpoints import is_locked
        if is_locked(info_dir):
            raise FileError(f"{run_dir} is incomplete: a dlrun process is training it right now; "
                            f"wait for it to finish (or use --params best or checkpoint)")
        raise FileError(f"{run_dir} is incomplete: it has no summary.json (still training, or "
                        f"stopped before it finished); resume it with: dlrun resume="
                        f"{info_dir.resolve()}, or use --params best or checkpoint")
    params = None
    if which != "checkpoint":
        name = layout.PARAMS if which == "final" else layout.BEST_PARAMS
        if which == "best" and not (run_dir / name).is_file():
            raise FileError(f"{run_dir} has no {name} yet (no epoch evaluated); use --params "
                            f"checkpoint")
        params = load_arrays(run_dir / name)
    transform = None
    if (info_dir / layout.PREPROCESS).is_file() or \
            config.get("dataset", {}).get("preprocess", "none") != "none":
        from dlrun.data.preprocess import Transform
        transform = Transform.load(info_dir / layout.PREPROCESS)
    return FinishedRun(run_dir, config, params, data_info(info, config, run_dir), transform, which,
                       info_dir)


def run_info(run_dir: Path) -> tuple[Path, dict, dict]:
    """(the directory holding run.json, the config of this run or copy, run.json)."""
    copy_seed = None
    info_dir = run_dir
    if not (run_dir / layout.RUN_INFO).exists() and run_dir.name.startswith("seed_") \
            and (run_dir.parent / layout.RUN_INFO).exists():  # one copy of train.num_seeds > 1
        info_dir, copy_seed = run_dir.parent, run_dir.name[len("seed_"):]
    info = read_run_info(info_dir)
    if info.get("format") != FORMAT:
        raise FileError(f"{run_dir} was written by dlrun {info.get('dlrun', '?')} (run format "
                        f"{info.get('format', '?')}); this dlrun {__version__} reads run format "
                        f"{FORMAT}: use the dlrun version that wrote it")
    config = info["config"]
    copies = int(config.get("train", {}).get("num_seeds", 1))
    if copies > 1 and copy_seed is None:
        names = sorted(p.name for p in run_dir.glob("seed_*") if p.is_dir()) or [
            f"seed_{int(config['train']['seed']) + i}" for i in range(copies)]
        raise FileError(f"{run_dir} holds {copies} copies (train.num_seeds={copies}), each in a "
                        f"directory of its own; give one of them: "
                        + ", ".join(str(run_dir / n) for n in names))
    if copy_seed is not None:
        try:
            seed = int(copy_seed)
        except ValueError:
            raise FileError(f"{run_dir} is not a copy directory seed_<seed> of its run") from None
        config = {**config, "train": {**config["train"], "seed": seed, "num_seeds": 1, "lrs": []}}
    return info_dir, config, info


def data_info(info: dict, config: dict, run_dir: Path):
    """The dataset description run.json keeps (input shape, classes): the model is rebuilt
    without reading the training data."""
    from dlrun.data.arrays import DataInfo
    try:
        return DataInfo.from_dict(info["data"])
    except (KeyError, TypeError, ValueError):
        raise FileError(f"{run_dir / layout.RUN_INFO} has no readable dataset description "
                        f"('data'); it is damaged or from another dlrun version") from None


class Model:
    """A run's model with its parameters, rebuilt as training built it (imports JAX)."""

    def __init__(self, run: FinishedRun):
        import dataclasses

        import jax
        from omegaconf import OmegaConf

        from dlrun import models, train

        self.run = run
        try:  # build_setup is pure: no process is joined, no mesh built, no logger imported
            setup = train.build_setup(OmegaConf.create(run.config), data=run.data)
        except ConfigError as exc:
            raise FileError(f"cannot rebuild the model of {run.dir} from its run.json ({exc}); "
                            f"it is damaged or from another dlrun version") from None
        setup = dataclasses.replace(setup, transform=run.transform)
        if setup.train.compile_cache:
            from dlrun.data import sources as datasets
            from dlrun.runtime.compile_cache import enable_compile_cache
            enable_compile_cache(datasets.default_cache_dir() / "xla")
        self.setup, self.model, self.data = setup, setup.model, run.data
        self.objective = setup.objective.name
        self.knn = isinstance(self.model, models.NearestNeighbours)
        if self.knn:
            if set(run.params or {}) != {"train_x", "train_y"}:
                raise FileError(f"{run.dir / 'params.pkl'} is not a knn run's memory (train_x, "
                                f"train_y); it is damaged or from another dlrun version")
            self.variables = None
            return
        blank = train.init_state(setup, jax.random.key(0))
        extra = dict(blank.extra)
        if "frozen" in extra:
            raise FileError(f"{run.dir} is a pretraining phase of a stacked model (its lower "
                            f"layers are not in its params.pkl); evaluate the run directory "
                            f"above it")
        self.variables = train.loaded_variables(blank, self._params(train.saved_params(blank)))

    def _params(self, blank: dict) -> dict:
        """The run's parameters (params.pkl, best_params.pkl or the newest checkpoint's), with
        the shapes of the model run.json describes."""
        import jax

        run, params = self.run, self.run.params
        if params is None:  # --params checkpoint
            from dlrun.train.start import checkpoint_params
            params, meta = checkpoint_params(self.setup, run.dir)
            self.checkpoint_epoch = meta.get("epoch")
        shapes = lambda tree: jax.tree.map(np.shape, tree)  # noqa: E731
        if shapes(params) != shapes(blank):
            raise FileError(f"{run.dir / 'params.pkl'} does not hold the parameters of the model "
                            f"its run.json describes ({run.model_name}); it is damaged or from "
                            f"another dlrun version")
        return jax.tree.map(jax.numpy.asarray, params)

    def _features(self, x):
        """(B, H, W, C) float32 pixels -> the model's input (the run's transform applied)."""
        return x if self.setup.transform is None else self.setup.transform(x)

    def logits(self, variables: dict, x):
        """The model's logits for pixels x, in eval mode, with the run's test-time augmentation
        (train.tta) and transform."""
        from dlrun import train
        from dlrun.train.evaluate import model_input
        return train.eval_output(model_input(self.model, self.setup.transform), variables, x,
                                 self.setup.train.tta)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) float32 in [0, 1], the run's input shape (a text run: (N, T) int32
        token ids) -> (N, classes) class probabilities (knn: neighbour votes)."""
        import jax
        import jax.numpy as jnp

        batch, k = self.setup.train.eval_batch_size, self.data.num_classes
        if self.knn:
            memory = np.asarray(self.run.params["train_x"])
            memory_x = self._features(jnp.asarray(memory, jnp.float32) / (255.0 if memory.dtype == np.uint8 else 1.0))
            memory_x = memory_x.reshape(memory_x.shape[0], -1)
            memory_y = jnp.asarray(self.run.params["train_y"])
            # arguments, not constants: a memorised MNIST (188 MB) must not be compiled in
            fn = jax.jit(lambda args, q: jax.nn.one_hot(self.model.predict(
                *args, self._features(q).reshape(q.shape[0], -1)), k))
            args = (memory_x, memory_y)
        else:
            fn = jax.jit(lambda variables, q: jax.nn.softmax(self.logits(variables, q), -1))
            args = self.variables
        x = np.asarray(images)
        x = x if x.dtype == np.int32 else x.astype(np.float32)  # token ids stay int32
        return np.concatenate([np.asarray(fn(args, jnp.asarray(x[s:s + batch])))
                               for s in range(0, len(x), batch)] or [np.zeros((0, k), np.float32)])
