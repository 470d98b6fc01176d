"""Probability-density heads of AstroPTForImageClassification: normalisation, summaries, the likelihood,
PDF scores and calibration, checkpoints that keep their bins, and fine-tuning with --head pdf."""

import json
import math

import numpy as np
import pytest
import torch
from downstream_helpers import (
    dataset_flags,
    load_script,
    reload_classifier_as_remote_code,
    save_tiny_model,
    tiny_split,
)

from astropt_hf import AstroPTConfig, AstroPTForImageClassification
from astropt_hf.downstream.binned_pdf import BinnedPDF
from astropt_hf.downstream.pdf_finetune import DEFAULT_LABEL_SMOOTHING, pdf_bin_edges
from astropt_hf.downstream.pdf_metrics import calibrate_and_score, coverage, crps, fit_temperature, mean_nll
from astropt_hf.modeling_astropt import binned_pdf_nll, gaussian_mixture_nll

TINY = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def _pdf_model(head_type, **overrides):
    config = AstroPTConfig(**TINY, head_type=head_type, pdf_min=0.0, pdf_max=2.0, pdf_num_bins=16, num_labels=1,
                           problem_type="regression", **overrides)  # fmt: skip
    return AstroPTForImageClassification(config).eval()


@pytest.mark.parametrize("head_type", ["binned_pdf", "gaussian_mixture"])
def test_pdf_heads_normalise_and_their_density_integrates_to_one(head_type):
    model = _pdf_model(head_type)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 3.0)  # far from the uniform start
        logits = model(pixel_values=torch.randn(5, 3, 16, 16)).logits
    assert logits.shape == (5, model.config.head_outputs)
    pdfs = BinnedPDF.from_outputs(logits, model.config)
    np.testing.assert_allclose(pdfs.probabilities.sum(axis=1), 1.0, atol=1e-12)
    grid = np.linspace(0.0, 2.0, 200_001)
    index = np.clip(np.searchsorted(pdfs.edges, grid, side="right") - 1, 0, 15)
    np.testing.assert_allclose(np.trapezoid(pdfs.densities[:, index], grid, axis=1), 1.0, atol=1e-3)


def test_intervals_contain_the_median_and_nest_and_quantiles_invert_the_cdf():
    rng = np.random.default_rng(0)
    edges = np.concatenate([[0.0], np.cumsum(rng.uniform(0.05, 0.3, 20))])
    probabilities = rng.dirichlet(np.full(20, 0.3), size=200)  # spiky, often with empty bins
    probabilities[:10, 5:15] = 0.0  # two separate peaks
    pdfs = BinnedPDF(edges, probabilities)
    s = pdfs.summary()
    assert np.all(s["lo95"] <= s["lo68"]) and np.all(s["lo68"] <= s["median"])
    assert np.all(s["median"] <= s["hi68"]) and np.all(s["hi68"] <= s["hi95"])
    assert np.all((s["mode"] >= edges[0]) & (s["mode"] <= edges[-1]))
    for q in (0.025, 0.16, 0.5, 0.84, 0.975):
        np.testing.assert_allclose(pdfs.cdf(pdfs.quantile(q)), q, atol=1e-9)
    # a uniform density on [0, 2]: median 1, 68% interval [0.32, 1.68], mean 1
    uniform = BinnedPDF(np.linspace(0, 2, 11), np.full((1, 10), 0.1))
    assert uniform.median()[0] == pytest.approx(1.0)
    assert uniform.interval(0.68)[0][0] == pytest.approx(0.32) and uniform.interval(0.68)[1][0] == pytest.approx(1.68)
    assert uniform.mean()[0] == pytest.approx(1.0)


def test_binned_likelihood_matches_a_hand_computation():
    edges = torch.tensor([0.0, 1.0, 3.0])
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    labels = torch.tensor([2.0, 0.5])
    # p = (1/4, 3/4); densities 0.25 / 1 and 0.75 / 2
    expected = -(math.log(0.75 / 2.0) + math.log(0.25 / 1.0)) / 2
    assert binned_pdf_nll(logits, labels, edges).item() == pytest.approx(expected, rel=1e-6)
    # a label on an inner edge belongs to the upper bin; labels beyond the range count in the end bins
    assert binned_pdf_nll(logits[:1], torch.tensor([1.0]), edges).item() == pytest.approx(-math.log(0.375), rel=1e-6)
    assert binned_pdf_nll(logits[:1], torch.tensor([-4.0]), edges).item() == pytest.approx(-math.log(0.25), rel=1e-6)
    # label smoothing spreads the target over the bins by a Gaussian integrated over each bin
    sigma = 0.5 * 1.5  # half a mean bin width
    weights = np.diff([0.5 * math.erfc(-(e - 2.0) / (sigma * math.sqrt(2))) for e in (0.0, 1.0, 3.0)])
    weights = weights / weights.sum()
    smoothed = -(weights[0] * math.log(0.25) + weights[1] * math.log(0.375))
    assert binned_pdf_nll(logits[:1], labels[:1], edges, smoothing=0.5).item() == pytest.approx(smoothed, rel=1e-5)


