"""Training speed of dlrun on 60,000 28x28 images, against a PyTorch peer (`make bench`).

For the seed's four networks (the radford_* presets: batch 128, their seed optimizers) it
reports, each case measured in its own process (so peak memory is the case's own):
  * steady-state examples per second of dlrun's own training loop (exactly the functions
    `dlrun` runs: build_setup, load_splits, run_keys, make_epoch_runner), the median of the
    epochs after the first, and compile seconds;
  * the same network, batch, optimizer and data trained by a plain PyTorch loop written the
    way its tutorials write it (benchmarks/torch_peer.py, its own process: importing torch here
    would halve JAX's speed), and the ratio dlrun / PyTorch;
  * achieved GFLOP/s (XLA's cost analysis of one training step) and their fraction of the
    machine's limit, a jitted large float32 matmul measured in the same run;
  * peak resident memory of the case's process;
  * `train.num_seeds=8` (8 modern nets in one vmapped program) against one modern net:
    throughput of all copies / throughput of one run = speed-up over 8 sequential runs;
  * time from `dlrun` start to the first training step, second run of the same command
    (persistent compilation cache), and the whole `dlrun +experiment=radford_logreg` command.
Data: Fashion-MNIST when found offline (Debian's dataset-fashion-mnist, or the dlrun cache);
otherwise random images of the same shape (speed does not depend on pixel values), and it says so.

Usage: python benchmarks/bench_epoch.py [--json out.json] [--md out.md] [--only convnet]
       [--skip-commands]
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER = HERE / "torch_peer.py"
DLRUN = shutil.which("dlrun", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                   os.environ.get("PATH", "")])) or "dlrun"
CASES = [  # (label, preset, extra overrides, epochs run (the first is not timed), PyTorch steps)
    ("logreg", "radford_logreg", [], 6, 2000),
    ("net", "radford_net", [], 4, 400),
    ("modern net", "radford_modern_net", [], 4, 300),
    ("modern net, loop=step", "radford_modern_net", ["train.loop=step"], 3, 0),
    ("modern net x8 (num_seeds=8)", "radford_modern_net", ["train.num_seeds=8"], 2, 0),
    ("convnet", "radford_convnet", [], 3, 60),
]
COMMAND_PRESETS = ["radford_logreg", "radford_net", "radford_modern_net", "radford_convnet"]


# ---- one case, in a child process ------------------------------------------------------------
def measure_case(preset: str, overrides: list[str], epochs: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from hydra import compose, initialize_config_module

    from dlrun import train
    from dlrun.data import splits
    from dlrun.runtime.allocator import keep_freed_memory
    from dlrun.errors import DataError

    keep_freed_memory()  # as `dlrun` does, before JAX starts
    with initialize_config_module("dlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}", "dataset=fashion_mnist",
                                           "dataset.val_size=0", *overrides])
    setup = train.build_setup(cfg)
    try:
        split, source = splits.load_splits(setup.dataset, 1000)["train"], "fashion_mnist"
    except DataError:
        r = np.random.default_rng(0)
        x = r.integers(0, 256, (60000, 28, 28, 1), dtype=np.uint8)
        y = r.integers(0, 10, 60000).astype(np.int32)
        split, source = splits.Split(jax.device_put(x), jax.device_put(y), 60000), "random"
    init_key, train_key = train.run_keys(setup, jax.random.key(setup.train.seed))
    run_epoch, compile_s = train.make_epoch_runner(setup, split, train_key)
    state = train.init_states(setup, init_key)
    times = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        state, acc, _ = run_epoch(state, epoch)
        seen = float(np.asarray(acc["examples"]).sum())  # host sync: the epoch is done
        times.append(time.perf_counter() - t0)
    steady = float(np.median(times[1:]))
    # FLOPs of one (unbatched) training step by XLA's cost analysis, times the copies
    one = train.build_setup(compose_single(cfg))
    st = jax.eval_shape(lambda: train.init_state(one, jax.random.key(0)))
    b = setup.train.batch_size
    args = (st, train.epoch_acc(one), split.x, split.y, jnp.arange(b, dtype=jnp.int32), jnp.ones(b),
            jax.random.key(1))
    cost = jax.jit(train.make_train_step(one)).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"]) * setup.copies
    ms = 1000 * steady / setup.steps_per_epoch
    return {"preset": preset, "overrides": overrides, "loop": setup.loop, "data": source,
            "copies": setup.copies, "compile_seconds": compile_s, "epoch_seconds": steady,
            "epochs_timed": epochs - 1, "examples_per_second": seen / steady, "ms_per_step": ms,
            "gflops": flops / ms / 1e6, "peak_rss_mb": peak_rss_mb(),
            "device": f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})"}


def compose_single(cfg):
    from omegaconf import OmegaConf
    single = OmegaConf.create(OmegaConf.to_container(cfg))
    single.train.num_seeds, single.train.lrs = 1, []
    return single


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def matmul_gflops() -> dict:
    """GFLOP/s of a jitted n x n float32 matmul: the practical compute limit of the machine."""
    import jax
    import jax.numpy as jnp
    from dlrun.runtime.allocator import keep_freed_memory
    keep_freed_memory()
    n = 2048 if jax.devices()[0].platform == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    d = jax.devices()[0]
    return {"matmul_gflops": 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9, "matmul_n": n,
            "device": f"{d.platform} ({d.device_kind})", "jax": jax.__version__}


def in_child(fn: str, *args) -> dict:
    """Run one of this file's measurements in a fresh Python process; its JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--child", fn, json.dumps(args)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"bench: {fn}{args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


