"""Checkpoints load as remote code in a fresh process that cannot import astropt_hf."""

import json
import re
import textwrap

import numpy as np
import torch
from fresh_process import run_without_astropt_hf
from PIL import Image
from transformers import AutoModelForPreTraining

from astropt_hf import AstroPTForPreTraining, AstroPTImageProcessor

REMOTE_FILES = {"configuration_astropt.py", "modeling_astropt.py", "image_processing_astropt.py"}

# Runs in a fresh interpreter where importing astropt_hf fails (fresh_process.run_without_astropt_hf).
LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import (AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                              AutoModelForPreTraining, pipeline)
    checkpoint, image_path, out_path = sys.argv[1:4]
    processor = AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    pixel_values = processor(Image.open(image_path), return_tensors="pt")["pixel_values"]
    pretraining = AutoModelForPreTraining.from_pretrained(checkpoint, trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    classifier = AutoModelForImageClassification.from_pretrained(checkpoint, trust_remote_code=True, num_labels=2)
    extractor = pipeline("image-feature-extraction", model=checkpoint, trust_remote_code=True)
    features = np.asarray(extractor(Image.open(image_path)))
    with torch.no_grad():
        result = {
            "modules": [type(m).__module__ for m in (processor, pretraining, backbone, classifier)],
            "classes": [type(m).__name__ for m in (processor, pretraining, backbone, classifier)],
            "pixel_values": pixel_values.tolist(),
            "predictions": pretraining(pixel_values).predictions.tolist(),
            "embedding": backbone(pixel_values).pooler_output.tolist(),
            "features_shape": list(features.shape),
        }
    json.dump(result, open(out_path, "w"))
    """
)


def test_checkpoint_loads_in_fresh_process_without_astropt_hf(tmp_path, tiny_config):
    model = AstroPTForPreTraining(tiny_config()).eval()
    processor = AstroPTImageProcessor(image_size=16, num_channels=3)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    files = {p.name for p in checkpoint.iterdir()}
    assert REMOTE_FILES | {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    config = json.loads((checkpoint / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForPreTraining", "AutoModelForImageClassification"}
    assert "AutoImageProcessor" in json.loads((checkpoint / "preprocessor_config.json").read_text())["auto_map"]
    for name in REMOTE_FILES:  # self-contained: no absolute import of our package
        assert not re.search(r"^\s*(from|import)\s+astropt_hf", (checkpoint / name).read_text(), re.M), name

    image_path = tmp_path / "galaxy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image_path)
    out_path = tmp_path / "result.json"
    completed = run_without_astropt_hf(LOADER, tmp_path, checkpoint, image_path, out_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out_path.read_text())
    assert all(module.startswith("transformers_modules.") for module in result["modules"]), result["modules"]
    assert result["classes"] == [
        "AstroPTImageProcessor", "AstroPTForPreTraining", "AstroPTModel", "AstroPTForImageClassification"
    ]
    pixel_values = processor(Image.open(image_path), return_tensors="pt")["pixel_values"]
    assert torch.equal(torch.tensor(result["pixel_values"]), pixel_values)
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(result["predictions"]), model(pixel_values).predictions, rtol=0, atol=0)
        torch.testing.assert_close(
            torch.tensor(result["embedding"]), model.astropt(pixel_values).pooler_output, rtol=0, atol=0
        )
    assert result["features_shape"] == [1, 16, 32]  # (1, T, D)


def test_model_save_writes_no_processor_and_loads_without_one(tmp_path, tiny_config):
    model = AstroPTForPreTraining(tiny_config(num_channels=1, image_size=8)).eval()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "preprocessor_config.json" not in files  # saving the processor is the caller's job
    assert {"configuration_astropt.py", "modeling_astropt.py", "config.json"} <= files
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path, trust_remote_code=True).eval()
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).predictions, model(images).predictions, rtol=0, atol=0)
