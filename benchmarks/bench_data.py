"""What each dataset source costs: load time, and training throughput on the device against
streamed from the host, in the same process and on the same images (ratios, not absolutes:
these machines are shared).

    .venv/bin/python benchmarks/bench_data.py [--images 20000] [--out benchmarks/data_results.md]

The images are the shipped MNIST sample's digits, tiled to --images and written in every format
(npz uncompressed and compressed, CIFAR python batches at 32x32x3, an image folder of PNGs).
Load time is `describe()` + `load()` in a fresh cache (the image folder: first decode, then the
cached second load). Throughput is training examples per second of model=mlp (hidden [512]) and
model=cnn on the npz, two epochs each, steady state (the second): on the device with loop=auto
(scan for the MLP) and loop=step, and streamed (always loop=step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def tiled(n: int):
    from _userdata import rgb32, sample
    x_train, y_train, x_test, y_test = sample()
    reps = -(-n // len(x_train))
    return (np.tile(x_train, (reps, 1, 1))[:n], np.tile(y_train, reps)[:n], x_test, y_test, rgb32)


def write_all(where: Path, n: int) -> dict:
    import pickle

    from PIL import Image
    x, y, xt, yt, rgb32 = tiled(n)
    np.savez(where / "plain.npz", x_train=rgb32(x), y_train=y, x_test=rgb32(xt), y_test=yt)
    np.savez_compressed(where / "packed.npz", x_train=rgb32(x), y_train=y, x_test=rgb32(xt), y_test=yt)
    cifar = where / "cifar"
    cifar.mkdir()
    rows = lambda a: rgb32(a).transpose(0, 3, 1, 2).reshape(len(a), 3072)  # noqa: E731
    for i, part in enumerate(np.array_split(np.arange(n), 5), 1):
        (cifar / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": rows(x[part]), b"labels": y[part].tolist()}, protocol=2))
    (cifar / "test_batch").write_bytes(pickle.dumps({b"data": rows(xt), b"labels": yt.tolist()}, protocol=2))
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [str(i).encode() for i in range(10)]}, protocol=2))
    folder = where / "folder"
    m = min(n, 5000)  # PNG decoding is the slow part: measured on up to 5,000 + 1,000 files
    for split, xs, ys in (("train", x[:m], y[:m]), ("test", xt, yt)):
        for i, (img, label) in enumerate(zip(xs, ys)):
            (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / split / str(label) / f"{i}.png")
    return {"npz": where / "plain.npz", "npz (compressed)": where / "packed.npz", "cifar": cifar,
            "folder": folder, "folder_images": m + len(xt)}


def load_seconds(node: dict) -> tuple[float, int]:
    from dlrun.config.registry import build
    from dlrun.data import catalog
    t0 = time.perf_counter()
    spec = build("dataset", catalog.DATASETS, node)
    info = spec.describe()
    data = spec.load()
    np.asarray(data.x_train[-1])  # touch the data
    return time.perf_counter() - t0, info.counts[0] + info.counts[2]


def throughput(path: Path, model: list[str], placement: str, work: Path, loop: str = "step") -> float:
    from hydra import compose, initialize_config_module

    from dlrun import train
    with initialize_config_module("dlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["dataset=npz", f"dataset.path={path}", "train.epochs=2",
                                           f"train.loop={loop}", f"dataset.placement={placement}",
                                           "plots=false", "checkpoint.every_minutes=0", *model])
    run = work / f"{model[0]}-{placement}-{time.time_ns()}"
    train.train_and_evaluate(cfg, str(run))
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return last["examples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        os.environ["DLRUN_CACHE_DIR"] = str(where / "cache")
        files = write_all(where, args.images)
        lines = [f"dlrun data sources, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
                 f"{args.images:,} training images (32x32x3 except the image folder's 28x28x1)", "",
                 "| source | load s | images | images / s |", "|---|---:|---:|---:|"]
        cases = [("npz (np.savez, memory-mapped)", {"name": "npz", "path": str(files["npz"])}),
                 ("npz (np.savez_compressed)", {"name": "npz", "path": str(files["npz (compressed)"])}),
                 ("cifar10 batches", {"name": "cifar10", "data_dir": str(files["cifar"])}),
                 ("image_folder, first load (decode PNGs)", {"name": "image_folder", "root": str(files["folder"])}),
                 ("image_folder, cached", {"name": "image_folder", "root": str(files["folder"])})]
        for label, node in cases:
            from dlrun.data import catalog
            catalog._load_once.cache_clear()
            seconds, n = load_seconds(node)
            lines.append(f"| {label} | {seconds:.2f} | {n:,} | {n / seconds:,.0f} |")
        lines += ["", "| model | on device, loop=auto, examples / s | on device, loop=step | streamed "
                      "from host (loop=step) | streamed / device step | streamed / device auto |",
                  "|---|---:|---:|---:|---:|---:|"]
        for model in (["model=mlp", "model.hidden=[512]"], ["model=cnn", "model.features=[16,32,32]"]):
            auto = throughput(files["npz"], model, "device", where, "auto")
            device = throughput(files["npz"], model, "device", where)
            host = throughput(files["npz"], model, "host", where)
            lines.append(f"| {' '.join(model)} | {auto:,.0f} | {device:,.0f} | {host:,.0f} | "
                         f"{host / device:.2f}x | {host / auto:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
