"""Linear probes, robust normalisation, the pixel-PCA baseline and the plots they feed."""

import json

import numpy as np
import pytest
from PIL import Image

from astropt_hf.downstream.probes import (
    RobustNormaliser,
    infer_task,
    linear_probe_cv,
    pixel_pca_features,
    robust_denormalise,
    robust_normalise,
    run_probe_suite,
)
from astropt_hf.plotting import (
    galaxy_rgb,
    plot_confusion_matrix,
    plot_galaxy_grid,
    plot_loss_curves,
    plot_neighbours,
    plot_pred_vs_true,
    plot_pred_vs_true_grid,
    plot_probe_bars,
)


@pytest.fixture
def linear_data():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 12))
    target = features @ rng.normal(size=12) + 0.05 * rng.normal(size=300)
    return features, target


def clusters(n_per_class=60, seed=0):
    """Three well separated Gaussian blobs in 8-D with string labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(3, 8))
    features = np.concatenate([centre + rng.normal(size=(n_per_class, 8)) for centre in centres])
    labels = np.repeat(np.array(["elliptical", "spiral", "merger"]), n_per_class)
    return features, labels


# --------------------------------------------------------------------------- robust normalisation


def test_robust_normalise_round_trips_and_is_robust():
    rng = np.random.default_rng(0)
    y = rng.normal(loc=20.0, scale=2.0, size=1001)
    z, normaliser = robust_normalise(y)
    assert np.median(z) == pytest.approx(0.0, abs=1e-12)
    # scale = 1.4826 * MAD, so the median |z| is 1 / 1.4826; close to the Gaussian sigma of 2.
    assert np.median(np.abs(z)) == pytest.approx(1 / 1.4826)
    assert normaliser.scale == pytest.approx(2.0, rel=0.1)
    np.testing.assert_allclose(robust_denormalise(z, normaliser), y)
    # Wild outliers barely move a robust fit (they would wreck a mean / std one).
    with_outliers = np.concatenate([y, [1e6, -1e6, 5e5]])
    shifted = RobustNormaliser.fit(with_outliers)
    assert shifted.median == pytest.approx(normaliser.median, abs=0.05)
    assert shifted.scale == pytest.approx(normaliser.scale, rel=0.02)


def test_robust_normalise_handles_nan_and_degenerate_targets():
    z, normaliser = robust_normalise(np.array([1.0, np.nan, 3.0, 5.0]))
    assert np.isnan(z[1]) and np.isfinite(z[[0, 2, 3]]).all()
    # More than half equal -> MAD is 0; the scale must fall back to something positive.
    degenerate = RobustNormaliser.fit([2.0, 2.0, 2.0, 2.0, 10.0])
    assert degenerate.scale > 0
    np.testing.assert_allclose(degenerate.inverse(degenerate.transform([2.0, 10.0])), [2.0, 10.0])
    with pytest.raises(ValueError, match="finite"):
        robust_normalise([np.nan, np.nan])


# --------------------------------------------------------------------------- probes


def test_ridge_probe_recovers_a_linear_target(linear_data):
    features, target = linear_data
    result = linear_probe_cv(features, target, task="regression", n_folds=5)
    assert result.metrics["r2"] > 0.99
    assert result.predictions.shape == target.shape
    np.testing.assert_array_equal(result.true, target)
    assert len(result.fold_alphas) == 5


def test_ridge_probe_on_noise_scores_near_or_below_zero(linear_data):
    features, _ = linear_data
    noise = np.random.default_rng(5).normal(size=features.shape[0])
    assert linear_probe_cv(features, noise).metrics["r2"] < 0.05


def test_predictions_are_out_of_fold():
    """One-hot features let a ridge memorise every training row; held-out rows must still look unseen."""
    rng = np.random.default_rng(0)
    target = rng.normal(size=60)
    memorising_features = np.eye(60)
    result = linear_probe_cv(memorising_features, target, n_folds=5, alphas=(1e-6,))
    assert result.metrics["r2"] < 0.05


def test_probe_drops_missing_targets(linear_data):
    features, target = linear_data
    target = target.copy()
    target[[3, 10, 200]] = np.nan
    result = linear_probe_cv(features, target)
    assert result.n_dropped == 3
    assert result.kept.sum() == 297 and not result.kept[[3, 10, 200]].any()
    assert result.predictions.shape == (297,)
    assert result.metrics["r2"] > 0.99


def test_robust_normalisation_alone_leaves_ridge_predictions_unchanged(linear_data):
    # Ridge is equivariant to affine changes of the target; only clipping changes the fit.
    features, target = linear_data
    plain = linear_probe_cv(features, target)
    robust = linear_probe_cv(features, target, robust_normalisation=True)
    np.testing.assert_allclose(robust.predictions, plain.predictions, rtol=1e-6, atol=1e-8)
    clipped = linear_probe_cv(features, target, robust_normalisation=True, target_clip=0.5)
    assert np.abs(clipped.predictions - plain.predictions).max() > 1e-3


def test_target_clip_resists_outliers():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 5))
    clean = features @ np.array([1.0, -0.5, 0.3, 0.0, 0.2])
    corrupted = clean.copy()
    corrupted[:12] += 200.0  # catastrophic values in 3% of the catalogue
    plain = linear_probe_cv(features, corrupted)
    clipped = linear_probe_cv(features, corrupted, robust_normalisation=True, target_clip=5.0)
    error_plain = np.median(np.abs(plain.predictions[12:] - clean[12:]))
    error_clipped = np.median(np.abs(clipped.predictions[12:] - clean[12:]))
    assert error_clipped < 0.5 * error_plain


def test_photo_z_probe_reports_photo_z_metrics():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 6))
    redshift = 0.8 + 0.2 * features[:, 0] + 0.01 * rng.normal(size=200)
    metrics = linear_probe_cv(features, redshift, photo_z=True).metrics
    assert set(metrics) == {"r2", "mae", "sigma_nmad", "outlier_fraction"}
    assert metrics["outlier_fraction"] == 0.0 and metrics["sigma_nmad"] < 0.02


def test_logistic_probe_separates_clusters():
    features, labels = clusters()
    result = linear_probe_cv(features, labels, task="classification")
    assert result.metrics["accuracy"] > 0.97
    assert result.metrics["f1_macro"] > 0.97
    assert set(result.predictions) == {"elliptical", "spiral", "merger"}


def test_logistic_probe_on_random_labels_is_near_chance():
    features, labels = clusters()
    shuffled = np.random.default_rng(3).permutation(labels)
    assert linear_probe_cv(features, shuffled, task="classification").metrics["accuracy"] < 0.55


def test_probe_input_errors(linear_data):
    features, target = linear_data
    with pytest.raises(ValueError, match="targets"):
        linear_probe_cv(features, target[:-1])
    with pytest.raises(ValueError, match="task"):
        linear_probe_cv(features, target, task="ranking")
    with pytest.raises(ValueError, match="n_folds"):
        linear_probe_cv(features[:3], target[:3], n_folds=5)
    bad = features.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_probe_cv(bad, target)


def test_infer_task():
    assert infer_task(np.array([0.1, 0.2])) == "regression"
    assert infer_task(np.array([0, 1, 1])) == "classification"
    assert infer_task(np.array(["a", "b"])) == "classification"


# --------------------------------------------------------------------------- pixel PCA


def test_pixel_pca_recovers_a_low_rank_signal():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(120, 4))
    images = (latent @ rng.normal(size=(4, 3 * 8 * 8))).reshape(120, 3, 8, 8) + 0.01 * rng.normal(
        size=(120, 3, 8, 8)
    )
    pca = pixel_pca_features(images, n_components=4)
    assert pca.shape == (120, 4) and pca.dtype == np.float32
    # Four components span the latent space, so a probe can read any latent back.
    assert linear_probe_cv(pca, latent[:, 2]).metrics["r2"] > 0.99
    subset = pixel_pca_features(images, n_components=4, max_fit_samples=40)
    assert linear_probe_cv(subset, latent[:, 2]).metrics["r2"] > 0.99


def test_pixel_pca_caps_components_with_a_warning():
    images = np.random.default_rng(0).normal(size=(10, 1, 4, 4))
    with pytest.warns(UserWarning, match="capped at 9"):
        features = pixel_pca_features(images, n_components=32)
    assert features.shape == (10, 9)


# --------------------------------------------------------------------------- suite


def test_run_probe_suite_shape_and_json(tmp_path, linear_data):
    features, target = linear_data
    rng = np.random.default_rng(1)
    redshift = np.abs(0.5 + 0.1 * features[:, 0])
    labels = np.where(features[:, 1] > 0, "spiral", "elliptical")
    suite = run_probe_suite(
        {"astropt": features, "random_init": rng.normal(size=features.shape)},
        {"mag_r": target, "redshift": redshift, "morphology": labels},
        tasks={"mag_r": "regression"},
        n_folds=3,
    )
    targets = suite.results["targets"]
    assert set(targets) == {"mag_r", "redshift", "morphology"}
    assert set(targets["mag_r"]) == {"astropt", "random_init"}
    assert targets["mag_r"]["astropt"]["r2"] > targets["mag_r"]["random_init"]["r2"]
    assert "sigma_nmad" in targets["redshift"]["astropt"] and "sigma_nmad" not in targets["mag_r"]["astropt"]
    assert "accuracy" in targets["morphology"]["astropt"]
    assert suite.results["settings"]["tasks"]["morphology"] == "classification"
    assert suite.probes["mag_r"]["astropt"].predictions.shape == (300,)
    path = suite.save_json(tmp_path / "out" / "probe_results.json")
    assert json.loads(path.read_text())["targets"]["mag_r"]["astropt"]["n_samples"] == 300


def test_run_probe_suite_rejects_misaligned_rows(linear_data):
    features, target = linear_data
    with pytest.raises(ValueError, match="same number of rows"):
        run_probe_suite({"a": features, "b": features[:-1]}, {"t": target})


# --------------------------------------------------------------------------- plots


def assert_png(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 50 and image.size[1] > 50


def test_probe_plots(tmp_path, linear_data):
    features, target = linear_data
    cluster_features, labels = clusters(n_per_class=100)
    suite = run_probe_suite(
        {"astropt": features, "pixel_pca": features[:, :3]},
        {"mag_r": target, "redshift": np.abs(0.5 + 0.1 * features[:, 0]), "morphology": labels},
        n_folds=3,
    )
    assert_png(plot_probe_bars(suite.results, tmp_path / "bars.png"))
    assert_png(plot_probe_bars(suite, tmp_path / "mixed.png", metric=("r2", "accuracy")))
    with pytest.raises(ValueError, match="metric"):
        plot_probe_bars(suite.results, tmp_path / "none.png", metric="bleu")
    probe = suite.probes["redshift"]["astropt"]
    assert_png(plot_pred_vs_true(probe.predictions, probe.true, "redshift", tmp_path / "z.png", photo_z=True))
    grid = {name: by_model["astropt"] for name, by_model in suite.probes.items()}  # labels are skipped
    assert_png(plot_pred_vs_true_grid(grid, tmp_path / "grid.png"))
    morphology = suite.probes["morphology"]["astropt"]
    assert_png(plot_confusion_matrix(morphology.predictions, morphology.true, tmp_path / "cm.png"))


def test_plot_loss_curves(tmp_path):
    records = [{"step": s, "train_loss": 2.0 / (1 + s)} for s in range(0, 200, 5)]
    records += [{"step": s, "val_loss": 2.2 / (1 + s)} for s in range(0, 200, 50)]
    assert_png(plot_loss_curves(records, tmp_path / "loss.png"))
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert_png(plot_loss_curves({"1M": jsonl, "5M": records}, tmp_path / "runs.png", log_y=False))
    with pytest.raises(ValueError, match="loss"):
        plot_loss_curves([{"step": 1, "lr": 0.1}], tmp_path / "empty.png")


def galaxy(size=24, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    profile = np.exp(-np.hypot(y - size / 2, x - size / 2) / 4.0)
    return np.stack([profile * amplitude for amplitude in (0.4, 0.7, 1.0)]) + 0.01 * rng.normal(
        size=(3, size, size)
    )


def test_galaxy_rgb_maps_z_to_red_and_stays_in_range():
    image = np.zeros((3, 16, 16))
    image[2, 6:10, 6:10] = 5.0  # a source bright only in z (band 2 of g, r, z)
    rgb = galaxy_rgb(image)
    assert rgb.shape == (16, 16, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    centre = rgb[8, 8]
    assert centre[0] > 0.9 and centre[1] < 0.05 and centre[2] < 0.05
    only_g = np.zeros((3, 16, 16))
    only_g[0, 6:10, 6:10] = 5.0
    assert galaxy_rgb(only_g)[8, 8].argmax() == 2  # g -> blue
    noisy = galaxy(seed=1) * 1e4 - 50.0  # arbitrary units and offsets still land in [0, 1]
    rgb = galaxy_rgb(noisy)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0 and rgb.max() > 0.9


def test_galaxy_rgb_puts_blank_sky_at_black():
    size = 32
    noisy = galaxy(size=size, seed=2) + 0.05 * np.random.default_rng(3).normal(size=(3, size, size)) + 7.0
    ring = np.ones((size, size), bool)
    ring[4:-4, 4:-4] = False
    sky_level = galaxy_rgb(noisy)[ring].mean()
    assert sky_level < 0.15 < galaxy_rgb(noisy, black_point="percentile")[ring].mean()
    assert galaxy_rgb(noisy)[size // 2, size // 2].max() > 0.9
    with pytest.raises(ValueError, match="black_point"):
        galaxy_rgb(noisy, black_point="zero")


def test_galaxy_rgb_single_band_is_grey_and_rejects_unknown_band_counts():
    rgb = galaxy_rgb(galaxy()[1:2])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])
    assert galaxy_rgb(galaxy()[1]).shape == (24, 24, 3)  # a bare 2-D image too
    with pytest.raises(ValueError, match="rgb_bands"):
        galaxy_rgb(np.zeros((5, 8, 8)))
    assert galaxy_rgb(np.zeros((5, 8, 8)), rgb_bands=(4, 2, 0)).shape == (8, 8, 3)
    assert np.all(galaxy_rgb(np.full((3, 8, 8), np.nan)) == 0.0)


def test_galaxy_grid_and_neighbours(tmp_path):
    inputs = np.stack([galaxy(seed=i) * (1 + i) for i in range(5)])
    predictions = inputs + 0.05 * np.random.default_rng(0).normal(size=inputs.shape)
    assert_png(
        plot_galaxy_grid(inputs, predictions, tmp_path / "grid.png", titles=[f"id {i}" for i in range(5)])
    )
    assert_png(plot_galaxy_grid(inputs, predictions, tmp_path / "wrapped.png", max_columns=2))
    with pytest.raises(ValueError, match="shape"):
        plot_galaxy_grid(inputs, predictions[:, :2], tmp_path / "bad.png")
    assert_png(plot_neighbours(inputs[0], inputs[1:], [0.99, 0.9, 0.8, 0.7], tmp_path / "nn.png"))
    with pytest.raises(ValueError, match="scores"):
        plot_neighbours(inputs[0], inputs[1:], [0.9], tmp_path / "bad_nn.png")
