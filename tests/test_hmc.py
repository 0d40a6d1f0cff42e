"""Hybrid Monte Carlo (issue 18, sampler=hmc): DLT's Gaussian test reproduced with its own counts,
DLT's step-size rule against a hand computation, determinism, the RBM's relaxation against a
density known in closed form, sampling after training an RBM, the refusals, and the preset from
the command line. In process except the last; BlackJAX is the `hmc` extra."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _config import compose
from conftest import describe, run_dirs
from test_plots import png_shape

from dlrun import train
from dlrun.errors import ConfigError, FileError
from dlrun.models.energy import gaussian
from dlrun.sampling import targets
from dlrun.sampling.hmc import Adaptation, adapt_step, hmc, run_chains
from dlrun.train.sample import MOMENT_TOLERANCE

import blackjax  # noqa: E402,F401 - the hmc extra; make test installs it (missing: an error, not a skip)

DLT_MU = [6.96469186, 2.86139335, 2.26851454, 5.51314769, 7.1946897]  # DLT's doc/hmc.txt output
DLT_COV_ROW0 = [1.0, 0.66197111, 0.71141257, 0.55766643, 0.35753822]
DLT_START_ROW0 = [-0.14006872, -0.8617549, -0.25561937, -2.79858911, -1.7715331]


def test_gaussian_draws_are_dlts():
    mu, cov, start = gaussian(dropout={}).draws(3)
    assert np.allclose(mu, DLT_MU) and np.allclose(cov[0], DLT_COV_ROW0)
    assert np.allclose(start[0], DLT_START_ROW0) and start.shape == (3, 5)
    assert np.linalg.eigvalsh(cov)[0] > 0.15  # DLT's dim=5 covariance is positive definite


def test_dlt_gaussian_test_with_its_own_counts(tmp_path):
    """+experiment=dlt_hmc in process: DLT's assertions (acceptance within 0.1 of 0.9, the step
    in its bounds) and dlrun's bounds on the moments, 1,000 burn-in + 1,000 moves x 3 chains."""
    summary = train.train_and_evaluate(compose("+experiment=dlt_hmc", "plots=true"), str(tmp_path))
    final = summary["final"]
    assert abs(final["acceptance_rate"] - 0.9) < 0.1 and 0.001 <= final["step_size"] <= 0.5
    assert abs(final["kept_acceptance"] - 0.9) < 0.05  # the fraction accepted after the burn-in
    assert final["max_abs_mean_error"] < MOMENT_TOLERANCE and final["max_abs_cov_error"] < MOMENT_TOLERANCE
    assert summary["passed"] and [c["name"] for c in summary["checks"]] == [
        "acceptance_rate", "step_size", "max_abs_mean_error", "max_abs_cov_error"]
    with np.load(tmp_path / "samples.npz") as saved:
        assert saved["samples"].shape == (1000, 3, 5) and saved["trace_step"].shape == (2000,)
        flat = saved["samples"].astype(np.float64).reshape(-1, 5)
        assert np.abs(flat.mean(0) - saved["mu"]).max() == pytest.approx(final["max_abs_mean_error"])
    assert json.loads((tmp_path / "summary.json").read_text())["final"] == final
    assert png_shape(tmp_path / "hmc_samples.png") and png_shape(tmp_path / "hmc_trace.png")
    from dlrun.cli.inference import load_run  # dlrun-eval/-predict/-export: one line, no traceback
    with pytest.raises(FileError, match="model=gaussian run .*: nothing was trained"):
        load_run(tmp_path)


def test_step_rule_matches_a_hand_computation():
    """DLT's hmc_updates: the new step from the old running average, then the new average."""
    cfg = hmc()  # DLT's defaults: target 0.9, inc 1.02, dec 0.98, bounds [0.001, 0.25], slowness 0.9
    up = adapt_step(cfg, Adaptation(jnp.float32(0.1), jnp.float32(0.95)), jnp.array([True, False, True]))
    assert float(up.step) == pytest.approx(0.102) and float(up.avg) == pytest.approx(0.9 * 0.95 + 0.1 * 2 / 3)
    down = adapt_step(cfg, Adaptation(jnp.float32(0.1), jnp.float32(0.9)), jnp.array([True, True, True]))
    assert float(down.step) == pytest.approx(0.098) and float(down.avg) == pytest.approx(0.91)
    assert float(adapt_step(cfg, Adaptation(jnp.float32(0.249), jnp.float32(1.0)), jnp.array([True])).step) \
        == pytest.approx(0.25)  # clipped to step_max
    assert float(adapt_step(cfg, Adaptation(jnp.float32(0.00101), jnp.float32(0.0)), jnp.array([False])).step) \
        == pytest.approx(0.001)  # clipped to step_min


def small_gaussian_run(seed: int, **settings):
    cfg = hmc(burnin=50, samples=30, leapfrog_steps=5, seed=seed, **settings)
    target = targets.gaussian_target(gaussian(dropout={}), cfg.chains)
    return cfg, run_chains(cfg, target.logdensity, target.theta, target.start, jax.random.key(seed))


def test_same_key_same_samples_and_adapt_burnin_freezes_the_step():
    cfg, a = small_gaussian_run(0)
    _, b = small_gaussian_run(0)
    _, c = small_gaussian_run(1)
    assert np.array_equal(a.samples, b.samples) and np.array_equal(a.trace.step, b.trace.step)
    assert not np.array_equal(a.samples, c.samples)
    assert a.samples.shape == (30, 3, 5) and a.trace.step.shape == (80,)
    assert len(np.unique(a.trace.step[cfg.burnin:])) > 1  # adapt=always: DLT adapts every move
    cfg, frozen = small_gaussian_run(0, adapt="burnin", thin=2)
    assert frozen.samples.shape == (30, 3, 5) and frozen.trace.step.shape == (110,)
    assert len(np.unique(frozen.trace.step[cfg.burnin:])) == 1
    assert float(frozen.final.step) == float(frozen.trace.step[-1])


