"""`dlrun-export RUN_DIR [--out DIR] [--params final|best|checkpoint]`: the trained model as a
serialized `jax.export` artifact (StableHLO), which runs without dlrun's source.

It writes DIR (default RUN_DIR/export/) with:

  model.jax_export  jax.export.Exported.serialize() of images -> class probabilities: the
                    parameters (and any dataset.preprocess transform) are constants in it; the
                    input is (B, H, W, C) float32 in [0, 1] with B symbolic (any batch size),
                    the output (B, num_classes) float32
  model.json        the input shape, the class names, and how to call it
  vocab.json        a text run's vocabulary (its input is (B, T) int32 token ids, 0 = padding)

Loading needs only jax (the version that exported it, or a later one within jax.export's
compatibility window):

    import jax, numpy as np
    exported = jax.export.deserialize(open("model.jax_export", "rb").read())
    probabilities = exported.call(np.zeros((8, 28, 28, 1), np.float32))
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from dlrun.cli.inference import PARAMS, Model, load_run
from dlrun.errors import DlrunError, FileError
from dlrun.runs import layout

ARTIFACT, CARD = "model.jax_export", "model.json"


def export_model(model: Model):
    """The jax.export.Exported of the run's classifier: images -> probabilities."""
    import jax
    import jax.numpy as jnp

    if model.objective != "classify":
        raise FileError(f"{model.run.dir} is a model={model.run.model_name} run: it learnt no labels; "
                        f"dlrun-export writes classifiers")
    if model.knn:
        params = model.run.params
        memory = jnp.asarray(params["train_x"], jnp.float32)
        memory = memory / 255.0 if params["train_x"].dtype.kind == "u" else memory
        memory = model._features(memory).reshape(memory.shape[0], -1)
        labels = jnp.asarray(params["train_y"])

        def probabilities(x):
            q = model._features(x).reshape(x.shape[0], -1)
            return jax.nn.one_hot(model.model.predict(memory, labels, q), model.data.num_classes)
    else:
        variables = model.variables

        def probabilities(x):
            return jax.nn.softmax(model.logits(variables, x), -1)

    batch = jax.export.symbolic_shape("b")[0]
    dtype = jnp.int32 if model.data.kind == "tokens" else jnp.float32  # token ids, or pixels
    spec = jax.ShapeDtypeStruct((batch, *model.data.image_shape), dtype)
    return jax.export.export(jax.jit(probabilities))(spec)


def input_record(data) -> dict:
    """model.json's description of the input (B, *shape)."""
    if data.kind == "tokens":
        return {"shape": ["batch", *data.image_shape], "dtype": "int32",
                "meaning": "token ids of vocab.json (0 = padding, at the end; 1 = unknown word)"}
    return {"shape": ["batch", *data.image_shape], "dtype": "float32", "range": [0.0, 1.0],
            "layout": "NHWC"}


def card(model: Model, exported) -> dict:
    data = model.data
    return {"run_dir": str(model.run.dir.resolve()), "model": model.run.model_name,
            "dataset": model.run.dataset, "params": model.run.which,
            "input": input_record(data),
            "output": {"shape": ["batch", data.num_classes], "dtype": "float32",
                       "meaning": "class probabilities"},
            "class_names": list(data.class_names),
            "platforms": list(exported.platforms),
            "load": "jax.export.deserialize(open('model.jax_export', 'rb').read()).call(x)"}


def export_main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dlrun-export", description="Write a finished run's classifier as a serialized "
        "jax.export artifact (StableHLO with the parameters inside) that runs without dlrun.")
    parser.add_argument("run_dir", help="a run directory (or its seed_<seed>/ copy)")
    parser.add_argument("--out", help="a new directory to write into (default RUN_DIR/export)")
    parser.add_argument("--params", choices=PARAMS, default="final",
                        help="final (params.pkl, default), best (best_params.pkl) or checkpoint")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        run = load_run(args.run_dir, args.params)
        out = Path(args.out) if args.out else run.dir / "export"
        if out.exists():
            raise FileError(f"{out} already exists; dlrun-export writes a new directory and never "
                            f"replaces files: remove it or give --out NEW_DIR")
        model = Model(run)
        exported = export_model(model)
        payload = exported.serialize()
    except DlrunError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    from dlrun.runs.atomic import atomic_write_bytes, atomic_write_text
    try:
        out.mkdir(parents=True)
        atomic_write_bytes(out / ARTIFACT, bytes(payload))
        atomic_write_text(out / CARD, json.dumps(card(model, exported), indent=1) + "\n")
        if run.data.kind == "tokens":
            atomic_write_bytes(out / layout.VOCAB, (run.info_dir / layout.VOCAB).read_bytes())
    except OSError as exc:
        parser.exit(2, f"{prog}: error: cannot write into {out} ({exc.strerror or exc})\n")
    what = "int32 token ids" if run.data.kind == "tokens" else "float32 in [0, 1]"
    print(f"wrote {out / ARTIFACT} ({len(payload):,} bytes; input (B, "
          f"{', '.join(map(str, run.data.image_shape))}) {what} -> (B, "
          f"{run.data.num_classes}) probabilities) and {out / CARD}")


if __name__ == "__main__":
    export_main(sys.argv[1:])
