"""Print the README's methods table from the runs of scripts/methods_table.sh.

Usage: .venv/bin/python scripts/methods_table.py outputs/methods
One row per preset: what the seed documents or DLT report on MNIST (from the preset's comment),
the result here on Fashion-MNIST (test accuracy for classifiers, the test reconstruction
cross-entropy for autoencoders and RBMs), epochs run (and whether early stopping ended the
run), wall seconds of the whole command.
"""
import json
import sys
from pathlib import Path

import yaml

REPORTED = {  # preset -> what the seed documents / DLT report on MNIST (SPEC.md sections 3, 5)
    "knn": "no figure (seed); K-NN with deformations 0.52 % err (slides' table)",
    "slides_logreg_fullbatch": "about 8 % err (slides)",
    "slides_tanh_mlp": "about 2 % err on 5k points (slides)",
    "dlt_logreg": "7.489 % err (DLT)",
    "dlt_mlp": "1.65 % err (DLT)",
    "dlt_lenet": "0.92 % err (DLT)",
    "dlt_da": "filters only (DLT)",
    "dlt_sda": "1.3 % err (DLT)",
    "dlt_rbm": "filters, samples, pseudo-likelihood (DLT)",
    "dlt_dbn": "1.34 % err (DLT)",
    "seq_lstm": "no MNIST figure",
}


def row(run_dir: Path) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    caps = [o for o in overrides if o.startswith(("train.epochs=", "model.pretrain_epochs="))]
    final = s["final"]
    if "test_error" in final:
        result = f"{100 * (1 - final['test_error']):.2f} % acc"
    else:
        result = f"recon. x-ent {final['test_loss']:.1f}, mse {final['test_mse']:.4f}"
        if "test_pseudo_ll" in final:
            result += f", pseudo-LL {final['test_pseudo_ll']:.1f}"
    stopped = (s.get("early_stopping") or {}).get("stopped_at_epoch")
    epochs = f"{s['epochs']}" + (" (early stop)" if stopped else "")
    if s.get("pretraining"):
        epochs += f" + {len(s['pretraining'])}x{cfg['model']['pretrain_epochs']} pretraining"
    note = f" (capped: {' '.join(caps)})" if caps else ""
    return (f"| `{run_dir.name}` | {cfg['model']['name']} | {REPORTED.get(run_dir.name, '-')} | "
            f"{result} | {epochs}{note} | {s['timings']['total_seconds']:.0f} |")


if __name__ == "__main__":
    root = Path(sys.argv[1])
    print("| preset | model | reported on MNIST | here, Fashion-MNIST test | epochs | wall s |")
    print("|---|---|---|---|---|---:|")
    for name in REPORTED:
        if (root / name / "summary.json").is_file():
            print(row(root / name))
