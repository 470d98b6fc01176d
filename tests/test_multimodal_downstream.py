"""Embeddings and linear probes of a model with spectra from its images, its spectra or both (`--inputs`):
the embedding width, spectra giving other embeddings than images, the spectrum PCA baseline, the inputs
recorded in (and checked on resuming) the Parquet file, and an images-only model refusing spectra."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from downstream_helpers import IMAGE_SIZE, dataset_flags, load_script, save_tiny_model, tiny_split

from astropt_hf import (
    AstroPTConfig,
    AstroPTForPreTraining,
    AstroPTImageProcessor,
    AstroPTSpectrumFeatureExtractor,
)
from astropt_hf.downstream.embeddings import read_embeddings
from astropt_hf.processing_astropt import AstroPTProcessor

HIDDEN = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def multimodal_model(tmp_path_factory) -> Path:
    """A tiny model with spectra, saved with an AstroPTProcessor as pretraining saves one."""
    folder = tmp_path_factory.mktemp("multimodal")
    torch.manual_seed(0)
    config = AstroPTConfig(image_size=IMAGE_SIZE, patch_size=4, num_channels=3, hidden_size=HIDDEN,
                           num_hidden_layers=2, num_attention_heads=4, modalities=["images", "spectra"],
                           spectrum_patch_size=64)  # fmt: skip
    AstroPTForPreTraining(config).save_pretrained(folder)
    image_processor = AstroPTImageProcessor(image_size=IMAGE_SIZE, num_channels=3, stretch="asinh", asinh_scale=0.05)
    AstroPTProcessor(image_processor, AstroPTSpectrumFeatureExtractor()).save_pretrained(folder)
    return folder


def _extract(model: Path, output: Path, inputs: str, *extra: str) -> int:
    script = load_script("extract_embeddings")
    argv = ["--model", str(model), "--output", str(output), "--split", "test", "--inputs", inputs,
            "--batch_size", "8", *dataset_flags(), *extra]  # fmt: skip
    return script.main(argv)


def test_extraction_from_each_input_writes_embeddings_and_records_the_inputs(multimodal_model, tmp_path):
    tables = {}
    for inputs in ("images", "spectra", "images+spectra"):
        assert _extract(multimodal_model, tmp_path / f"{inputs}.parquet", inputs) == 0
        tables[inputs] = read_embeddings(tmp_path / f"{inputs}.parquet")
        assert tables[inputs].embeddings.shape == (len(tiny_split("test").dataset), HIDDEN)
        assert np.isfinite(tables[inputs].embeddings).all()
        assert tables[inputs].metadata["inputs"] == inputs
    assert list(tables["spectra"].ids) == list(tables["images"].ids)
    embeddings = {name: table.embeddings for name, table in tables.items()}
    assert not np.allclose(embeddings["spectra"], embeddings["images"], atol=1e-3)
    assert not np.allclose(embeddings["images+spectra"], embeddings["images"], atol=1e-3)
    # resuming a file of spectra embeddings with image inputs would mix two kinds of embedding in one file
    with pytest.raises(ValueError, match="inputs"):
        _extract(multimodal_model, tmp_path / "spectra.parquet", "images")


def test_probe_from_spectra_reports_the_spectrum_pca_baseline(multimodal_model, tmp_path, capsys):
    script = load_script("linear_probe")
    argv = ["--model", str(multimodal_model), "--targets", "redshift,mag_r", "--output_dir", str(tmp_path),
            "--split", "test", "--inputs", "spectra", "--n_folds", "3", "--batch_size", "8", *dataset_flags()]
    assert script.main(argv) == 0
    results = json.loads((tmp_path / "probe_results.json").read_text())
    for target in ("redshift", "mag_r"):
        assert set(results["targets"][target]) == {"astropt", "random_init", "pixel_pca", "spectrum_pca"}
        assert np.isfinite(results["targets"][target]["spectrum_pca"]["r2"])
    assert results["settings"]["inputs"] == "spectra"
    assert "spectrum_pca" in capsys.readouterr().out


def test_images_only_model_refuses_spectra_inputs(tmp_path):
    model = save_tiny_model(tmp_path / "images-only")
    with pytest.raises(ValueError, match="needs a model that reads spectra"):
        _extract(model, tmp_path / "emb.parquet", "spectra")
    assert not (tmp_path / "emb.parquet").exists()


def test_spectra_are_prepared_by_the_extractor_saved_with_the_model(multimodal_model, tmp_path):
    from astropt_hf.downstream.embeddings import load_backbone, load_spectrum_extractor

    model, _ = load_backbone(multimodal_model)
    AstroPTProcessor(AstroPTImageProcessor(image_size=IMAGE_SIZE, num_channels=3),
                     AstroPTSpectrumFeatureExtractor(normalisation="none")).save_pretrained(tmp_path)
    assert load_spectrum_extractor(model, tmp_path, "spectra").normalisation == "none"
    assert load_spectrum_extractor(model, multimodal_model, "images+spectra").normalisation == "median_abs"
    assert load_spectrum_extractor(model, multimodal_model, "images") is None
    with pytest.raises(ValueError, match="inputs="):
        load_spectrum_extractor(model, multimodal_model, "photometry")
