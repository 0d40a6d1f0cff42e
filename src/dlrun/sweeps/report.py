"""The sweep report: `dlrun-report PATH`, and automatically at the end of every `dlrun -m`.

Reads every run under PATH (a sweep directory, a single run, or any folder of runs such as
outputs/) and writes into PATH:

  report.md    configurations ranked by the chosen metric, mean ± std over seeds of the final and
               best validation/test error (or loss), epochs and time; then one row per run
  report.csv   the configuration table, one row per configuration, plain numbers
  runs.csv     the run table: directory, status, seed, epochs, final and best values
  report.png   validation (else test) error per epoch of the best configurations, mean over
               seeds with a ±std band

A *run* is a directory with run.json (written when training starts). The copies of a vmapped
run (`train.num_seeds`, `train.lrs`) in seed_<seed>/ are runs of their own, with train.seed and
optim.lr set to the copy's. A *configuration* is a run's resolved config without train.seed and
the keys that do not change what is trained (dlrun.sweeps.reading.IGNORED); its label is the keys that vary across
the runs found, e.g. `optim.lr=0.01 model=cnn` (keys of a group that follow from the group's
option, like model.hidden when model varies, are left out of the label).

Status of a run: `done` (summary.json written), `pruned@E` (stopped by prune.enabled at epoch
E), `running` (another process holds the run's lock), `stopped` (no summary and nobody training
it: crashed, killed or interrupted; `dlrun ... resume=true` continues it if it has a
checkpoint). Incomplete runs report the epochs they reached; the mean ± std columns use done
runs only, or, for a configuration with none done, whatever its runs reached (marked `*`).
"""
import argparse
import csv
import io
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dlrun.runs import ownership
from dlrun.errors import FileError
from dlrun.runs.atomic import atomic_write_text
from dlrun.sweeps.reading import SweepRun, find_runs, finite, ignored

METRICS = ("final_val", "best_val", "final_test", "best_test")  # --metric choices
TOP_CURVES = 5  # configurations drawn in report.png
OUTPUTS = ("report.md", "report.csv", "runs.csv", "report.png")  # what a report writes
HEADING = "# Sweep report: "  # report.md's first line: how an earlier report is recognised


# ---- configurations ------------------------------------------------------------------------
@dataclass
class Config:
    label: str
    settings: dict  # the varying keys shown in the label -> value
    runs: list

    def values(self, which: str) -> tuple[list[float], bool]:
        """The runs' values of `which`: of done runs, else (partial=True) of any run."""
        done = [r.value(which) for r in self.runs if r.status == "done"]
        done = [v for v in done if v is not None]
        if done:
            return done, False
        return [v for v in (r.value(which) for r in self.runs) if v is not None], True


def shown_keys(configs: list[dict]) -> list[str]:
    """The keys whose values differ between the configurations, without those that follow
    from a varying group option (model.hidden when model.name varies and is the same within
    each model)."""
    keys = sorted({k for c in configs for k in c})
    text = lambda c, k: json.dumps(c.get(k, "<absent>"), sort_keys=True, default=str)
    vary = [k for k in keys if len({text(c, k) for c in configs}) > 1]
    shown = []
    for key in vary:
        group, _, leaf = key.partition(".")
        if leaf != "name" and f"{group}.name" in vary:
            within = defaultdict(set)
            for c in configs:
                within[text(c, f"{group}.name")].add(text(c, key))
            if all(len(v) == 1 for v in within.values()):
                continue
        shown.append(key)
    return shown


def label_of(settings: dict) -> str:
    parts = []
    for key, value in settings.items():
        name = key[:-5] if key.endswith(".name") else key
        parts.append(f"{name}={'-' if value is None else value}")
    return " ".join(parts) or "(one configuration)"


def group_runs(runs: list[SweepRun]) -> list[Config]:
    """Runs with equal configurations (up to IGNORED) together, in order of first appearance."""
    identity = lambda r: json.dumps({k: v for k, v in r.config.items() if not ignored(k)},
                                    sort_keys=True, default=str)
    groups: dict[str, list[SweepRun]] = {}
    for run in runs:
        groups.setdefault(identity(run), []).append(run)
    members = list(groups.values())
    firsts = [{k: v for k, v in g[0].config.items() if not ignored(k)} for g in members]
    keys = shown_keys(firsts)
    out = []
    for first, group in zip(firsts, members):
        settings = {k: first.get(k) for k in keys}
        out.append(Config(label_of(settings), settings, group))
    return out


def dataset_of(c: Config) -> str:
    return str(c.runs[0].config.get("dataset.name", "?"))


