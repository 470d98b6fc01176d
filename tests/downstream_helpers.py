"""Tiny data and models shared by the downstream tests (tests/test_downstream*.py).

The synthetic set is rendered once per test session into a temporary folder (GalSim start-up costs
seconds); every test that needs it passes that folder as an explicit cache_dir, so nothing is written
to the user's cache.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 16
SYNTHETIC = {"num_train": 32, "num_validation": 8, "num_test": 24, "image_size": IMAGE_SIZE, "seed": 0}


@functools.cache
def galaxy_cache_dir() -> Path:
    """A temporary synthetic-set cache holding the tiny set, generated on first use."""
    from astropt_hf.data import load_synthetic_galaxies

    folder = Path(tempfile.mkdtemp(prefix="astropt-downstream-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    load_synthetic_galaxies(cache_dir=folder, num_proc=1, **SYNTHETIC)
    return folder


def tiny_split(split: str, streaming: bool = False):
    """A `GalaxySource` for one split of the tiny set (an `IterableDataset` with `streaming`)."""
    from astropt_hf.data import load_galaxy_dataset

    return load_galaxy_dataset(
        "synthetic", split=split, streaming=streaming, cache_dir=galaxy_cache_dir(), **SYNTHETIC
    )


def dataset_flags() -> list[str]:
    """Command-line flags that select the tiny set in the downstream scripts."""
    return [
        "--data_cache_dir", str(galaxy_cache_dir()),
        "--synthetic_num_train", str(SYNTHETIC["num_train"]),
        "--synthetic_num_validation", str(SYNTHETIC["num_validation"]),
        "--synthetic_num_test", str(SYNTHETIC["num_test"]),
        "--synthetic_image_size", str(IMAGE_SIZE),
    ]  # fmt: skip


def save_tiny_model(folder: Path, seed: int = 0, **overrides) -> Path:
    """A tiny randomly initialised AstroPTForPreTraining plus an asinh processor, saved with save_pretrained."""
    import torch

    from astropt_hf import AstroPTConfig, AstroPTForPreTraining, AstroPTImageProcessor

    settings = dict(image_size=IMAGE_SIZE, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4)  # fmt: skip
    settings.update(overrides)
    torch.manual_seed(seed)
    AstroPTForPreTraining(AstroPTConfig(**settings)).save_pretrained(folder)
    AstroPTImageProcessor(image_size=IMAGE_SIZE, num_channels=3, stretch="asinh", asinh_scale=0.05).save_pretrained(folder)
    return folder


def run_script(*args: str, timeout: int = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root, offline; fail with its output if it fails."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    result = subprocess.run(list(args), cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


PYTHON = sys.executable

REMOTE_CLASSIFIER = (
    "import json, sys, numpy as np, torch\n"
    "from transformers import AutoImageProcessor, AutoModelForImageClassification\n"
    "folder, images = sys.argv[1], np.load(sys.argv[2])\n"
    "model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()\n"
    "processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)\n"
    "assert 'astropt_hf' not in sys.modules, 'loaded the installed package instead of remote code'\n"
    "with torch.no_grad():\n"
    "    logits = model(pixel_values=processor(list(images), return_tensors='pt')['pixel_values']).logits\n"
    "print(json.dumps({'logits': logits.tolist(), 'head_type': getattr(model.config, 'head_type', None),\n"
    "                  'pdf_bins': getattr(model.config, 'pdf_bins', None)}))\n"
)


def reload_classifier_as_remote_code(folder: Path, images: np.ndarray, scratch: Path) -> dict:
    """Run `images` through the fine-tuned checkpoint in `folder`, loaded as remote code in a fresh process
    (no astropt_hf import, so the Auto classes come from the files next to the weights): its logits and
    the head_type / pdf_bins of the config it loaded."""
    images_path = scratch / "remote_images.npy"
    np.save(images_path, images)
    result = run_script(PYTHON, "-c", REMOTE_CLASSIFIER, str(folder), str(images_path))
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_script(name: str):
    """Import scripts/<name>.py as a module, so a test can call its main(argv) in-process (no start-up cost)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