# ---- the PyTorch peer and whole dlrun commands ----------------------------------------------
def torch_version() -> str | None:
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def torch_ms_per_step(preset: str, steps: int, device: str) -> float:
    proc = subprocess.run([sys.executable, str(PEER), preset, str(steps), device],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])["ms_per_step"]


def dlrun_command(args: list[str], cwd: str) -> dict:
    """Run `dlrun args` as a user does; wall seconds and its summary.json."""
    t0 = time.perf_counter()
    subprocess.run([DLRUN, *args], cwd=cwd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = sorted(Path(cwd).glob("outputs/*/*/summary.json"), key=os.path.getmtime)[-1]
    return {"wall_seconds": wall, "summary": json.loads(summary.read_text())}


def command_timings(cache_dir: str) -> dict:
    """Start to first step of each preset, first and second run of the same command (the
    second loads its programs from the persistent compilation cache), and the whole
    radford_logreg command (100 epochs, errors on train and test after each)."""
    out = {}
    env_cache = os.environ.get("DLRUN_CACHE_DIR")
    from dlrun.data.sources import default_cache_dir  # numpy only: no JAX in this process
    real = default_cache_dir()
    for entry in real.iterdir() if real.is_dir() else ():
        if entry.name != "xla":  # downloaded datasets stay visible; the XLA cache starts cold
            os.symlink(entry, Path(cache_dir) / entry.name)
    os.environ["DLRUN_CACHE_DIR"] = cache_dir
    try:
        with tempfile.TemporaryDirectory() as cwd:
            for preset in COMMAND_PRESETS:
                args = [f"+experiment={preset}", "dataset=fashion_mnist", "train.epochs=1",
                        "dataset.train_subset=2560"]
                runs = [dlrun_command(args, cwd) for _ in range(2)]
                out[preset] = {f"start_to_first_step_{k}": r["summary"]["timings"]["start_to_first_step_seconds"]
                               for k, r in zip(("first", "second"), runs)}
            whole = dlrun_command(["+experiment=radford_logreg", "dataset=fashion_mnist"], cwd)
            out["radford_logreg_command"] = {"wall_seconds": whole["wall_seconds"],
                                             "timings": whole["summary"]["timings"],
                                             "final": whole["summary"]["final"]}
    finally:
        if env_cache is None:
            os.environ.pop("DLRUN_CACHE_DIR", None)
        else:
            os.environ["DLRUN_CACHE_DIR"] = env_cache
    return out


# ---- the report -----------------------------------------------------------------------------
def markdown(results: dict) -> str:
    limit = results["limit"]["matmul_gflops"]
    lines = [f"dlrun training speed, {results['date']}, {results['machine']}, "
             f"{results['limit']['device']}, jax {results['limit']['jax']}, torch "
             f"{results['torch'] or 'not installed'}; jitted {results['limit']['matmul_n']}² "
             f"float32 matmul: {limit:.0f} GFLOP/s", "",
             "| model | loop | compile s | s / epoch | ms / step | examples / s | GFLOP/s | "
             "% of matmul | peak RSS MB | PyTorch ms / step | dlrun / PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in results["cases"].items():
        peer = (f"{r['torch_ms_per_step']:.2f} | **{r['speedup_vs_torch']:.2f}x**"
                if r.get("speedup_vs_torch") else
                (f"- | {r['vs_one_run']:.2f}x one run" if r.get("vs_one_run") else "- | -"))
        lines.append(f"| {label} | {r['loop']} | {r['compile_seconds']:.2f} | {r['epoch_seconds']:.2f} | "
                     f"{r['ms_per_step']:.2f} | {r['examples_per_second']:,.0f} | {r['gflops']:.1f} | "
                     f"{100 * r['gflops'] / limit:.1f} % | {r['peak_rss_mb']:,.0f} | {peer} |")
    data = {r["data"] for r in results["cases"].values()}
    lines.append(f"\nData: {', '.join(sorted(data))}.")
    cmd = results.get("commands")
    if cmd:
        lines += ["", "| command (`dlrun +experiment=... dataset=fashion_mnist`) | start to first step, "
                  "first run | second run (compilation cache) |", "|---|---:|---:|"]
        for preset in COMMAND_PRESETS:
            c = cmd[preset]
            lines.append(f"| {preset} | {c['start_to_first_step_first']:.2f} s | "
                         f"{c['start_to_first_step_second']:.2f} s |")
        w = cmd["radford_logreg_command"]
        t = w["timings"]
        lines.append(f"\nWhole `dlrun +experiment=radford_logreg dataset=fashion_mnist` (100 epochs, "
                     f"train and test error after each): {w['wall_seconds']:.1f} s wall (start to first "
                     f"step {t['start_to_first_step_seconds']:.1f} s, training {t['train_seconds']:.1f} s, "
                     f"evaluation {t['eval_seconds']:.1f} s); final test error "
                     f"{100 * w['final']['test_error']:.2f} %.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--md", help="write the Markdown tables to this file")
    parser.add_argument("--only", help="run only cases whose label contains this")
    parser.add_argument("--skip-commands", action="store_true",
                        help="skip the whole-command timings (start to first step, radford_logreg)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fn, fn_args = args.child
        print(json.dumps({"case": measure_case, "limit": matmul_gflops}[fn](*json.loads(fn_args))))
        return
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "limit": in_child("limit"), "torch": torch_version(), "cases": {}}
    print(f"# matmul limit: {results['limit']['matmul_gflops']:.0f} GFLOP/s on {results['limit']['device']}",
          flush=True)
    torch_ms = {}
    torch_device = "cpu" if results["limit"]["device"].startswith("cpu") else "cuda"
    for label, preset, overrides, epochs, torch_steps in CASES:
        if args.only and args.only not in label:
            continue
        r = in_child("case", preset, overrides, epochs)
        if torch_steps and results["torch"]:
            torch_ms[preset] = torch_ms_per_step(preset, torch_steps, torch_device)
        if r["copies"] == 1 and torch_ms.get(preset):
            r["torch_ms_per_step"] = torch_ms[preset]
            r["speedup_vs_torch"] = torch_ms[preset] / r["ms_per_step"]
        single = results["cases"].get(label.split(" x")[0]) if r["copies"] > 1 else None
        if single:
            r["vs_one_run"] = r["examples_per_second"] / single["examples_per_second"]
        results["cases"][label] = r
        print(f"# {label}: {r['ms_per_step']:.2f} ms/step, {r['examples_per_second']:,.0f} ex/s"
              + (f", {r['speedup_vs_torch']:.2f}x PyTorch" if r.get("speedup_vs_torch") else ""), flush=True)
    if not args.skip_commands and not args.only:
        with tempfile.TemporaryDirectory() as cache:
            results["commands"] = command_timings(cache)
    report = markdown(results)
    print("\n" + report)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(report)


if __name__ == "__main__":
    main()
