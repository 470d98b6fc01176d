"""The classifier head under transformers' Trainer on a regression label."""

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from astropt_hf import AstroPTForImageClassification


def test_trainer_regression_runs_and_reports_eval_loss(tmp_path, tiny_config):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(24, 3, 16, 16)).astype(np.float32)
    brightness = images.mean(axis=(1, 2, 3))
    dataset = Dataset.from_dict({"pixel_values": images.tolist(), "labels": brightness.tolist()}).with_format("torch")
    model = AstroPTForImageClassification(tiny_config(num_labels=1, patch_norm="none"))
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        learning_rate=1e-3, report_to=[], logging_steps=2, save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"])
    assert model.config.problem_type == "regression"
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    predictions = trainer.predict(dataset).predictions
    assert predictions.shape == (24, 1)
