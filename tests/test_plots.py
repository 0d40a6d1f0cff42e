"""The run's pictures (dlrun.runs.pictures): valid PNG files, consistent with the metrics."""
import csv
import json

import numpy as np
import pytest
from matplotlib.image import imread

from dlrun.runs import pictures as plots
from conftest import describe, run_dirs

pytestmark = pytest.mark.slow  # CLI subprocesses: `pytest -m slow`, run by .ci/run


def png_shape(path):
    """(height, width) of a PNG, after checking that matplotlib decodes it."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    image = imread(path)
    assert image.size and np.isfinite(image).all(), path
    return image.shape[:2]


def test_png_writer_round_trips_through_a_decoder(tmp_path):
    image = np.linspace(0, 1, 12 * 7).reshape(12, 7)
    plots.write_png(tmp_path / "x.png", image)
    decoded = imread(tmp_path / "x.png")
    np.testing.assert_allclose(decoded, np.round(image * 255) / 255, atol=1e-6)
    grid = plots.tile(np.random.rand(23, 5, 4), columns=10, zoom=1)
    assert grid.shape == (3 * 6 + 1, 10 * 5 + 1)


def test_a_classifier_run_draws_its_pictures(dlrun):
    proc = dlrun("train.epochs=2")
    assert proc.returncode == 0 and proc.stderr.strip() == "", describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    for name in ("learning_curves.png", "confusion_matrix.png", "test_images.png", "filters.png"):
        assert min(png_shape(run_dir / name)) > 100, name
    assert png_shape(run_dir / "filters.png") == (10 * 29 * 2 + 2, 10 * 29 * 2 + 2)  # 100 tiles
    rows = list(csv.reader((run_dir / "confusion_matrix.csv").open()))
    counts = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert counts.sum() == 1000  # the sample's test split
    assert 1 - np.trace(counts) / counts.sum() == pytest.approx(record["test_error"], abs=1e-9)


def test_plots_false_draws_nothing(dlrun):
    proc = dlrun("train.epochs=1", "plots=false")
    assert proc.returncode == 0, describe(proc)
    (run_dir,) = run_dirs(proc.stdout)
    assert not list(run_dir.glob("*.png")) and "pictures" not in proc.stdout
