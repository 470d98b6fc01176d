"""The `transformers.Trainer` side of fine-tuning: training arguments, metrics, a Trainer whose training batches
have their own collator and may carry per-galaxy loss weights, and one progress bar in place of the Trainer's
printed log dictionaries (the log history goes to ``trainer_log.jsonl`` instead)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import TrainerCallback

if TYPE_CHECKING:  # pragma: no cover
    from astropt_hf.downstream.finetune_data import RegressionTarget
    from astropt_hf.downstream.finetuning import FinetuneArguments

__all__ = ["LOG_FILE", "ProgressBarCallback", "finetune_trainer_class", "trainer_compute_metrics", "training_arguments",
           "use_progress_bar",
           "weighted_mse_loss"]

LOG_FILE = "trainer_log.jsonl"
# What the progress bar shows of the latest log entry (the rest is in the log file).
_BAR_KEYS = {"loss": "loss", "eval_loss": "eval_loss", "eval_sigma_nmad": "σ_NMAD", "eval_r2": "R²",
             "eval_accuracy": "acc"}


def weighted_mse_loss(predictions: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean_i w_i (prediction_i - label_i)²: the regression loss with each galaxy's weight.

    The weights are normalised over the training set (mean 1), not per batch, so a batch of common
    galaxies counts for less than a batch of rare ones, as the weighting intends.
    """
    predictions = predictions.float().reshape(-1)
    labels = labels.float().reshape(-1)
    return (weights.float().reshape(-1) * (predictions - labels) ** 2).mean()


def finetune_trainer_class():
    """`Trainer` whose training batches go through their own collator (e.g. one that augments or adds
    loss weights); a batch with ``sample_weights`` is scored with `weighted_mse_loss`."""
    from transformers import Trainer

    class FinetuneTrainer(Trainer):
        def __init__(self, *args, train_collator=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.train_collator = train_collator

        def get_train_dataloader(self):
            if self.train_collator is None:
                return super().get_train_dataloader()
            evaluation_collator, self.data_collator = self.data_collator, self.train_collator
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = evaluation_collator

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "sample_weights" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = dict(inputs)
            weights, labels = inputs.pop("sample_weights"), inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_mse_loss(outputs.logits[:, 0], labels, weights)
            return (loss, outputs) if return_outputs else loss

    return FinetuneTrainer


def trainer_compute_metrics(task: str, regression: RegressionTarget | None, config, photo_z: bool, pdf: bool = False):
    """Trainer `compute_metrics` through the shipped metric modules, in the target's own units (a PDF head's
    through `pdf_finetune`)."""
    from transformers import EvalPrediction

    from astropt_hf.metrics import make_trainer_compute_metrics

    if pdf:
        from astropt_hf.downstream import pdf_finetune

        return pdf_finetune.pdf_compute_metrics(config, photo_z)
    inner = make_trainer_compute_metrics(task, photo_z=photo_z and task == "regression")
    if regression is None:
        return inner

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        predictions = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        restored = EvalPrediction(
            predictions=regression.restore(np.asarray(predictions).reshape(-1)),
            label_ids=regression.restore(np.asarray(prediction.label_ids).reshape(-1)),
        )
        return inner(restored)

    return compute_metrics


def training_arguments(options: FinetuneArguments, output_dir: Path):
    """`TrainingArguments` of one fine-tuning run (no checkpoints: the caller saves the final model)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir / "trainer_state"),
        save_strategy="no",
        eval_strategy="steps",
        report_to=options.report_to,
        remove_unused_columns=False,  # the collator needs the raw image and target columns
        label_names=["labels"],
        lr_scheduler_type="cosine",
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=max(options.batch_size, 64),
        learning_rate=options.resolved_learning_rate(),
        weight_decay=options.weight_decay,
        warmup_steps=int(round(options.warmup_ratio * options.max_steps)),
        eval_steps=options.eval_steps or max(1, options.max_steps // 5),
        logging_steps=options.logging_steps,
        seed=options.seed,
        bf16=options.bf16,
        dataloader_num_workers=options.num_workers,
        # pinned host memory only helps copies to a GPU; on a CPU-only machine torch warns about it
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,  # its replacement, ProgressBarCallback, is installed by use_progress_bar
    )


class ProgressBarCallback(TrainerCallback):
    """One tqdm bar over the optimizer steps, with the latest loss (and evaluation scores) beside it.

    Every log entry is appended to `log_path` as one JSON line instead of printed; in a log file that is
    not a terminal the bar redraws at most every 30 s.
    """

    def __init__(self, log_path: Path, description: str = "fine-tuning"):
        self.log_path = Path(log_path)
        self.description = description
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from tqdm.auto import tqdm

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=state.max_steps, desc=self.description, dynamic_ncols=interactive,
                        mininterval=0.1 if interactive else 30.0)  # fmt: skip
        self.step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.step)
            self.step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, **{k: v for k, v in logs.items() if k != "total_flos"}}
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(entry, default=float) + "\n")
        for key, label in _BAR_KEYS.items():
            value = logs.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.postfix[label] = f"{value:.4g}"
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_progress_bar(trainer, log_path: Path) -> None:
    """Replace the Trainer's progress output (which prints every log entry as a dict) by one bar."""
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in {ProgressCallback, PrinterCallback, DEFAULT_PROGRESS_CALLBACK}:
        trainer.remove_callback(callback)
    trainer.add_callback(ProgressBarCallback(log_path))
