"""Anomaly scores: the noise floor, the reference statistics, damaged stamps ranked above their clean
twins, the artefact benchmark and both command lines end to end, offline on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch.nn.functional as F
from downstream_helpers import IMAGE_SIZE, dataset_flags, load_script, save_tiny_model, tiny_split

from astropt_hf import AstroPTConfig, AstroPTForPreTraining, AstroPTImageProcessor, AstroPTModel
from astropt_hf.data.artefacts import saturated_star
from astropt_hf.data.synthetic import BANDS, SKY_NOISE_NMGY
from astropt_hf.downstream.anomaly import (
    PART_COLUMNS,
    AnomalyOptions,
    AnomalyReference,
    RawScores,
    array_batches,
    collect_scores,
    load_pretraining_model,
    patch_noise_floor,
)
from astropt_hf.studies.anomaly_benchmark import ranking_metrics

NOISE = np.array([SKY_NOISE_NMGY[band] for band in BANDS])  # the synthetic set's sky noise, nanomaggies


def _images(split: str) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) for image in tiny_split(split).dataset["image"]])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp("anomaly-model"))
    model, processor = load_pretraining_model(folder)
    return folder, model, processor


def _config(**overrides) -> AstroPTConfig:
    settings = dict(image_size=IMAGE_SIZE, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=4)  # fmt: skip
    return AstroPTConfig(**{**settings, **overrides})


@pytest.mark.parametrize("patch_norm", ["per_patch", "per_image"])
@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_noise_floor_is_the_loss_that_pure_noise_gives(patch_norm, loss):
    """A prediction equal to the noiseless image loses, on average, the floor: compare with noise drawn here."""
    model = AstroPTForPreTraining(_config(patch_norm=patch_norm, loss=loss, huber_delta=0.5)).eval()
    processor = AstroPTImageProcessor(image_size=IMAGE_SIZE, num_channels=3, stretch="asinh", asinh_scale=0.02)
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    galaxy = 0.3 * np.exp(-((rows - 7.5) ** 2 + (cols - 7.5) ** 2) / (2 * 2.5**2))
    clean = np.repeat((galaxy[None] * np.array([0.5, 1.0, 1.5])[:, None, None])[None], 64, axis=0)
    noisy = clean + np.random.default_rng(0).normal(size=clean.shape) * NOISE[:, None, None]
    pixels_clean = processor(list(clean.astype(np.float32)), return_tensors="pt")["pixel_values"]
    pixels_noisy = processor(list(noisy.astype(np.float32)), return_tensors="pt")["pixel_values"]
    # The model's target is y = (x_noisy - m) / d; the noiseless image in the same frame is
    # y - (x_noisy - x_clean) / d, which is what a perfect predictor would say.
    cut = AstroPTForPreTraining(_config(patch_norm="none")).image_to_patches
    raw = cut(pixels_noisy)
    if patch_norm == "per_patch":
        scale = raw.std(dim=-1, keepdim=True) + model.config.patch_norm_eps
    else:
        scale = raw.flatten(1).std(dim=-1)[:, None, None] + model.config.patch_norm_eps
    targets = model.image_to_patches(pixels_noisy)
    perfect = targets - cut(pixels_noisy - pixels_clean) / scale
    if loss == "huber":
        actual = F.huber_loss(perfect, targets, reduction="none", delta=0.5)
    else:
        actual = F.mse_loss(perfect, targets, reduction="none")
    floor = patch_noise_floor(model, processor, pixels_noisy)
    ratio = actual.mean(dim=-1).mean(dim=0) / floor.mean(dim=0)  # per patch, averaged over 64 noise draws
    assert floor.shape == (64, (IMAGE_SIZE // 4) ** 2)
    assert 0.8 < float(ratio.median()) < 1.25
    assert float(ratio.min()) > 0.6 and float(ratio.max()) < 1.6


def _raw(ids, log_excess, embeddings) -> RawScores:
    count = len(ids)
    return RawScores(np.asarray(ids, dtype=object), np.asarray(log_excess, dtype=np.float32), np.ones(count),
                     np.ones(count), np.asarray(embeddings, dtype=np.float64))  # fmt: skip


def test_reference_statistics_by_hand():
    rng = np.random.default_rng(0)
    log_excess = rng.normal(size=(41, 5)) * np.array([1.0, 2.0, 3.0, 4.0, 5.0]) + np.arange(5)
    embeddings = rng.normal(size=(41, 4))
    ids = [f"r{i}" for i in range(41)]
    reference = AnomalyReference.fit(_raw(ids, log_excess, embeddings), AnomalyOptions(neighbours=1, worst_patches=2))
    median = np.median(log_excess, axis=0)
    np.testing.assert_allclose(reference.position_median, median, rtol=1e-5)
    np.testing.assert_allclose(reference.position_scale, 1.4826 * np.median(np.abs(log_excess - median), axis=0), rtol=1e-5)
    # a reference image is never its own neighbour: k=1 gives the distance to the nearest other image
    features = (embeddings - embeddings.mean(axis=0)) / embeddings.std(axis=0)
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    parts = reference.parts(_raw(ids, log_excess, embeddings))
    np.testing.assert_allclose(parts["embedding_outlier"], distances.min(axis=1), rtol=1e-5)
    z = (log_excess - reference.position_median) / reference.position_scale
    np.testing.assert_allclose(parts["surprise_worst"], np.sort(z, axis=1)[:, -2:].mean(axis=1), rtol=1e-4)
    # p-values: (1 + #reference >= x) / (1 + n): 2/42 at the reference maximum (it counts itself); beyond
    # it 1/42 times an exponential tail whose scale is the top decile's mean excess over its threshold
    values = reference.part_values["surprise"]
    top = np.max(values)
    at_max = reference.p_values({"surprise": np.array([top, top + 2.0])})["surprise"]
    threshold = np.quantile(values, 0.9)
    scale = np.mean(values[values > threshold] - threshold)
    np.testing.assert_allclose(at_max, [2 / 42, np.exp(-2.0 / scale) / 42], rtol=1e-6)
    strange = _raw(["new", "stranger"], np.stack([log_excess[0] + 50.0, log_excess[0] + 100.0]),
                   np.stack([embeddings[0] + 50.0, embeddings[0] + 100.0]))  # fmt: skip
    columns = reference.score(strange)
    for name in PART_COLUMNS:
        assert np.all(columns[f"p_{name}"] < 1 / 42)
    assert np.log(42) < columns["anomaly_score"][0] < columns["anomaly_score"][1]
    typical = reference.p_values({"surprise": np.array([np.median(reference.part_values["surprise"])])})
    assert typical["surprise"][0] == pytest.approx(22 / 42)


def test_a_backbone_checkpoint_is_refused(tmp_path):
    AstroPTModel(_config()).save_pretrained(tmp_path)
    AstroPTImageProcessor(image_size=IMAGE_SIZE).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="next-patch head"):
        load_pretraining_model(tmp_path)


def test_damaged_stamps_rank_above_their_clean_twins(tiny_model):
    _, model, processor = tiny_model
    catalogue, reference_images = _images("test"), _images("train")
    options = AnomalyOptions(neighbours=5)
    reference = AnomalyReference.fit(collect_scores(model, processor, array_batches(reference_images, processor)), options)
    twins = [0, 5, 11]
    damaged = np.stack([saturated_star(catalogue[i], np.random.default_rng(i), overexposure=30.0, noise=NOISE)
                        for i in twins])  # fmt: skip
    ids = [f"clean-{i}" for i in range(len(catalogue))] + [f"damaged-{i}" for i in twins]
    raw = collect_scores(model, processor, array_batches(np.concatenate([catalogue, damaged]), processor, 16, ids))
    columns = reference.score(raw)
    score = dict(zip(columns["id"], columns["anomaly_score"]))
    for i in twins:
        assert score[f"damaged-{i}"] > score[f"clean-{i}"]
    # and all three sit at the very top of the 27: random scores would put them there 1 time in 2925
    top = set(np.asarray(columns["id"])[np.argsort(-columns["anomaly_score"])[:3]])
    assert top == {f"damaged-{i}" for i in twins}


def test_ranking_metrics_by_hand():
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.3, 0.2])
    metrics = ranking_metrics(labels, scores)
    assert metrics["roc_auc"] == pytest.approx(3 / 6)  # positive 0.9 beats 3 negatives, 0.1 beats none
    assert metrics["precision_at_k"] == pytest.approx(0.5) and metrics["k"] == 2


def test_anomaly_scores_cli_on_a_folder_of_npy_stamps(tiny_model, tmp_path):
    import pyarrow.parquet as pq

    folder, _, _ = tiny_model
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    catalogue = _images("test")[:20]
    for i, image in enumerate(catalogue):
        np.save(stamps / f"galaxy{i:02d}.npy", image)
    np.save(stamps / "galaxy_bleeding.npy", saturated_star(catalogue[3], np.random.default_rng(0), overexposure=30.0))
    output, grid = tmp_path / "scores.parquet", tmp_path / "top.png"
    script = load_script("anomaly_scores")
    assert script.main(["--model", str(folder), "--dataset", str(stamps), "--split", "all", "--output", str(output),
                        "--grid", str(grid), "--top_k", "4", "--neighbours", "5", "--batch_size", "8"]) == 0  # fmt: skip
    table = pq.read_table(output).to_pandas()
    assert sorted(table["id"]) == sorted([f"galaxy{i:02d}" for i in range(20)] + ["galaxy_bleeding"])
    for column in ("anomaly_score", *PART_COLUMNS, *(f"p_{name}" for name in PART_COLUMNS), "loss", "noise_loss"):
        assert np.isfinite(table[column]).all(), column
    assert table["id"].iloc[0] == "galaxy_bleeding"  # strangest first
    assert np.all(np.diff(table["anomaly_score"]) <= 0)
    metadata = json.loads(pq.read_schema(output).metadata[b"astropt_hf.anomaly"])
    assert metadata["dataset"]["dataset"] == str(stamps) and metadata["options"]["top_k"] == 4
    assert grid.stat().st_size > 10_000

    # against another reference: the clean synthetic train split
    other = tmp_path / "scores_vs_synthetic.parquet"
    assert script.main(["--model", str(folder), "--dataset", str(stamps), "--split", "all", "--output", str(other),
                        "--reference", "synthetic", "--reference_split", "train", "--neighbours", "5",
                        *dataset_flags()]) == 0  # fmt: skip
    versus = pq.read_table(other).to_pandas()
    assert len(versus) == 21 and versus["id"].iloc[0] == "galaxy_bleeding"
    assert json.loads(pq.read_schema(other).metadata[b"astropt_hf.anomaly"])["reference"]["split"] == "train"


def test_anomaly_scores_cli_refuses_abbreviated_options(tiny_model, tmp_path):
    script = load_script("anomaly_scores")
    with pytest.raises(SystemExit):
        script.parse_args(["--mod", "x", "--output", str(tmp_path / "s.parquet")])


def test_evaluate_anomalies_end_to_end_finds_strong_artefacts(tiny_model, tmp_path):
    folder, _, _ = tiny_model
    script = load_script("evaluate_anomalies")
    assert script.main(["--model", str(folder), "--output_dir", str(tmp_path), "--reference_split", "train",
                        "--kinds", "saturated_star,dead_column", "--fraction", "0.25", "--neighbours", "5",
                        "--pca_components", "8", "--strangest", "4", *dataset_flags()]) == 0  # fmt: skip
    report = json.loads((tmp_path / "anomaly_benchmark.json").read_text())
    assert set(report["results"]) == {"saturated_star", "dead_column", "overall"}
    assert report["settings"]["num_catalogue"] == 24 and report["settings"]["num_damaged"] == 6
    star = report["results"]["saturated_star"]
    # stars 900-9000 sky sigmas bright: the combined score must find them all;
    # random scores would reach an AUC of 0.95 with 6 positives among 24 far less than once in 1000
    assert star["anomaly_score"]["roc_auc"] >= 0.95 and star["anomaly_score"]["precision_at_k"] >= 0.8
    assert star["max_pixel"]["roc_auc"] >= 0.8  # the baseline works too (its noise unit is right)
    table = (tmp_path / "anomaly_benchmark.md").read_text()
    assert "| saturated star |" in table and "precision at k (k = 6 damaged of 24)" in table
    assert (tmp_path / "anomaly_benchmark_auc.png").stat().st_size > 10_000
    assert (tmp_path / "anomaly_benchmark_strangest.png").stat().st_size > 10_000
