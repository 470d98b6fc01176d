"""Scaling sweep: size parsing, parameter counts, the power-law fit, outputs, and a sweep end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from launching import free_port

from astropt_hf import ASTROPT_PRESETS, AstroPTConfig, AstroPTForPreTraining
from astropt_hf.studies.scaling_laws import (
    count_parameters,
    fit_saturating_power_law,
    parse_size,
    parse_sizes,
)
from astropt_hf.studies.scaling_report import read_validation_curve, write_scaling_outputs

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


# --------------------------------------------------------------------------- the sweep end to end


def tiny_sweep_argv(cache_dir, max_steps: int = 8) -> list[str]:
    """Pretraining settings for a sweep that runs in seconds: 16px galaxies, 16 patches, a few steps."""
    return [
        "--max_steps", str(max_steps), "--image_size", "16", "--patch_size", "4",
        "--batch_size", "8", "--eval_steps", "4", "--eval_batches", "1", "--log_steps", "2",
        "--warmup_steps", "1", "--save_steps", "4", "--save_total_limit", "2", "--num_plot_images", "0",
        "--synthetic_num_train", "48", "--synthetic_num_validation", "16", "--synthetic_num_test", "40",
        "--data_cache_dir", str(cache_dir),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A two-size sweep with probes, run once for the tests below."""
    from astropt_hf.studies.scaling_sweep import SweepOptions, run_scaling_sweep

    root = tmp_path_factory.mktemp("sweep")
    options = SweepOptions(
        sizes=parse_sizes("1x2x8,2x2x32"), output_dir=root / "out",
        pretrain_argv=tiny_sweep_argv(root / "cache"), probe_targets=["mag_r"],
    )  # fmt: skip
    lines: list[str] = []
    result = run_scaling_sweep(options, log=lines.append)
    return options, result, lines


@pytest.mark.slow
def test_sweep_writes_scaling_outputs(finished_sweep):
    options, result, lines = finished_sweep
    out = options.output_dir
    stored = json.loads((out / "scaling.json").read_text())
    assert set(stored) == {"sizes", "fit"}
    assert [s["name"] for s in stored["sizes"]] == ["1x2x8", "2x2x32"]
    for size, spec in zip(stored["sizes"], options.sizes):
        summary = json.loads((out / "sizes" / spec.name / "summary.json").read_text())
        assert size["final_val_loss"] == summary["final_val_loss"] > 0
        assert size["steps"] == 8
        config = AstroPTConfig(image_size=16, patch_size=4, **spec.model_overrides())
        assert size["params"] == size["params_non_embedding"] == count_parameters(config)["non_embedding"]
        assert size["params_total"] == summary["num_parameters"]
        assert set(size["probe"]["mag_r"]) == {"astropt", "random_init", "pixel_pca"}
        assert (out / "sizes" / spec.name / "probes" / "probe_results.json").is_file()
    # Same data, schedule and budget for every size.
    assert len({s["tokens_seen"] for s in stored["sizes"]}) == 1
    assert stored["fit"]["model"] == "power_law" and stored["fit"]["num_points"] == 2
    for name in ("scaling.png", "probe_scaling.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "2x2x32" in (out / "scaling.md").read_text()
    size_lines = [line for line in lines if line.startswith("[")]
    assert len(size_lines) == 2 and all("trained" in line and "final val loss" in line for line in size_lines)


@pytest.mark.slow
def test_sweep_resumes_half_trained_size_and_reuses_finished_ones(finished_sweep):
    import shutil

    from astropt_hf.studies.scaling_sweep import SweepOptions, run_scaling_sweep

    options, result, _ = finished_sweep
    big = options.output_dir / "sizes" / "2x2x32"
    before = {s["name"]: s["final_val_loss"] for s in result["sizes"]}
    # Make the bigger size look killed after its step-4 checkpoint: no summary, no step-8 checkpoint.
    (big / "summary.json").unlink()
    shutil.rmtree(big / "checkpoint-8")
    small_summary = (options.output_dir / "sizes" / "1x2x8" / "summary.json").stat().st_mtime_ns
    lines: list[str] = []
    again = run_scaling_sweep(SweepOptions(**{**options.__dict__, "probe_targets": []}), log=lines.append)
    assert (options.output_dir / "sizes" / "1x2x8" / "summary.json").stat().st_mtime_ns == small_summary
    assert "reused" in lines[0] and "trained" in lines[1]
    resumed = json.loads((big / "summary.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-4")
    after = {s["name"]: s["final_val_loss"] for s in again["sizes"]}
    assert after == pytest.approx(before, rel=1e-5)


@pytest.mark.slow
def test_sweep_refuses_changed_settings_and_size_keys(finished_sweep):
    from astropt_hf.studies.scaling_sweep import SweepOptions, validate_sweep_options

    options, _, _ = finished_sweep
    cache = options.output_dir.parent / "cache"
    changed = SweepOptions(sizes=options.sizes, output_dir=options.output_dir,
                           pretrain_argv=tiny_sweep_argv(cache, max_steps=12))
    with pytest.raises(ValueError, match=r"max_steps: 8 -> 12"):
        validate_sweep_options(changed)
    clash = SweepOptions(sizes=options.sizes, output_dir=options.output_dir,
                         pretrain_argv=[*tiny_sweep_argv(cache), "--hidden_size", "64"])
    with pytest.raises(ValueError, match="--hidden_size"):
        validate_sweep_options(clash)


@pytest.mark.slow
def test_sweep_under_two_processes(tmp_path):
    """`accelerate launch` with two CPU processes: both take part in every size, the main one alone logs and
    writes; a rerun reuses the finished sizes (a decision broadcast from the main process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "scaling_sweep.py"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(script), "--sizes", "1x2x8,2x2x16", "--output_dir", str(tmp_path / "out"),
        *tiny_sweep_argv(tmp_path / "cache", max_steps=4),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    for expected in ("trained", "reused"):
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        size_lines = [line for line in run.stdout.splitlines() if line.startswith("[")]
        assert len(size_lines) == 2 and all(expected in line for line in size_lines), run.stdout[-2000:]
    summary = json.loads((tmp_path / "out" / "sizes" / "2x2x16" / "summary.json").read_text())
    assert summary["num_processes"] == 2
    stored = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert [s["name"] for s in stored["sizes"]] == ["1x2x8", "2x2x16"]