def rank_per_dataset(configs: list[Config], metric: str) -> list[Config]:
    """Ranked within each dataset (errors on different data do not compare), the datasets in
    order of first appearance."""
    order = list(dict.fromkeys(dataset_of(c) for c in configs))
    return [c for name in order for c in rank([c for c in configs if dataset_of(c) == name], metric)]


def rank(configs: list[Config], metric: str) -> list[Config]:
    """Sorted by the mean of `metric` (lowest first); a missing val falls back to test."""
    def key(c: Config):
        values, partial = c.values(metric)
        if not values and metric.endswith("_val"):
            values, partial = c.values(metric.replace("_val", "_test"))
        return (not values, partial, float(np.mean(values)) if values else math.inf)
    return sorted(configs, key=key)


# ---- writing -------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def fmt(value: Optional[float], metric: str) -> str:
    if value is None:
        return ""
    return f"{100 * value:.2f}" if metric == "error" else f"{value:.4g}"


def status_counts(runs: list[SweepRun]) -> str:
    counts = defaultdict(int)
    for r in runs:
        counts[r.status.split("@")[0]] += 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def config_rows(configs: list[Config]) -> list[dict]:
    rows, rank_in = [], defaultdict(int)
    for c in configs:
        rank_in[dataset_of(c)] += 1
        row = {"rank": rank_in[dataset_of(c)], "dataset": dataset_of(c), "config": c.label,
               **{k: c.settings[k] for k in c.settings},
               "runs": len(c.runs), "status": status_counts(c.runs),
               "seeds": " ".join(str(r.config.get("train.seed")) for r in c.runs),
               "metric": c.runs[0].metric}
        for which in METRICS:
            values, partial = c.values(which)
            row[f"{which}_mean"], row[f"{which}_std"] = mean_std(values)
            row[f"{which}_partial"] = partial if values else None
        epochs = [len([h for h in r.history if "epoch" in h]) for r in c.runs]
        row["epochs_mean"] = float(np.mean(epochs)) if epochs else None
        seconds = [r.summary["timings"]["total_seconds"] for r in c.runs
                   if r.summary and r.summary.get("timings")]
        row["total_seconds_mean"] = float(np.mean(seconds)) if seconds else None
        train_s = [sum(h.get("epoch_seconds", 0.0) for h in r.history) for r in c.runs]
        row["train_seconds_mean"] = float(np.mean(train_s)) if train_s else None
        rows.append(row)
    return rows


def run_rows(configs: list[Config], root: Path) -> list[dict]:
    rows = []
    for c in configs:
        for r in c.runs:
            rel = os.path.relpath(r.dir, root) if r.dir != root else "."
            rows.append({"run": rel, "config": c.label, "seed": r.config.get("train.seed"),
                         "status": r.status, "epochs": len(r.history), "metric": r.metric,
                         **{which: r.value(which) for which in METRICS}})
    return rows


