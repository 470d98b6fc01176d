"""Pretraining with images and spectra: the collator's spectrum path, the multimodal demo preset for a few
steps (both modalities' losses logged, spectrum panels, an AstroPTProcessor that loads as remote code in a
fresh process), a model with spectra refused on data without them, and two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from fresh_process import LOAD_MULTIMODAL_CHECKPOINT, run_without_astropt_hf
from launching import free_port

from astropt_hf import AstroPTImageProcessor, AstroPTSpectrumFeatureExtractor
from astropt_hf.data import GalaxyCollator, load_galaxy_dataset, load_synthetic_galaxies, make_galaxy_row
from astropt_hf.training import ConfigError, run_pretraining
from astropt_hf.training.arguments import load_yaml_config

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "scripts" / "configs" / "multimodal-demo.yaml"
STEPS = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory) -> str:
    cache = tmp_path_factory.mktemp("synthetic")
    load_synthetic_galaxies(num_train=64, num_validation=32, num_test=0, image_size=16, cache_dir=cache, num_proc=1)
    return str(cache)


def tiny_settings(cache: str, output_dir: Path, **overrides) -> dict:
    """The multimodal demo preset with a tiny model, data and schedule."""
    settings = load_yaml_config(PRESET)
    settings.update(
        image_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, batch_size=8,
        synthetic_num_train=64, synthetic_num_validation=32, synthetic_num_test=0, data_cache_dir=cache,
        eval_batches=2, num_plot_images=4, log_steps=2, eval_steps=3, max_steps=STEPS, warmup_steps=2,
        save_steps=0, mixed_precision="no", output_dir=str(output_dir),
    )
    settings.update(overrides)
    return settings


def collator(normalisation: str = "median_abs") -> GalaxyCollator:
    return GalaxyCollator(AstroPTImageProcessor(image_size=16, stretch="asinh", asinh_scale=0.02), "image", "id",
                          spectrum_extractor=AstroPTSpectrumFeatureExtractor(normalisation=normalisation))


# --- the collator ---------------------------------------------------------------------------------------
def test_collator_adds_normalised_spectra_and_masks_what_is_missing_or_bad():
    rows = [make_galaxy_row(0, "test", index, image_size=16) for index in range(3)]
    rows[1] = {key: value for key, value in rows[1].items() if not key.startswith("spectrum")}
    rows[2]["spectrum_ivar"][:10] = 0.0
    batch = collator()(rows)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    assert batch["spectrum_values"].shape == batch["spectrum_wavelengths"].shape == (3, 1557)
    assert batch["num_without_spectrum"] == 1 and not batch["spectrum_mask"][1].any()
    assert not batch["spectrum_mask"][2, :10].any() and batch["spectrum_mask"][2, 10:].all()
    assert (batch["spectrum_values"][2, :10] == 0).all()
    flux = torch.from_numpy(rows[0]["spectrum"])
    torch.testing.assert_close(batch["spectrum_scale"][0], flux.abs().median(), rtol=1e-6, atol=0)
    torch.testing.assert_close(batch["spectrum_values"][0] * batch["spectrum_scale"][0], flux, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch["spectrum_wavelengths"][0], torch.from_numpy(rows[0]["spectrum_wavelength"]))
    # upstream parity: the flux as given
    plain = collator("none")(rows[:1])
    torch.testing.assert_close(plain["spectrum_values"][0], flux)


def test_collator_reads_the_multimodal_universe_spectrum_layout():
    row = make_galaxy_row(0, "test", 0, image_size=16)
    mask = np.zeros(1557, dtype=bool)
    mask[5] = True
    layout = {"image": row["image"], "id": row["id"],
              "spectrum": {"flux": row["spectrum"], "lambda": row["spectrum_wavelength"], "ivar": row["spectrum_ivar"],
                           "mask": mask}}
    nested, flat = collator()([layout]), collator()([row])
    assert nested["spectrum_mask"].sum() == 1556 and not nested["spectrum_mask"][0, 5]
    keep = nested["spectrum_mask"][0]
    torch.testing.assert_close(nested["spectrum_values"][0, keep] * nested["spectrum_scale"][0],
                               flat["spectrum_values"][0, keep] * flat["spectrum_scale"][0])


# --- a short run of the multimodal demo preset ----------------------------------------------------------
@pytest.fixture(scope="module")
def multimodal_run(synthetic_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multimodal") / "run"
    summary = run_pretraining(tiny_settings(synthetic_cache, out))
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    return out


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_multimodal_preset_logs_both_losses_and_draws_spectra(multimodal_run):
    records = read_metrics(multimodal_run)
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in val] == [3, 6]
    for record in train:
        assert record["train_image_loss"] > 0 and record["train_spectrum_loss"] > 0
    for record in val:
        # upstream's total: the image loss plus 0.5 x the spectrum loss, over the two modalities
        expected = (record["val_image_loss"] + 0.5 * record["val_spectrum_loss"]) / 2
        assert record["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert train[-1]["train_spectrum_loss"] < train[0]["train_spectrum_loss"]
    for name in ("loss.png", "eval/spectra-step000003.png", "eval/spectra-step000006.png",
                 "eval/predictions-step000006.png"):
        assert (multimodal_run / name).stat().st_size > 10_000, name
    config = json.loads((multimodal_run / "config.json").read_text())
    assert config["modalities"] == ["images", "spectra"] and config["spectrum_patch_size"] == 64


LOADER = LOAD_MULTIMODAL_CHECKPOINT + textwrap.dedent(
    """
    with torch.no_grad():
        out = model(**inputs)
    json.dump({
        "classes": [type(processor).__name__, type(processor.image_processor).__name__,
                    type(processor.feature_extractor).__name__],
        "normalisation": processor.feature_extractor.normalisation,
        "pixel_values": inputs["pixel_values"].tolist(), "spectrum_values": inputs["spectrum_values"].tolist(),
        "spectrum_loss": out.spectrum_loss.item(),
    }, open(out_path, "w"))
    """
)


def test_final_processor_loads_with_auto_processor_in_a_fresh_process(multimodal_run, tmp_path):
    processor_config = json.loads((multimodal_run / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_astropt.AstroPTProcessor"
    rows = [make_galaxy_row(0, "validation", index, image_size=16) for index in range(2)]
    np.savez(tmp_path / "data.npz", images=np.stack([r["image"] for r in rows]),
             flux=np.stack([r["spectrum"] for r in rows]), wavelengths=rows[0]["spectrum_wavelength"],
             ivar=np.stack([r["spectrum_ivar"] for r in rows]))
    completed = run_without_astropt_hf(LOADER, tmp_path, multimodal_run, tmp_path / "data.npz", tmp_path / "out.json")
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["classes"] == ["AstroPTProcessor", "AstroPTImageProcessor", "AstroPTSpectrumFeatureExtractor"]
    assert result["normalisation"] == "median_abs"
    # the saved processor prepares a galaxy exactly as training's collator did
    trained = collator()(rows)
    torch.testing.assert_close(torch.tensor(result["pixel_values"]), trained["pixel_values"])
    torch.testing.assert_close(torch.tensor(result["spectrum_values"]), trained["spectrum_values"])
    assert np.isfinite(result["spectrum_loss"])


def test_a_model_with_spectra_is_refused_on_data_without_them(synthetic_cache, tmp_path):
    images_only = tmp_path / "images-only"
    dataset = load_galaxy_dataset("synthetic", split="all", cache_dir=synthetic_cache, num_train=64,
                                  num_validation=32, num_test=0, image_size=16).dataset
    dataset.remove_columns(["spectrum", "spectrum_ivar", "spectrum_wavelength"]).save_to_disk(str(images_only))
    with pytest.raises(ConfigError, match="reads spectra .* has no 'spectrum' column"):
        run_pretraining(tiny_settings(synthetic_cache, tmp_path / "run", dataset=str(images_only)))


# --- two processes --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_cpu_processes_train_images_and_spectra_and_end_identical(synthetic_cache, tmp_path):
    out = tmp_path / "ddp"
    settings = tiny_settings(synthetic_cache, out, record_sample_ids="true", eval_steps=STEPS)
    overrides = [item for key in ("image_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                  "batch_size", "synthetic_num_train", "synthetic_num_validation",
                                  "synthetic_num_test", "data_cache_dir", "eval_batches", "num_plot_images",
                                  "log_steps", "eval_steps", "max_steps", "warmup_steps", "save_steps",
                                  "record_sample_ids", "output_dir")
                 for item in (f"--{key}", str(settings[key]))]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no", str(REPO / "scripts" / "pretrain.py"), "--config", str(PRESET), *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_processes"] == 2
    records = read_metrics(out)
    assert all(r["train_spectrum_loss"] > 0 for r in records if "train_loss" in r)
    assert [r["step"] for r in records if "val_spectrum_loss" in r] == [STEPS]
    digests = {json.loads((out / "debug" / f"final-rank{rank}.json").read_text())["weights_sha256"] for rank in (0, 1)}
    assert len(digests) == 1, "the ranks ended with different weights"
    assert (out / "eval" / f"spectra-step{STEPS:06d}.png").is_file()
