"""Scaling sweep: size parsing, parameter counts, the power-law fit, outputs, and a sweep end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from astropt_hf import ASTROPT_PRESETS, AstroPTConfig, AstroPTForPreTraining
from astropt_hf.scaling import (
    count_parameters,
    fit_saturating_power_law,
    parse_size,
    parse_sizes,
    read_validation_curve,
    write_scaling_outputs,
)

TRUE_LAW = {"alpha": 0.35, "L_inf": 0.2, "log10_N_c": 3.0}


def true_loss(params: np.ndarray) -> np.ndarray:
    return TRUE_LAW["L_inf"] + (10 ** TRUE_LAW["log10_N_c"] / params) ** TRUE_LAW["alpha"]


# --------------------------------------------------------------------------- sizes


def test_parse_preset_and_shape():
    preset = parse_size("astropt-005M")
    assert (preset.num_hidden_layers, preset.num_attention_heads, preset.hidden_size) == (6, 8, 256)
    assert preset.learning_rate == ASTROPT_PRESETS["astropt-005M"]["learning_rate"]
    shape = parse_size(" 2x4x64 ")
    assert (shape.name, shape.shape, shape.learning_rate) == ("2x4x64", "2x4x64", None)
    assert shape.model_overrides() == {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    assert [s.name for s in parse_sizes("1x2x32, astropt-001M,2x4x64")] == ["1x2x32", "astropt-001M", "2x4x64"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("astropt-3M", "expected a preset name"),
        ("2x4", "LAYERSxHEADSxWIDTH"),
        ("2x4x-64", "LAYERSxHEADSxWIDTH"),
        ("0x4x64", "layers must be a positive integer, got 0"),
        ("2x3x64", "must be divisible by heads 3"),
    ],
)
def test_parse_size_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_size(text)
    assert repr(text) in str(error.value)


def test_parse_sizes_rejects_empty_and_duplicates():
    with pytest.raises(ValueError, match="empty"):
        parse_sizes(" , ")
    # astropt-001M is the shape 4x8x128: listing both would train the same model twice.
    with pytest.raises(ValueError, match="4x8x128 twice"):
        parse_sizes("astropt-001M,4x8x128")


def test_parameter_counts_match_a_real_model():
    config = AstroPTConfig(image_size=32, patch_size=8, num_channels=3, **parse_size("2x4x64").model_overrides())
    counts = count_parameters(config)
    model = AstroPTForPreTraining(config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("astropt.layers.", "astropt.layernorm.")))
    assert counts["non_embedding"] == blocks
    assert counts["embedding"] + counts["non_embedding"] == counts["total"]
    # A deeper model adds exactly one block's worth of non-embedding parameters per layer.
    deeper = count_parameters(AstroPTConfig(image_size=32, patch_size=8, num_channels=3,
                                            **parse_size("3x4x64").model_overrides()))
    per_block = (blocks - sum(p.numel() for p in model.astropt.layernorm.parameters())) // 2
    assert deeper["non_embedding"] - counts["non_embedding"] == per_block
    assert deeper["embedding"] == counts["embedding"]


# --------------------------------------------------------------------------- the fit


def test_fit_recovers_known_law_within_reported_errors():
    params = np.logspace(4, 8, 10)
    noise = 0.004
    pulls = {name: [] for name in TRUE_LAW}
    residuals = []
    for seed in range(40):
        losses = true_loss(params) + np.random.default_rng(seed).normal(0, noise, params.size)
        fit = fit_saturating_power_law(params, losses)
        assert fit.model == "saturating_power_law"
        for name, truth in TRUE_LAW.items():
            value, error = getattr(fit, name), getattr(fit, f"{name}_err")
            assert error is not None and error > 0
            pulls[name].append((value - truth) / error)
        residuals.append(fit.residual_rms)
        assert fit.N_c == pytest.approx(10**fit.log10_N_c)
    # 10 points, 3 parameters: the rms residual estimates noise * sqrt(7 / 10).
    assert np.mean(residuals) == pytest.approx(noise * np.sqrt(0.7), rel=0.25)
    for name, values in pulls.items():
        values = np.abs(values)
        # Within 3 sigma essentially always, and the errors are neither inflated nor too small:
        # about two thirds of the fits land within 1 sigma.
        assert np.mean(values < 3) >= 0.95, name
        assert 0.45 <= np.mean(values < 1) <= 0.9, name


def test_fit_is_exact_on_noiseless_points_and_tight():
    params = np.logspace(4, 7, 6)
    fit = fit_saturating_power_law(params, true_loss(params))
    assert fit.alpha == pytest.approx(TRUE_LAW["alpha"], rel=1e-4)
    assert fit.L_inf == pytest.approx(TRUE_LAW["L_inf"], rel=1e-4)
    assert fit.log10_N_c == pytest.approx(TRUE_LAW["log10_N_c"], rel=1e-4)
    np.testing.assert_allclose(fit.predict(params), true_loss(params), rtol=1e-5)


def test_fit_with_absolute_sigma_scales_errors():
    params = np.logspace(4, 8, 8)
    losses = true_loss(params) + np.random.default_rng(1).normal(0, 0.003, params.size)
    small = fit_saturating_power_law(params, losses, sigma=np.full(params.size, 0.003))
    large = fit_saturating_power_law(params, losses, sigma=np.full(params.size, 0.03))
    assert large.alpha_err == pytest.approx(10 * small.alpha_err, rel=1e-3)


def test_few_points_fall_back_to_pure_power_law():
    params = np.array([1e4, 1e5, 1e6])
    losses = 3.0 * params**-0.2 * np.exp(np.array([0.01, -0.01, 0.005]))
    fit = fit_saturating_power_law(params, losses)
    assert fit.model == "power_law" and fit.L_inf == 0.0
    assert fit.alpha == pytest.approx(0.2, abs=0.02)
    assert fit.alpha_err is not None and fit.alpha_err > 0
    assert any("L_inf fixed at 0" in note for note in fit.notes)
    two = fit_saturating_power_law(params[:2], losses[:2])
    assert two.model == "power_law" and two.alpha_err is None
    assert json.dumps(two.to_dict())  # JSON-safe: no NaN
    assert fit_saturating_power_law([1e4], [0.5]).model == "none"


def test_fit_rejects_bad_points():
    with pytest.raises(ValueError, match="same length"):
        fit_saturating_power_law([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="losses must be finite and positive"):
        fit_saturating_power_law([1e3, 1e4], [0.5, float("nan")])


# --------------------------------------------------------------------------- outputs


def test_outputs_from_finished_sizes(tmp_path):
    params = np.logspace(4, 6, 4)
    losses = true_loss(params)
    sizes = [
        {"name": f"s{i}", "shape": f"{i + 1}x2x32", "params": int(n), "params_non_embedding": int(n),
         "params_total": int(2 * n), "final_val_loss": float(loss), "final_train_loss": float(loss) + 0.01,
         "probe": {"redshift": {"astropt": {"r2": 0.1 * i}, "random_init": {"r2": 0.0}}}}
        for i, (n, loss) in enumerate(zip(params, losses))
    ]
    curves = {size["name"]: ([0, 10, 20], [1.0, 0.8, size["final_val_loss"]]) for size in sizes}
    result = write_scaling_outputs(sizes, curves, tmp_path)
    stored = json.loads((tmp_path / "scaling.json").read_text())
    assert set(stored) == {"sizes", "fit"} and stored == result
    assert stored["fit"]["alpha"] == pytest.approx(TRUE_LAW["alpha"], rel=1e-3)
    assert stored["fit"]["param_count"] == "non_embedding"
    for name in ("scaling.png", "probe_scaling.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "scaling.md").read_text()
    assert "| s3 |" in summary and "α =" in summary and "r2 0.300" in summary


def test_read_validation_curve(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 1.0}\n{"step": 2, "val_loss": 0.9}\n\n{"step": 4, "val_loss": 0.7}\n')
    assert read_validation_curve(path) == ([2, 4], [0.9, 0.7])
    path.write_text('{"step": 1, "val_loss": 0.9}\nnot json\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_validation_curve(path)