def csv_text(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def markdown(root: Path, rows: list[dict], runs: list[dict], metric: str) -> str:
    unit = " (%)" if all(r["metric"] == "error" for r in rows) else ""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    apart = f", each dataset apart ({', '.join(datasets)})" if len(datasets) > 1 else ""
    lines = [f"{HEADING}{root}", "",
             f"{len(runs)} run(s) in {len(rows)} configuration(s), ranked by {metric} "
             f"(lowest first){apart}. Values{unit}: mean ± std over the configuration's done runs "
             f"(`*`: none done yet, over what its runs reached)."]
    for name in datasets:
        if len(datasets) > 1:
            lines += ["", f"## Dataset {name}"]
        lines += [""] + config_table([r for r in rows if r["dataset"] == name])
    lines += ["", "## Runs", "", "| run | configuration | seed | status | epochs | final val | "
              "best val | final test | best test |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['config']} | {r['seed']} | {r['status']} | {r['epochs']} | "
                     + " | ".join(fmt(r[w], r["metric"]) for w in METRICS) + " |")
    return "\n".join(lines) + "\n"


def config_table(rows: list[dict]) -> list[str]:
    """The ranked configurations of one dataset as markdown table lines."""
    cell = lambda row, w: ("" if row[f"{w}_mean"] is None else
                           f"{fmt(row[f'{w}_mean'], row['metric'])} ± {fmt(row[f'{w}_std'], row['metric'])}"
                           + (" *" if row[f"{w}_partial"] else ""))
    lines = ["| rank | configuration | runs | status | final val | best val | final test | "
             "best test | epochs | train s | total s |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['rank']} | {row['config']} | {row['runs']} | {row['status']} | "
            + " | ".join(cell(row, w) for w in ("final_val", "best_val", "final_test", "best_test"))
            + f" | {row['epochs_mean']:.1f} | "
            + ("" if row["train_seconds_mean"] is None else f"{row['train_seconds_mean']:.2f}")
            + " | " + ("" if row["total_seconds_mean"] is None else f"{row['total_seconds_mean']:.1f}")
            + " |")
    return lines


def curves_png(configs: list[Config], path: Path) -> None:
    """Validation (else test) metric per epoch of the first TOP_CURVES configurations."""
    from dlrun.runs.pictures import _figure, _save

    fig = _figure(7, 4.5)
    ax = fig.subplots()
    metric = configs[0].runs[0].metric
    for c in configs[:TOP_CURVES]:
        key = c.runs[0].select
        by_epoch = defaultdict(list)
        for r in c.runs:
            for h in r.history:
                if finite(h.get(key)):
                    by_epoch[h["epoch"]].append(h[key] * (100 if metric == "error" else 1))
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        mean = np.array([np.mean(by_epoch[e]) for e in epochs])
        std = np.array([np.std(by_epoch[e]) for e in epochs])
        line, = ax.plot(epochs, mean, marker="." if len(epochs) < 30 else None,
                        label=f"{c.label} ({key.split('_')[0]}, n={len(c.runs)})"[:90])
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)" if metric == "error" else metric)
    if metric == "error":
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def write_report(root: str | os.PathLike, metric: str = "final_val", plot: bool = True,
                 out: str | os.PathLike | None = None) -> list[dict]:
    """Write report.md, report.csv, runs.csv (and report.png) into `out` (default: `root`);
    return the ranked configuration rows. Works on finished, running and crashed sweeps alike."""
    root = Path(root)
    out = Path(out) if out is not None else root
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no dlrun runs under {root} (no run.json found)")
    if out.exists() and not out.is_dir():
        raise FileError(f"--out {out} is a file; give a directory (new or holding an earlier report)")
    if out.is_dir():  # an earlier report is replaced; a user's file of the same name never is
        ownership.check_replaceable(out, OUTPUTS, "report.md",
                                    lambda p: p.read_text(errors="replace").startswith(HEADING),
                                    "dlrun-report")
    ownership.mkdirs(out)
    configs = rank_per_dataset(group_runs(runs), metric)
    rows = config_rows(configs)
    per_run = run_rows(configs, root)
    atomic_write_text(out / "report.csv", csv_text(rows))
    atomic_write_text(out / "runs.csv", csv_text(per_run))
    atomic_write_text(out / "report.md", markdown(root, rows, per_run, metric))
    if plot and any(r.history for r in runs):
        curves_png(configs, out / "report.png")
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    """`dlrun-report PATH [--metric M] [--no-plot]`: bad input is one line and exit 2."""
    parser = argparse.ArgumentParser(
        prog="dlrun-report", description="Summarise the runs of a sweep (or any folder of dlrun "
        "runs) into report.md, report.csv, runs.csv and report.png inside it.")
    parser.add_argument("path", help="a sweep directory (outputs/multirun/<date>/<time>), a run, "
                                     "or any folder holding runs")
    parser.add_argument("--metric", choices=METRICS, default="final_val",
                        help="rank configurations by this mean (default: final_val; a "
                             "configuration without a validation split falls back to test)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw report.png")
    parser.add_argument("--out", metavar="DIR", help="write the report files into DIR (made if "
                        "missing) instead of PATH: for a folder of runs that is not yours to write")
    args = parser.parse_args(argv)
    path = Path(args.path)
    if not path.is_dir():
        parser.exit(2, f"dlrun-report: error: {path} is not a directory; give a sweep directory "
                       f"such as outputs/multirun/<date>/<time>\n")
    try:
        rows = write_report(path, args.metric, plot=not args.no_plot, out=args.out)
    except FileNotFoundError as exc:
        parser.exit(2, f"dlrun-report: error: {exc}; give the directory a sweep or run wrote\n")
    except FileError as exc:
        parser.exit(2, f"dlrun-report: error: {exc}\n")
    except OSError as exc:
        parser.exit(2, f"dlrun-report: error: cannot write into {path} ({exc.strerror or exc})\n")
    firsts = [r for r in rows if r["rank"] == 1]  # one per dataset
    for best in firsts:
        on = f" on {best['dataset']}" if len(firsts) > 1 else ""
        print(f"{len(rows)} configuration(s); best by {args.metric}{on}: {best['config']} "
              f"({best['status']})")
    print(f"report: {(Path(args.out or path) / 'report.md').resolve()}")


if __name__ == "__main__":
    main(sys.argv[1:])
