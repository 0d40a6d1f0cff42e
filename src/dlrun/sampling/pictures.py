"""The sampler's pictures (sampler=hmc, `plots: true`), drawn with matplotlib's Agg canvas like
dlrun.runs.pictures and written atomically.

  hmc_trace.png    per move: the step size, the fraction of chains accepted with DLT's running
                   average and the target, the chains' mean energy (-log density); the burn-in
                   shaded
  hmc_samples.png  model=gaussian: the kept samples of the first two dimensions, with the
                   target's mean and its 1 and 2 standard-deviation ellipses; model=rbm: one
                   row per chain (at most 10) of 10 kept samples, evenly spaced, as images
"""
from pathlib import Path

import numpy as np

from dlrun.runs import pictures as plots
from dlrun.sampling.hmc import HMCConfig, Trace


def trace(t: Trace, cfg: HMCConfig, path: Path, title: str = "") -> None:
    """hmc_trace.png of a run's Trace (numpy arrays, one entry per move)."""
    fig = plots._figure(7.0, 6.0)
    axes = fig.subplots(3, 1, sharex=True)
    moves = np.arange(1, len(t.step) + 1)
    axes[0].plot(moves, t.step, lw=1)
    axes[0].set_ylabel("step size")
    axes[1].plot(moves, t.accepted, lw=0.5, alpha=0.4, label="fraction of chains accepted")
    axes[1].plot(moves, t.avg, lw=1, label="running average (DLT)")
    axes[1].axhline(cfg.target_acceptance, color="k", ls="--", lw=0.8, label="target")
    axes[1].set_ylabel("acceptance")
    axes[1].legend(fontsize=7, loc="lower right")
    axes[2].plot(moves, t.energy, lw=1)
    axes[2].set_ylabel("mean energy (-log density)")
    axes[2].set_xlabel("move")
    for ax in axes:
        ax.axvspan(0, cfg.burnin, color="0.9", lw=0)
    axes[0].set_title(title or f"HMC, {cfg.chains} chains (burn-in shaded)", fontsize=9)
    plots._save(fig, path)


def gaussian_scatter(samples: np.ndarray, mu: np.ndarray, cov: np.ndarray, path: Path,
                     title: str = "") -> None:
    """The kept samples (N, D) in their first two dimensions against the target's ellipses."""
    fig = plots._figure(5.0, 5.0)
    ax = fig.subplots()
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.3, label=f"{len(samples)} samples")
    values, vectors = np.linalg.eigh(cov[:2, :2])
    circle = np.stack([np.cos(np.linspace(0, 2 * np.pi, 200)), np.sin(np.linspace(0, 2 * np.pi, 200))])
    for k in (1, 2):
        ellipse = mu[:2, None] + k * vectors @ (np.sqrt(values)[:, None] * circle)
        ax.plot(*ellipse, color="k", lw=0.8, ls="-" if k == 1 else "--")
    ax.plot(*mu[:2], "k+", ms=12, label="target mean (1, 2 sd)")
    ax.plot(*samples[:, :2].mean(0), "rx", ms=10, label="sample mean")
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    ax.legend(fontsize=7)
    ax.set_title(title or "HMC samples", fontsize=9)
    plots._save(fig, path)


def image_samples(samples: np.ndarray, image_shape: tuple, path: Path) -> None:
    """samples (S, C, D) of images in [0, 1]: a row per chain (at most 10) of 10 evenly spaced
    kept samples, the last one the chain's final position."""
    s, c = samples.shape[:2]
    picked = np.unique(np.linspace(0, s - 1, min(10, s)).round().astype(int))
    rows = samples[picked][:, :10].transpose(1, 0, 2)  # (chains, columns, D)
    images = plots.drawable(rows.reshape(-1, *image_shape))
    plots.write_png(path, plots.tile(images, len(picked), scale_each=False,
                                     zoom=plots.zoom_for(min(image_shape[:2]))))
