"""Layer-wise features and probes: one pass equals per-layer passes; results shape, best layer and figures."""

import json

import numpy as np
import pytest
import torch
from downstream_helpers import save_tiny_model, tiny_split

from astropt_hf.downstream.embeddings import compute_embeddings, load_backbone, pixel_batches
from astropt_hf.downstream.layer_features import (
    compute_layer_features,
    default_layer_number,
    layer_pixel_features,
    resolve_layers,
)
from astropt_hf.downstream.layer_probes import LayerProbeOptions, best_layers, run_layer_probes


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), seed=1, num_hidden_layers=3)


@pytest.fixture(scope="module")
def test_split():
    return tiny_split("test")


def test_resolve_layers():
    assert resolve_layers("all", 3) == [0, 1, 2, 3]
    assert resolve_layers("3, 0,2,2", 3) == [0, 2, 3]
    assert resolve_layers([-1, 1], 3) == [1, 3]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers("4", 3)
    with pytest.raises(ValueError, match="comma-separated"):
        resolve_layers("first", 3)


@pytest.mark.parametrize("pooling", ["mean", "mean_first_k", "last"])
def test_one_pass_equals_per_layer_passes(tiny_model, test_split, pooling):
    model, processor = load_backbone(tiny_model)
    batch = next(iter(pixel_batches(test_split.dataset, processor, "image", None, 6, 0)))
    pixels = batch["pixel_values"]
    features = layer_pixel_features(model, pixels, [0, 1, 2, 3], pooling=pooling, pooling_num_patches=3)
    assert sorted(features) == [0, 1, 2, 3] and features[0].shape == (6, 32)
    with torch.no_grad():
        embedded = model.embeddings(model.image_to_patches(pixels))  # layer 0: before any block
        expected0 = {"mean": embedded.mean(1), "mean_first_k": embedded[:, :3].mean(1), "last": embedded[:, -1]}[pooling]
        np.testing.assert_allclose(features[0], expected0.numpy(), rtol=1e-5, atol=1e-6)
        for layer in (1, 2):  # raw block outputs: embedding_layer counts blocks from 0
            single = model.get_image_embeddings(pixels, layer=layer - 1, pooling=pooling, pooling_num_patches=3)
            np.testing.assert_allclose(features[layer], single.numpy(), rtol=1e-5, atol=1e-6)
        last = model.get_image_embeddings(pixels, layer="last", pooling=pooling, pooling_num_patches=3)
        np.testing.assert_allclose(features[3], last.numpy(), rtol=1e-5, atol=1e-6)
    # the layers differ from each other (the test would pass trivially if every layer were the same tensor)
    assert not np.allclose(features[2], features[3])


def test_dataset_features_match_compute_embeddings(tiny_model, test_split):
    model, processor = load_backbone(tiny_model)
    features = compute_layer_features(model, test_split.dataset, processor, [1, 3], batch_size=5)
    reference = compute_embeddings(model, test_split.dataset, processor, batch_size=7, progress=False)
    np.testing.assert_allclose(features[3], reference, rtol=1e-5, atol=1e-6)
    middle = compute_embeddings(model, test_split.dataset, processor, layer=0, progress=False)
    np.testing.assert_allclose(features[1], middle, rtol=1e-5, atol=1e-6)
    assert default_layer_number(model.config) == 3


def test_best_layer_prefers_highest_score_then_shallower():
    scores = {"z": {"0": {"r2": 0.1}, "1": {"r2": 0.5}, "2": {"r2": 0.5}},
              "label": {"0": {"accuracy": 0.9}, "1": {"accuracy": 0.4}}}  # fmt: skip
    best, metric = best_layers(scores)
    assert best == {"z": 1, "label": 0} and metric == {"z": "r2", "label": "accuracy"}


def test_run_layer_probes_writes_results_and_figures(tiny_model, tmp_path):
    existing = tmp_path / "probe_results.json"
    existing.write_text(json.dumps({"targets": {"redshift": {"astropt": {"r2": 0.1}}}}))
    spec = {"dataset": "synthetic", "split": "test", "data_cache_dir": None}
    from downstream_helpers import SYNTHETIC, galaxy_cache_dir

    spec.update(data_cache_dir=str(galaxy_cache_dir()), synthetic=SYNTHETIC)
    result = run_layer_probes(tiny_model, spec, ["redshift", "mag_r"], tmp_path, layers="0,2,3", split="test",
                              options=LayerProbeOptions(n_folds=3, batch_size=8))  # fmt: skip
    stored = json.loads(existing.read_text())
    assert stored["targets"]["redshift"]["astropt"] == {"r2": 0.1}  # what was there stays
    assert set(stored["layers"]) == {"redshift", "mag_r"}
    assert set(stored["layers"]["redshift"]) == {"0", "2", "3"}
    assert {"r2", "mae", "n_samples"} <= set(stored["layers"]["redshift"]["2"])
    assert set(stored["random_init_layers"]["mag_r"]) == {"0", "2", "3"}
    for target, layer in stored["best_layer"].items():
        scores = {int(k): v["r2"] for k, v in stored["layers"][target].items()}
        assert scores[layer] == max(scores.values())
    assert stored["layer_settings"]["layers"] == [0, 2, 3] and stored["layer_settings"]["num_rows"] == 24
    # random weights probe differently from trained-from-seed weights: the baseline is really another model
    assert stored["random_init_layers"]["redshift"]["3"]["r2"] != stored["layers"]["redshift"]["3"]["r2"]
    for png in (result.heatmap, result.line_plot):
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    assert result.heatmap.name == "probe_layers.png"


def test_linear_probe_cli_adds_layers_and_attentive_probes_after_the_linear_ones(tiny_model, tmp_path, capsys):
    from downstream_helpers import dataset_flags, load_script

    script = load_script("linear_probe")
    assert script.main(["--model", str(tiny_model), "--targets", "redshift,mag_r", "--output_dir", str(tmp_path),
                        "--n_folds", "3", "--batch_size", "8", "--device", "cpu", "--baselines", "random_init",
                        "--layers", "0,2,3", "--attentive", "--attentive_max_epochs", "4", "--attentive_patience", "2",
                        *dataset_flags()]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| target | metric | best layer |" in printed and "| target | metric | attentive | linear |" in printed
    stored = json.loads((tmp_path / "probe_results.json").read_text())
    assert set(stored["layers"]) == {"redshift", "mag_r"} and set(stored["layers"]["mag_r"]) == {"0", "2", "3"}
    assert set(stored["best_layer"]) == {"redshift", "mag_r"} and stored["best_layer"]["redshift"] in (0, 2, 3)
    for target in ("redshift", "mag_r"):
        # the linear probes' results survive the layer and attentive probes written after them
        assert set(stored["targets"][target]) == {"astropt", "random_init", "attentive", "attentive_random_init"}
        assert stored["targets"][target]["attentive"]["n_samples"] == 24
        assert (stored["targets"][target]["attentive"]["max_epochs"], stored["targets"][target]["attentive"]["patience"]) == (4, 2)
        assert stored["targets"][target]["attentive"]["r2"] != stored["targets"][target]["astropt"]["r2"]
    assert (tmp_path / "probe_layers.png").is_file() and (tmp_path / "probe_bars.png").is_file()
