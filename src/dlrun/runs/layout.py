"""The run directory: the name of every file and folder dlrun writes into one, and its readers.

    run.json          the config, its hash and dlrun's version (written first; RUN_INFO)
    metrics.jsonl     one record per epoch (METRICS)
    params.pkl        the final parameters (the best epoch's under early stopping) (PARAMS)
    best_params.pkl   the parameters of the best epoch on the selection split (BEST_PARAMS)
    summary.json      final and best records, timings, device, versions, data (SUMMARY)
    preprocess.npz    the fitted dataset.preprocess transform (PREPROCESS)
    vocab.json        a text dataset's vocabulary and tokenizer settings (VOCAB)
    checkpoints/      Orbax checkpoints of the whole training state (CHECKPOINTS)
    dlrun.log         the run's log (LOG)
    seed_<seed>/      one complete run per copy of train.num_seeds > 1 (copy_dir)
    pretrain_<i>/     one complete run per pretraining phase of sda/dbn (phase_dir)
    eval.json         dlrun-eval's record, with confusion_matrix.csv/.png (EVAL)
    samples/          model=rnnrbm: generated sequences as MIDI files (MIDI_SAMPLES), and
    piano_rolls.png   their picture beside a test piece (PIANO_ROLLS)
    samples.npz       sampler=hmc: the kept samples, the step-size and acceptance traces (SAMPLES),
                      drawn in hmc_samples.png and hmc_trace.png (HMC_SAMPLES, HMC_TRACE)
    .hydra/           Hydra's record of the composed config (HYDRA)
"""
import json
from pathlib import Path

RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
PARAMS = "params.pkl"
BEST_PARAMS = "best_params.pkl"
SUMMARY = "summary.json"
PREPROCESS = "preprocess.npz"
VOCAB = "vocab.json"
CHECKPOINTS = "checkpoints"
LOG = "dlrun.log"
EVAL = "eval.json"
MIDI_SAMPLES = "samples"
PIANO_ROLLS = "piano_rolls.png"
SAMPLES = "samples.npz"
HMC_SAMPLES = "hmc_samples.png"
HMC_TRACE = "hmc_trace.png"
HYDRA = ".hydra"
COPY_DIR = "seed_{seed}"
PHASE_DIR = "pretrain_{i}"


def copy_dir(run_dir: Path, seed: int) -> Path:
    """The run directory of the copy with this seed (train.num_seeds > 1)."""
    return Path(run_dir) / COPY_DIR.format(seed=seed)


def phase_dir(run_dir: Path, i: int) -> Path:
    """The run directory of pretraining phase i (sda, dbn)."""
    return Path(run_dir) / PHASE_DIR.format(i=i)


def has_summary(run_dir: Path) -> bool:
    """Whether the run finished (summary.json is written last, atomically)."""
    return (Path(run_dir) / SUMMARY).is_file()


def read_summary(run_dir: Path) -> dict:
    """The run's summary.json (OSError if absent, ValueError if not JSON)."""
    return json.loads((Path(run_dir) / SUMMARY).read_text())


def copies(seed: int, num_seeds: int, lr: float, lrs) -> list[tuple[int, float]]:
    """(seed, learning rate) of each copy of train.num_seeds: copy i trains with seed + i at
    lrs[i % len(lrs)] (a seeds x learning rates grid), or at lr when lrs is empty, and writes
    copy_dir(run_dir, seed). The one place the rule is written: the trainer and dlrun-report
    both read it here."""
    return [(seed + i, float(lrs[i % len(lrs)]) if lrs else float(lr)) for i in range(num_seeds)]