def test_mixture_likelihood_matches_a_hand_computation_and_is_the_model_loss():
    edges = torch.tensor([-1.0, 1.0])  # centre 0, half range 1: the outputs are in the target's units
    outputs = torch.tensor([[0.0, math.log(3.0), -0.5, 0.5, math.log(0.2), math.log(0.4)]])
    y = 0.3
    density = 0.25 * math.exp(-((y + 0.5) ** 2) / (2 * 0.2**2)) / (0.2 * math.sqrt(2 * math.pi)) + 0.75 * math.exp(
        -((y - 0.5) ** 2) / (2 * 0.4**2)
    ) / (0.4 * math.sqrt(2 * math.pi))
    assert gaussian_mixture_nll(outputs, torch.tensor([y]), edges).item() == pytest.approx(-math.log(density), rel=1e-5)

    model = _pdf_model("gaussian_mixture")
    pixel_values, labels = torch.randn(3, 3, 16, 16), torch.tensor([0.2, 1.0, 1.7])
    out = model(pixel_values=pixel_values, labels=labels)
    expected = gaussian_mixture_nll(out.logits, labels, torch.tensor(model.config.pdf_bins))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    binned = _pdf_model("binned_pdf")
    out = binned(pixel_values=pixel_values, labels=labels)
    assert out.loss.item() == pytest.approx(binned_pdf_nll(out.logits, labels, torch.tensor(binned.config.pdf_bins)).item())


def test_crps_matches_a_numerical_integral_and_tends_to_the_absolute_error():
    rng = np.random.default_rng(1)
    edges = np.sort(rng.uniform(0.0, 2.0, 9))
    pdfs = BinnedPDF(edges, rng.dirichlet(np.ones(8), size=3))
    truth = np.array([0.7, edges[0] - 0.4, edges[-1] + 0.25])  # inside, below and above the range
    x = np.linspace(-1.0, 3.0, 400_001)
    for i, y in enumerate(truth):
        cdf = np.interp(x, edges, pdfs.cdf_at_edges()[i])
        assert crps(pdfs, truth)[i] == pytest.approx(np.trapezoid((cdf - (x >= y)) ** 2, x), abs=1e-5)
    # all the mass in one bin of width 1e-6 around 0.5: CRPS -> |0.5 - y|
    narrow = BinnedPDF([0.0, 0.5 - 5e-7, 0.5 + 5e-7, 1.0], [[0.0, 1.0, 0.0]] * 3)
    np.testing.assert_allclose(crps(narrow, [0.5, 0.1, 0.95]), [0.0, 0.4, 0.45], atol=1e-6)


def _gaussian_pdfs(centres, sigma, edges):
    cdf = 0.5 * (1 + np.vectorize(math.erf)((edges[None, :] - centres[:, None]) / (sigma * math.sqrt(2))))
    return np.log(np.maximum(np.diff(cdf, axis=1), 1e-300))


def test_temperature_scaling_calibrates_overconfident_pdfs():
    rng = np.random.default_rng(2)
    edges = np.linspace(-1.0, 3.0, 201)
    centres = rng.uniform(0.5, 1.5, 2000)
    truth = centres + rng.normal(0.0, 0.1, centres.size)
    log_p = _gaussian_pdfs(centres, 0.04, edges)  # the PDFs claim 0.04; the errors are 0.1
    validation, test = slice(0, 1000), slice(1000, None)
    temperature = fit_temperature(log_p[validation], edges, truth[validation])
    assert temperature > 2.0
    result = calibrate_and_score(log_p[test], truth[test], edges, log_p[validation], truth[validation])
    assert result.temperature == pytest.approx(temperature)
    raw, calibrated = result.raw, result.calibrated
    assert raw["coverage_68"] < 0.45 and abs(calibrated["coverage_68"] - 0.68) < 0.05
    assert abs(calibrated["coverage_95"] - 0.95) < abs(raw["coverage_95"] - 0.95)
    assert calibrated["nll"] < raw["nll"] and calibrated["pit_ks"] < raw["pit_ks"] and calibrated["crps"] < raw["crps"]
    tempered = BinnedPDF.from_log_probabilities(log_p[test], edges, temperature)
    assert coverage(tempered, truth[test], 0.68) == calibrated["coverage_68"]
    assert mean_nll(tempered, truth[test]) == pytest.approx(calibrated["nll"])
    # without a validation split nothing is fitted, and the scores say so
    alone = calibrate_and_score(log_p[test], truth[test], edges)
    assert alone.temperature == 1.0 and alone.raw == alone.calibrated and alone.notes


