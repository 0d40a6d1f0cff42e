"""Preprocessing fitted on the training split (standardize, PCA and ZCA whitening) and data
augmentation on the device (shift, scale, elastic)."""
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlrun.data import sources as datasets
from dlrun.data import preprocess
from conftest import describe, run_dirs

x_raw, y_raw, x_test_raw, y_test_raw = datasets.load_raw("mnist_sample")
TRAIN = x_raw[:3500]


def transformed(t, images):
    return np.asarray(t(jnp.asarray(images[..., None] / np.float32(255))), np.float64).reshape(len(images), -1)


def test_pca_whitening_gives_identity_covariance_on_the_training_split():
    t = preprocess.fit("pca", TRAIN, eps=1e-10)  # eps -> 0: exactly white
    z = transformed(t, TRAIN)
    assert 300 < t.dims < 784  # the slides' cut S > 1e-5 drops the constant border pixels
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(t.dims), atol=2e-3)
    # with the slides' eps the variances are S / (S + eps), the smallest ones shrunk
    default = preprocess.fit("pca", TRAIN)
    var = transformed(default, TRAIN).var(0)
    assert np.all(var <= 1 + 1e-3) and var[0] > 0.999 and var[-1] < 0.9
    assert preprocess.fit("pca", TRAIN, dims=40).dims == 40


def test_zca_is_pca_rotated_back_and_standardize_is_per_pixel():
    pca = preprocess.fit("pca", TRAIN, dims=784)
    zca = preprocess.fit("zca", TRAIN)
    u = np.linalg.svd(np.cov(TRAIN.reshape(3500, -1).T / 255.0, bias=True))[0]
    np.testing.assert_allclose(transformed(zca, TRAIN[:50]), transformed(pca, TRAIN[:50]) @ u.T,
                               atol=2e-2)
    assert zca.image_shaped and not preprocess.fit("pca", TRAIN).image_shaped
    s = transformed(preprocess.fit("standardize", TRAIN), TRAIN)
    varying = TRAIN.reshape(3500, -1).std(0) > 0
    np.testing.assert_allclose(s.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(s.std(0)[varying], 1, atol=1e-3)


def test_the_run_stores_its_transform_and_evaluates_through_it(dlrun):
    """The test error in metrics.jsonl is what the saved preprocess.npz and params.pkl give."""
    proc = dlrun("model=logreg", "optim=sgd", "optim.lr=0.05", "dataset.preprocess=pca",
                 "dataset.pca_dims=50", "train.epochs=3")
    assert proc.returncode == 0, describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    saved = np.load(run_dir / "preprocess.npz")
    assert str(saved["name"]) == "pca" and saved["matrix"].shape == (784, 50)
    with open(run_dir / "params.pkl", "rb") as f:
        params = pickle.load(f)
    x = x_test_raw.reshape(len(x_test_raw), -1) / 255.0
    logits = (x - saved["mean"]) @ saved["matrix"] @ params["out"]["kernel"] + params["out"]["bias"]
    error = np.mean(logits.argmax(1) != y_test_raw)
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test_error"] == pytest.approx(error, abs=1.5e-3)  # float32 vs float64 ties
    assert record["test_error"] < 0.2  # measured 0.113


# ---- augmentation ------------------------------------------------------------------------------
IMAGES = jnp.asarray(x_raw[:64, :, :, None] / np.float32(255))


def centre_of_mass(x):
    x = np.asarray(x)[..., 0]
    r = np.arange(28)
    total = x.sum((1, 2))
    return np.stack([(x.sum(2) * r).sum(1) / total, (x.sum(1) * r).sum(1) / total], 1)


def aug(kinds, key=0, **kw):
    settings = dict(max_shift=2.0, max_scale=0.1, elastic_alpha=34.0, elastic_sigma=4.0) | kw
    return preprocess.augment(IMAGES, jax.random.key(key), kinds, **settings)


def test_no_transformation_is_the_identity_and_each_key_draws_its_own():
    np.testing.assert_allclose(aug(("shift", "scale"), max_shift=0.0, max_scale=0.0), IMAGES, atol=1e-6)
    assert np.array_equal(aug(("shift",)), aug(("shift",)))
    assert not np.allclose(aug(("shift",), key=0), aug(("shift",), key=1))


def test_shifts_move_the_digit_by_at_most_max_shift():
    moved = centre_of_mass(aug(("shift",), max_shift=3.0)) - centre_of_mass(IMAGES)
    assert np.abs(moved).max() <= 3.0 + 0.3  # + ink pushed off the border
    assert np.abs(moved).mean() > 0.5  # uniform in [-3, 3]: mean 1.5


def test_scalings_grow_or_shrink_the_ink_by_the_square_of_the_factor():
    ratio = np.asarray(aug(("scale",), max_scale=0.2).sum((1, 2, 3)) / IMAGES.sum((1, 2, 3)))
    assert 0.8**2 - 0.05 < ratio.min() and ratio.max() < 1.2**2 + 0.05
    assert ratio.std() > 0.05  # a different factor per image


def test_elastic_distortions_keep_the_ink_and_change_the_shape():
    out = aug(("elastic",))
    ink = np.asarray(out.sum((1, 2, 3)) / IMAGES.sum((1, 2, 3)))
    # local stretching and squeezing: measured 0.70-1.46 per image, mean near 1
    assert np.all((0.5 < ink) & (ink < 1.7)) and abs(ink.mean() - 1) < 0.1, ink
    changed = np.abs(np.asarray(out) - np.asarray(IMAGES)).sum((1, 2, 3)) / np.asarray(IMAGES).sum((1, 2, 3))
    assert changed.mean() > 0.2  # measured about 0.5


def test_augmented_training_learns_from_the_command_line(dlrun):
    proc = dlrun("dataset.augment=[shift,scale,elastic]", "train.epochs=3")
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    record = json.loads((run_dirs(proc.stdout)[0] / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_error"] < 0.25  # measured 0.134; chance 0.9


@pytest.mark.parametrize("args,fragment", [
    (["dataset.preprocess=pca", "model=cnn"], "use it with logreg, mlp or knn"),
    (["dataset.preprocess=zca", "model=rbm"], "pixel intensities"),
    (["dataset.preprocess=whiten"], "preprocess must be one of"),
    (["dataset.augment=[rotate]"], "augment takes a list of shift, scale, elastic"),
    (["dataset.augment=[shift]", "model=knn"], "does not apply to knn"),
])
def test_bad_transform_settings_are_refused(args, fragment, dlrun):
    proc = dlrun(*args)
    assert proc.returncode == 2 and fragment in proc.stderr, describe(proc)


@pytest.mark.parametrize("args,ceiling", [
    (["dataset.preprocess=standardize"], 0.2),  # default MLP, measured 0.092
    (["dataset.preprocess=zca", "model=lenet", "optim=sgd", "optim.lr=0.05",  # image-shaped
      "dataset.train_subset=1000"], 0.5),
    (["dataset.preprocess=pca", "dataset.pca_dims=40", "model=knn"], 0.15),  # measured 0.081
])
def test_each_preprocessing_runs_from_the_command_line(args, ceiling, dlrun):
    proc = dlrun(*args, "train.epochs=3", "plots=false")
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_error"] < ceiling, record
    assert (run_dir / "preprocess.npz").is_file()