def test_relaxed_rbm_pixels_follow_their_exact_density():
    """With no hidden weights each relaxed pixel has density exp(b v) on [0, 1], mean
    1 / (1 - e^-b) - 1 / b: the change of variables (its Jacobian) is right. Without it the
    chains would drift to 0 or 1."""
    b = np.array([-3.0, 0.5, 2.0, 5.0])
    params = {"hidden_0": {"kernel": np.zeros((4, 2)), "bias": np.zeros(2)}, "visible_0": {"bias": b}}
    cfg = hmc(chains=8, burnin=100, samples=600, leapfrog_steps=10, step_max=0.5)
    target = targets.rbm_target(params, cfg.chains, jax.random.key(1))
    draws = run_chains(cfg, target.logdensity, target.theta, target.start, jax.random.key(2))
    v = np.asarray(target.to_visible(draws.samples)).reshape(-1, 4)
    exact = 1 / (1 - np.exp(-b)) - 1 / b
    assert np.abs(v.mean(0) - exact).max() < 0.03, (v.mean(0), exact)
    assert 0 < v.min() and v.max() < 1


RBM = ("model=rbm", "model.hidden=50", "optim=sgd", "optim.lr=0.1", "dataset.train_subset=500",
       "train.batch_size=20", "train.epochs=1", "sampler=hmc", "sampler.burnin=100", "sampler.samples=50")


def test_trained_rbm_samples_have_lower_free_energy_than_noise(tmp_path):
    """After training, sampler=hmc draws from the RBM's relaxed free energy at temperature 0.1
    (towards its modes): a quarter of the way or more from uniform noise's free energy to the
    test images' (measured: 62 %; chains that do not move stay at the noise's)."""
    summary = train.train_and_evaluate(compose(*RBM, "sampler.temperature=0.1", "plots=true"), str(tmp_path))
    s = summary["sampler"]
    noise, test = s["free_energy_noise"], s["free_energy_test"]
    assert test < noise and s["free_energy_samples"] < noise - 0.25 * (noise - test), s
    assert 0.001 <= s["step_size"] <= 0.25 and s["kept_samples"] == 150
    with np.load(tmp_path / "samples.npz") as saved:
        assert saved["samples"].shape == (50, 3, 784)
        assert 0 <= saved["samples"].min() and saved["samples"].max() <= 1
    assert png_shape(tmp_path / "hmc_samples.png") and png_shape(tmp_path / "rbm_samples.png")
    assert json.loads((tmp_path / "summary.json").read_text())["sampler"] == s


@pytest.mark.parametrize("overrides, message", [
    (("model=mlp", "sampler=hmc"), "sampler=hmc draws from a model's energy, and model=mlp has none"),
    (("model=dbn", "sampler=hmc"), "model=dbn has none"),
    (("model=rbm", "model.below=[100]", "sampler=hmc"), "model=rbm with model.below set has none"),
    (("model=gaussian",), "model=gaussian has nothing to train"),
    (("+experiment=dlt_hmc", "model.dim=10"), "model.dim=10 with seed=123 draws a matrix that is not"),
    (("+experiment=dlt_hmc", "early_stopping=patience"), "early_stopping=patience does not apply"),
    (("+experiment=dlt_hmc", "sampler.step_min=0.5", "sampler.step_max=0.1"), "sampler.step_min and"),
    (("+experiment=dlt_hmc", "sampler.initial_step=1.0"), "sampler.initial_step must lie in"),
    (("+experiment=dlt_hmc", "sampler.adapt=sometimes"), "sampler.adapt must be one of always, burnin"),
    (("+experiment=dlt_hmc", "sampler.chains=0"), "sampler.chains must be >= 1"),
    (("+experiment=dlt_hmc", "sampler.temperature=0"), "sampler.temperature must be > 0"),
    (("+experiment=dlt_hmc", "+sampler.leapfrog=3"), "sampler.leapfrog is not a setting"),
])
def test_bad_settings_are_one_line_before_anything_runs(overrides, message):
    with pytest.raises(ConfigError) as refused:
        train.build_setup(compose(*overrides))
    text = str(refused.value)
    assert message in text and "\n" not in text, text


def test_dlt_hmc_from_the_command_line(dlrun, tmp_path):
    """The documented command: `dlrun +experiment=dlt_hmc`; and a bad value: one line, exit 2."""
    proc = dlrun("+experiment=dlt_hmc", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final"]
    assert summary["passed"] and abs(final["acceptance_rate"] - 0.9) < 0.1
    assert final["max_abs_mean_error"] < MOMENT_TOLERANCE and final["max_abs_cov_error"] < MOMENT_TOLERANCE
    assert {"samples.npz", "hmc_samples.png", "hmc_trace.png", "summary.json", "run.json"} <= \
        {p.name for p in run_dir.iterdir()}
    assert "acceptance_rate" in proc.stdout and "pass" in proc.stdout
    bad = dlrun("+experiment=dlt_hmc", "sampler.chains=0", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, describe(bad)
    assert "sampler.chains must be >= 1" in bad.stderr and not (tmp_path / "bad").exists()