def test_config_records_the_head_and_checkpoints_reload_with_their_bins(tmp_path):
    from transformers import AutoModelForImageClassification

    model = _pdf_model("binned_pdf", pdf_label_smoothing=0.5)
    model.save_pretrained(tmp_path / "pdf")
    config = json.loads((tmp_path / "pdf" / "config.json").read_text())
    assert config["head_type"] == "binned_pdf" and config["pdf_bins"] == pytest.approx(np.linspace(0, 2, 17))
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "pdf", trust_remote_code=True).eval()
    assert reloaded.config.pdf_bins == model.config.pdf_bins and reloaded.config.pdf_label_smoothing == 0.5
    pixel_values = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)

    # a pretraining checkpoint gets a mixture head from keyword overrides; its means start spread out
    pretrained = save_tiny_model(tmp_path / "pre")
    mixture = AutoModelForImageClassification.from_pretrained(
        pretrained, trust_remote_code=True, head_type="gaussian_mixture", pdf_min=0.0, pdf_max=1.0, pdf_num_components=4
    )
    assert mixture.config.pdf_bins == pytest.approx(np.linspace(0, 1, 65)) and mixture.classifier.out_features == 12
    np.testing.assert_allclose(mixture.classifier.bias[4:8].detach().numpy(), [-0.6, -0.2, 0.2, 0.6], atol=1e-6)
    with pytest.raises(ValueError, match="pdf_bins"):
        AutoModelForImageClassification.from_pretrained(pretrained, trust_remote_code=True, head_type="binned_pdf")


def test_bin_edges_follow_the_training_range():
    edges = pdf_bin_edges([0.1, 0.5, 0.3], 4)
    assert edges[0] == pytest.approx(0.08) and edges[-1] == pytest.approx(0.52) and len(edges) == 5
    assert pdf_bin_edges([0.0, 1.0], 2)[0] == 0.0  # a non-negative target keeps a non-negative range
    assert pdf_bin_edges([-1.0, 1.0], 2)[0] == pytest.approx(-1.1)
    assert pdf_bin_edges([0.0, 1.0], [0.0, 0.2, 1.5]) == [0.0, 0.2, 1.5]


def test_finetune_cli_with_a_pdf_head_writes_calibrated_predictions(tmp_path, capsys):
    import pandas as pd
    from transformers import AutoModelForImageClassification

    model = save_tiny_model(tmp_path / "model", patch_norm="per_image")
    output = tmp_path / "ft"
    script = load_script("finetune")
    assert script.main(["--model", str(model), "--target", "redshift", "--output_dir", str(output), "--head", "pdf",
                        "--pdf_bins", "24", "--max_steps", "6", "--batch_size", "8", "--eval_steps", "3",
                        *dataset_flags()]) == 0  # fmt: skip
    assert "eval_crps" in capsys.readouterr().out
    table = pd.read_parquet(output / "test_predictions.parquet")
    test = tiny_split("test").dataset
    for column in ("id", "true", "median", "mode", "mean", "lo68", "hi68", "lo95", "hi95", "median_calibrated",
                   "lo68_calibrated", "hi95_calibrated", "pit", "crps"):  # fmt: skip
        assert column in table.columns, column
    assert list(table["id"]) == list(test["id"]) and np.allclose(table["true"], test["redshift"])
    assert np.all(table["lo95"] <= table["lo68"]) and np.all(table["lo68"] <= table["median"])
    assert np.all(table["median"] <= table["hi68"]) and np.all(table["hi68"] <= table["hi95"])

    results = json.loads((output / "finetune_results.json").read_text())
    pdf = results["pdf"]
    assert pdf["head_type"] == "binned_pdf" and pdf["num_bins"] == 24 and pdf["validation_size"] == 8
    for scores in (pdf["raw"], pdf["calibrated"]):
        for key in ("crps", "coverage_68", "coverage_95", "pit_ks", "sigma_nmad", "bias", "outlier_fraction"):
            assert np.isfinite(scores[key]), key
    assert pdf["calibrated"]["coverage_68"] == pytest.approx(
        np.mean((table["true"] >= table["lo68_calibrated"]) & (table["true"] <= table["hi68_calibrated"]))
    )
    assert results["regression_target"] is None and "eval_sigma_nmad" in results["metrics"]
    for figure in ("pdf_pit.png", "pdf_coverage.png", "pdf_median_vs_true.png", "pdf_examples.png"):
        assert (output / figure).stat().st_size > 0, figure
    assert "head_type" in (output / "README.md").read_text()

    # the checkpoint's own remote code, in a fresh process without astropt_hf, gives the same PDFs
    reply = reload_classifier_as_remote_code(output, np.stack(test[:]["image"]), tmp_path)
    saved = json.loads((output / "config.json").read_text())
    assert reply["head_type"] == "binned_pdf" and reply["pdf_bins"] == pytest.approx(saved["pdf_bins"])
    assert len(reply["pdf_bins"]) == 25
    assert saved["pdf_label_smoothing"] == DEFAULT_LABEL_SMOOTHING
    config = AutoModelForImageClassification.from_pretrained(output, trust_remote_code=True).config
    medians = BinnedPDF.from_outputs(np.asarray(reply["logits"]), config).median()
    np.testing.assert_allclose(medians, table["median"], rtol=1e-5, atol=1e-6)
