"""What the figures say: units on axes, the metric named, readable legends, labelled rows, plain ticks."""

import numpy as np
import pytest

from astropt_hf.data.catalogue_units import CATALOGUE_COLUMNS, column_caption, column_label
from astropt_hf.data.synthetic import TRUTH_COLUMNS
from astropt_hf.plotting import (
    galaxies,
    plot_galaxy_grid,
    plot_loss_curves,
    plot_neighbours,
    plot_pred_vs_true,
    plot_pred_vs_true_grid,
    plot_probe_bars,
    probes,
    training,
)
from astropt_hf.plotting.probes import pred_vs_true_limits
from astropt_hf.plotting.style import metric_axis_label, wrap_label


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept for inspection (they are still written)."""
    figures = []
    for module in (galaxies, probes, training):
        real = module.save_figure

        def keep(fig, path, *args, _real=real, **kwargs):
            figures.append(fig)
            return _real(fig, path, *args, **kwargs)

        monkeypatch.setattr(module, "save_figure", keep)
    return figures


def _texts(fig) -> list[str]:
    return [text.get_text() for text in fig.findobj(lambda artist: hasattr(artist, "get_text"))]


def test_every_truth_column_has_a_label_with_its_unit():
    assert set(TRUTH_COLUMNS) <= set(CATALOGUE_COLUMNS)
    assert column_label("mag_r") == "r-band magnitude [AB mag]"
    assert column_label("half_light_radius") == "half-light radius [arcsec]"
    assert column_label("g_r") == "g − r colour [mag]"
    assert column_label("redshift") == "redshift z"
    assert column_label("position_angle") == "position angle [deg]"
    assert column_label("mag_r", unit=False) == "r-band magnitude"
    assert column_label("my_column") == "my_column"  # unknown columns keep their name
    assert column_caption("redshift", 0.12345) == "z = 0.123"
    assert column_caption("mag_r", 17.851) == "r = 17.85 mag"


def test_metric_axis_label_names_what_the_bars_show():
    assert metric_axis_label(["r2", "r2", "r2"]) == "R²"
    assert metric_axis_label(["r2", "accuracy"]) == "R² (regression) / accuracy (classification)"


def test_wrap_label_keeps_every_character_and_the_index_whole():
    text = "synthetic-s0-validation-0000001"
    wrapped = wrap_label(text)
    assert wrapped.replace("\n", "") == text
    assert wrapped.splitlines()[-1] == "validation-0000001"
    assert wrap_label("short") == "short"


def _suite_results():
    return {
        "targets": {
            "mag_r": {"astropt": {"r2": 0.989}, "random_init": {"r2": 0.986}, "pixel_pca": {"r2": 0.9}},
            "redshift": {"astropt": {"r2": 0.61}, "random_init": {"r2": 0.4}, "pixel_pca": {"r2": 0.3}},
        }
    }


def test_probe_bars_name_the_metric_the_feature_sets_and_show_small_gaps(tmp_path, drawn):
    plot_probe_bars(_suite_results(), tmp_path / "bars.png", metric=("r2", "accuracy"))
    ax = drawn[-1].axes[0]
    assert ax.get_ylabel().startswith("R² ") and "accuracy" not in ax.get_ylabel()
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["astroPT", "random init (same architecture)", "pixel PCA"]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["r-band magnitude", "redshift z"]
    texts = _texts(drawn[-1])
    assert "0.989" in texts and "0.986" in texts  # 0.003 apart: three decimals

    mixed = {"targets": {**_suite_results()["targets"], "morphology": {"astropt": {"accuracy": 0.8}}}}
    plot_probe_bars(mixed, tmp_path / "mixed.png", metric=("r2", "accuracy"))
    assert "accuracy (classification)" in drawn[-1].axes[0].get_ylabel()


def _pairs(seed, scale):
    rng = np.random.default_rng(seed)
    true = rng.uniform(15, 19.5, 300)
    return true + scale * rng.normal(size=300), true


def test_pred_vs_true_grids_share_ranges_and_label_units(tmp_path, drawn):
    by_feature = {"astropt": {"mag_r": _pairs(0, 0.1)}, "pixel_pca": {"mag_r": _pairs(0, 2.0)}}
    limits = pred_vs_true_limits(by_feature)
    for name, entries in by_feature.items():
        plot_pred_vs_true_grid(entries, tmp_path / f"{name}.png", limits=limits)
    astropt_ax, pca_ax = drawn[0].axes[0], drawn[1].axes[0]
    assert astropt_ax.get_xlim() == pca_ax.get_xlim() == pytest.approx(limits["mag_r"])
    low, high = limits["mag_r"]
    widest = by_feature["pixel_pca"]["mag_r"][0]
    assert low <= widest.min() and high >= widest.max()
    assert astropt_ax.get_xlabel() == "true r-band magnitude [AB mag]"
    assert astropt_ax.get_ylabel() == "predicted r-band magnitude [AB mag]"
    colourbar = drawn[0].axes[1]
    labels = [label.get_text() for label in colourbar.get_yticklabels() if label.get_text()]
    assert labels and all(label.isdigit() for label in labels)  # 1, 2, 5, 10, not 6×10⁰


def test_fine_tuned_pred_vs_true_title_names_target_and_model(tmp_path, drawn):
    pred, true = _pairs(1, 0.05)
    plot_pred_vs_true(pred / 50, true / 50, "redshift", tmp_path / "z.png", photo_z=True,
                      model_description="fine-tuned astroPT (lora)")  # fmt: skip
    ax = drawn[-1].axes[0]
    assert ax.get_title() == "redshift z — fine-tuned astroPT (lora)"
    assert any("σ_NMAD = " in text for text in _texts(drawn[-1]))


def test_pred_vs_true_bias_panel_shows_the_binned_medians_on_the_same_z_axis(tmp_path, drawn):
    from astropt_hf.metrics import compute_redshift_bias

    true = np.random.default_rng(0).uniform(0.02, 0.45, 400)
    pred = 0.15 + 0.8 * (true - 0.15)  # regressed towards the mean
    bias = compute_redshift_bias(pred, true)
    plot_pred_vs_true(pred, true, "redshift", tmp_path / "z.png", photo_z=True, bias=bias)
    upper, lower = (ax for ax in drawn[-1].axes if ax.get_label() != "<colorbar>")
    assert lower.get_ylabel() == "Δz / (1 + z)" and lower.get_xlabel() == "true redshift z"
    assert lower.get_xlim() == pytest.approx(upper.get_xlim())
    medians = next(c for c in lower.containers if c.get_label() == "median per bin").lines[0]
    np.testing.assert_allclose(np.asarray(medians.get_ydata(), dtype=float), [b["median"] for b in bias["bins"]])
    assert bias["bins"][0]["median"] > 0 > bias["bins"][-1]["median"]


def test_galaxy_grid_labels_rows_names_the_stretch_and_keeps_ids(tmp_path, drawn):
    images = np.random.default_rng(0).normal(size=(3, 3, 16, 16))
    ids = [f"synthetic-s0-validation-{i:07d}" for i in range(3)]
    plot_galaxy_grid(images, images, tmp_path / "grid.png", titles=ids, truths=images, stretch="asinh(x / 0.02)")
    fig = drawn[-1]
    row_labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert row_labels == ["input", "prediction", "truth"]
    texts = _texts(fig)
    assert all(any(t.replace("\n", "") == full for t in texts) for full in ids)
    assert any("asinh(x / 0.02)" in t.replace("\n", " ") for t in texts)


def test_neighbours_are_captioned_with_redshift_magnitude_and_laid_out_evenly(tmp_path, drawn):
    images = np.random.default_rng(0).normal(size=(9, 3, 16, 16))
    rows = [{"redshift": 0.1 + 0.01 * i, "mag_r": 17.0 + 0.1 * i} for i in range(9)]
    plot_neighbours(images[0], images[1:], np.linspace(0.999, 0.998, 8), tmp_path / "nn.png",
                    query_properties=rows[0], neighbour_properties=rows[1:])  # fmt: skip
    fig = drawn[-1]
    neighbour_axes = fig.axes[1:]
    assert len(neighbour_axes) == 8
    top_rows = sorted({round(ax.get_position().y0, 3) for ax in neighbour_axes})
    assert len(top_rows) == 2  # two rows of four, not six and two
    assert sum(round(ax.get_position().y0, 3) == top_rows[0] for ax in neighbour_axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert "z = 0.100  r = 17.00 mag" in titles[0]
    assert "z = 0.110  r = 17.10 mag" in titles[1] and "cosine 0.9990" in titles[1]


def test_loss_curves_name_the_run_and_the_loss_and_zoom_on_the_tail(tmp_path, drawn):
    records = [{"step": s, "train_loss": 1.0 / (1 + s) + 0.2} for s in range(0, 400, 4)]
    plot_loss_curves(records, tmp_path / "loss.png", title="astroPT pretraining", run_name="astropt-demo")
    main = drawn[-1].axes[0]
    (inset,) = main.child_axes
    assert main.get_title() == "astroPT pretraining — astropt-demo"
    assert main.get_ylabel() == "Huber loss on normalised patches"
    assert inset.get_xlim()[0] >= 0.7 * 396  # the inset shows the last quarter of the steps
    tail = [r["train_loss"] for r in records if r["step"] >= 297]
    assert inset.get_ylim()[1] - inset.get_ylim()[0] < 2 * (max(tail) - min(tail))
    plot_loss_curves(records, tmp_path / "logx.png", log_x=True, loss_name="MSE", loss_target="")
    assert drawn[-1].axes[0].get_xscale() == "log" and drawn[-1].axes[0].get_ylabel() == "MSE"
    assert drawn[-1].axes[0].child_axes == []
