"""Fine-tune a pretrained astroPT for one catalogue column with `transformers.Trainer`.

`AstroPTForImageClassification` (a linear head on the pooled embedding) is loaded from any astroPT
checkpoint and trained in one of three modes:

* ``frozen``: only the head learns (a linear probe, refined by the optimizer);
* ``full``: every weight learns;
* ``lora``: low-rank adapters on the attention and MLP projections plus the head (needs peft, an
  optional extra); the adapters are merged into the weights before saving.

In ``frozen`` mode the head starts from the linear probe of the training rows' embeddings
(``head_init="probe"``), so it begins where a ridge probe ends; ``full`` and ``lora`` start from a random
head. ``augment="dihedral"`` trains on randomly turned / mirrored images.

A float column is a regression (``num_labels=1``, ``problem_type="regression"``); any other column is
a classification. Regression targets are standardised for training (mean and std of the training
rows), and the saved head is rescaled so the checkpoint predicts the target in its own units; the
statistics are kept in ``config.regression_target`` and the model card. Metrics come from the metric
modules shipped in `astropt_hf.metrics` (R², MAE, and σ_NMAD / outlier fraction for redshifts;
accuracy and F1 for labels), always in the target's own units.

The output folder loads with ``AutoModelForImageClassification.from_pretrained(dir,
trust_remote_code=True)`` and ``AutoImageProcessor``, and holds ``README.md`` (model card from
``astropt_hf.model_cards.finetuned``), ``finetune_results.json`` and, for regressions, ``pred_vs_true.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astropt_hf.model_cards.finetuned import render_finetuned_card

logger = logging.getLogger(__name__)

MODES = ("frozen", "full", "lora")
HEAD_INITS = ("probe", "random")
AUGMENTATIONS = ("none", "dihedral")
ORIENTATION_TARGETS = frozenset({"position_angle", "pa", "theta", "orientation"})
TASKS = ("regression", "classification")
DEFAULT_LEARNING_RATES = {"frozen": 3e-3, "full": 3e-4, "lora": 1e-3}
LORA_TARGET_MODULES = ("qkv", "out_proj", "fc1", "fc2")

__all__ = [
    "MODES",
    "FinetuneResult",
    "LabelCollator",
    "random_dihedral",
    "RegressionTarget",
    "finetune",
    "infer_target_task",
]


@dataclass(frozen=True)
class RegressionTarget:
    """Standardisation of a continuous target: the model trains on (y - mean) / std."""

    name: str
    mean: float
    std: float

    @classmethod
    def fit(cls, name: str, values: Any) -> RegressionTarget:
        array = np.asarray(values, dtype=np.float64)
        array = array[np.isfinite(array)]
        if array.size < 2:
            raise ValueError(f"target {name!r}: need at least 2 finite training values; got {array.size}")
        std = float(array.std())
        return cls(name=name, mean=float(array.mean()), std=std if std > 0 else 1.0)

    def standardise(self, values: Any) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std

    def restore(self, values: Any) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.std + self.mean


def infer_target_task(dataset, target: str) -> str:
    """ "regression" for a float column, "classification" for integer, boolean, string or ClassLabel."""
    from datasets import ClassLabel, Value

    if target not in dataset.column_names:
        raise ValueError(f"dataset has no column {target!r}; columns are {dataset.column_names}")
    feature = dataset.features[target]
    if isinstance(feature, ClassLabel):
        return "classification"
    if isinstance(feature, Value):
        return "regression" if feature.dtype.startswith("float") else "classification"
    raise ValueError(f"column {target!r} has type {feature}; expected a scalar column (number, string or label)")


class LabelCollator:
    """Rows -> {"pixel_values", "labels"}: images through the data layer's `GalaxyCollator`, labels encoded.

    Regression labels are standardised floats (B,); classification labels are class indices (B,). An
    image the data layer cannot read is skipped together with its label. `augment="dihedral"` turns
    each image by a random multiple of 90 degrees and mirrors it half of the time (training only).
    """

    def __init__(
        self,
        processor,
        image_column: str,
        target: str,
        regression: RegressionTarget | None = None,
        label2id: dict[str, int] | None = None,
        augment: str = "none",
    ):
        from astropt_hf.data import GalaxyCollator

        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment={augment!r} is not valid; expected one of {list(AUGMENTATIONS)}")
        self.images = GalaxyCollator(processor, image_column=image_column, keep_columns=[target])
        self.target = target
        self.regression = regression
        self.label2id = label2id
        self.augment = augment

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.images(rows)
        if self.augment == "dihedral":
            batch["pixel_values"] = random_dihedral(batch["pixel_values"])
        values = batch[self.target]
        values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
        if self.regression is not None:
            labels = torch.as_tensor(self.regression.standardise(values), dtype=torch.float32)
        else:
            labels = torch.as_tensor([self.label2id[_label_key(v)] for v in values], dtype=torch.long)
        return {"pixel_values": batch["pixel_values"], "labels": labels}


def random_dihedral(pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each (C, H, W) image of a batch turned by a random multiple of 90 degrees and mirrored half the time.

    A galaxy seen in any of these 8 orientations is the same galaxy: redshift, magnitudes, colours,
    size and axis ratio do not change (position angles do: do not augment for those).
    """
    turns = torch.randint(0, 4, (len(pixel_values),), generator=generator).tolist()
    mirror = torch.randint(0, 2, (len(pixel_values),), generator=generator).tolist()
    images = [
        torch.rot90(image.flip(-1) if flip else image, k, dims=(-2, -1))
        for image, k, flip in zip(pixel_values, turns, mirror)
    ]
    return torch.stack(images) if images else pixel_values


def _label_key(value: Any) -> str:
    """Labels are matched as strings so ints, numpy ints and strings from different splits agree."""
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


@dataclass
class FinetuneResult:
    """What `finetune` produced: the saved folder, the task set-up and the final evaluation.

    `eval_predictions` are the evaluation rows' predictions (target units for regressions, class
    indices into `id2label` for classifications), as the saved checkpoint reproduces them.
    """

    output_dir: Path
    target: str
    task: str
    mode: str
    metrics: dict[str, float]
    num_trainable_parameters: int
    num_parameters: int
    train_seconds: float
    max_steps: int
    learning_rate: float
    head_init: str = "probe"
    augment: str = "none"
    regression_target: dict[str, float] | None = None
    id2label: dict[int, str] | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    pdf: dict[str, Any] | None = None  # PDF head: calibration and scores of the test PDFs (pdf_finetune)
    eval_predictions: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        data.pop("eval_predictions")
        return data


def _drop_missing(dataset, target: str, task: str, what: str):
    """Rows whose target is missing cannot be trained or scored on: drop them and say how many."""
    values = dataset[target]
    if task == "regression":
        keep = [i for i, v in enumerate(values) if v is not None and math.isfinite(float(v))]
    else:
        keep = [i for i, v in enumerate(values) if v is not None]
    if len(keep) < len(values):
        logger.warning("%s: dropped %d of %d rows with a missing %r", what, len(values) - len(keep), len(values), target)
        dataset = dataset.select(keep)
    if len(dataset) == 0:
        raise ValueError(f"{what}: no rows with a {target!r} value")
    return dataset


def _apply_mode(model, mode: str, lora_r: int, lora_alpha: int, lora_dropout: float):
    if mode == "frozen":
        model.astropt.requires_grad_(False)
        return model
    if mode == "full":
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError(
            "mode='lora' needs peft, an optional extra: pip install 'astropt-hf[peft]' (or peft); "
            "or use mode='full' or mode='frozen'"
        ) from error
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(LORA_TARGET_MODULES),
        modules_to_save=["classifier"],
    )
    return get_peft_model(model, config)


def _count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _compute_metrics_fn(task: str, regression: RegressionTarget | None, photo_z: bool):
    """Trainer `compute_metrics` through the shipped metric modules, in the target's own units."""
    from transformers import EvalPrediction

    from astropt_hf.metrics import make_trainer_compute_metrics

    inner = make_trainer_compute_metrics(task, photo_z=photo_z)
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


def _fit_linear_head(features: np.ndarray, labels: np.ndarray, task: str, num_labels: int):
    """Weights (num_labels, D) and bias of a linear probe fitted on raw embeddings.

    The probe is fitted on standardised features (as the probes in `astropt_hf.downstream.probes`: ridge with its
    strength chosen by leave-one-out, or logistic regression) and the standardisation is folded into
    the weights, so the head applies to the embeddings as they come out of the backbone.
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.preprocessing import StandardScaler

    from astropt_hf.downstream.probes import DEFAULT_ALPHAS

    scaler = StandardScaler().fit(features)
    scaled = scaler.transform(features)
    if task == "regression":
        probe = RidgeCV(alphas=np.asarray(DEFAULT_ALPHAS)).fit(scaled, labels)
        weight, bias = probe.coef_.reshape(1, -1), np.atleast_1d(probe.intercept_)
    else:
        probe = LogisticRegression(max_iter=1000).fit(scaled, labels)
        weight, bias = np.zeros((num_labels, features.shape[1])), np.zeros(num_labels)
        if len(probe.classes_) == 2:  # one logit z: softmax over [0, z] gives the same probabilities
            weight[probe.classes_[1]], bias[probe.classes_[1]] = probe.coef_[0], probe.intercept_[0]
        else:
            weight[probe.classes_], bias[probe.classes_] = probe.coef_, probe.intercept_
    weight = weight / scaler.scale_
    bias = bias - weight @ scaler.mean_
    return torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)


def _init_head_from_probe(model, processor, dataset, image_column: str, target: str, task: str,
                          regression: RegressionTarget | None, label2id: dict | None, batch_size: int) -> None:
    """Set the classifier to the linear probe of the training rows' embeddings (LP-FT).

    A randomly initialised head on a frozen backbone trains slowly: the pooled embeddings vary across
    galaxies by far less than their offsets, so the useful weights are large. Starting from the probe
    makes `frozen` mode at least as good as the probe (the default there). For `full` and `lora` it is
    the LP-FT option (Kumar et al. 2022, "Fine-tuning can distort pretrained features"), not the default:
    on the demo galaxies the probe head's large weights made the first backbone updates swing the output.
    """
    from astropt_hf.downstream.embeddings import compute_embeddings

    features = compute_embeddings(model.astropt, dataset, processor, batch_size=max(batch_size, 64),
                                  image_column=image_column, progress=False)  # fmt: skip
    readable = np.isfinite(features).all(axis=1)
    values = [v for v, ok in zip(dataset[target], readable) if ok]
    if task == "regression":
        labels = regression.standardise(values)
    else:
        labels = np.asarray([label2id[_label_key(v)] for v in values])
    weight, bias = _fit_linear_head(features[readable], labels, task, model.config.num_labels)
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)


def _bake_standardisation(model, regression: RegressionTarget) -> None:
    """Rescale the head so the model outputs the target in its own units: y = std * (W e + b) + mean."""
    head = model.classifier
    with torch.no_grad():
        head.weight.mul_(regression.std)
        head.bias.mul_(regression.std).add_(regression.mean)


def _trainer_class():
    """`Trainer` whose training batches go through their own collator (e.g. one that augments)."""
    from transformers import Trainer

    class _FinetuneTrainer(Trainer):
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

    return _FinetuneTrainer


def _training_arguments(output_dir: Path, **kwargs):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir / "trainer_state"),
        save_strategy="no",
        eval_strategy="steps",
        report_to=kwargs.pop("report_to"),
        remove_unused_columns=False,  # the collator needs the raw image and target columns
        label_names=["labels"],
        lr_scheduler_type="cosine",
        **kwargs,
    )


def finetune(
    model_name_or_path: str | os.PathLike,
    train_dataset,
    eval_dataset,
    target: str,
    output_dir: str | os.PathLike,
    mode: str = "full",
    task: str | None = None,
    max_steps: int = 1500,
    learning_rate: float | None = None,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.05,
    eval_steps: int | None = None,
    logging_steps: int = 10,
    seed: int = 0,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    head_init: str | None = None,
    augment: str = "none",
    image_column: str = "image",
    bf16: bool = False,
    dataloader_num_workers: int = 0,
    report_to: str | list[str] = "none",
    photo_z: bool | None = None,
    dataset_description: str = "",
    trust_remote_code: bool = True,
    head: str = "linear",
    pdf_bins: int | list[float] | None = None,
    calibration_dataset=None,
) -> FinetuneResult:
    """Fine-tune astroPT on `target` and save a checkpoint, its processor, metrics and a model card.

    Args:
        model_name_or_path: a pretrained astroPT folder or hub id (any head; the backbone is used).
        train_dataset, eval_dataset: map-style datasets with `image_column` and `target`.
        mode: "frozen", "full" or "lora" (see the module docstring).
        head_init: "probe" starts the head from the linear probe (ridge / logistic regression) of the
            training rows' embeddings (LP-FT); "random" from the usual random init. Default: "probe" for
            `frozen` (the head then starts where a ridge probe ends), "random" for `full` and `lora`
            (a probe head's large weights turn the first backbone updates into large output swings).
        augment: "dihedral" trains on randomly turned and mirrored images (not for orientation targets).
        task: "regression" or "classification"; default: inferred from the column type.
        learning_rate: default per mode (`DEFAULT_LEARNING_RATES`).
        eval_steps: evaluate every this many steps (default: 5 times per run).
        photo_z: report σ_NMAD and the outlier fraction; default: when the target looks like a redshift.
        dataset_description: one line for the model card (where the rows came from).
        head, pdf_bins, calibration_dataset: `head="pdf"` (or "binned_pdf", "gaussian_mixture") trains a
            probability density of the target over `pdf_bins` (a count over the training range, or edges)
            and writes test_predictions.parquet, calibrated on `calibration_dataset`
            (`astropt_hf.downstream.pdf_finetune`).
    Returns:
        `FinetuneResult` with the final evaluation metrics (also written to finetune_results.json).
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification, set_seed

    import astropt_hf  # noqa: F401  (Auto classes for local folders)
    from astropt_hf.downstream.probes import is_redshift_like

    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not valid; expected one of {list(MODES)}")
    head_init = head_init or ("probe" if mode == "frozen" and head == "linear" else "random")
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init={head_init!r} is not valid; expected one of {list(HEAD_INITS)}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment={augment!r} is not valid; expected one of {list(AUGMENTATIONS)}")
    if augment != "none" and target.lower() in ORIENTATION_TARGETS:
        raise ValueError(f"augment={augment!r} turns the images, which changes {target!r}; use augment='none'")
    task = task or infer_target_task(train_dataset, target)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not valid; expected one of {list(TASKS)}")
    # --- PDF head (pdf_finetune) ---
    from astropt_hf.downstream import pdf_finetune

    pdf_head = pdf_finetune.pdf_head_type(head, task, head_init)
    test_rows = eval_dataset
    if eval_dataset is not None and target not in eval_dataset.column_names:
        raise ValueError(f"evaluation dataset has no column {target!r}; columns are {eval_dataset.column_names}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1; got {max_steps}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    learning_rate = learning_rate if learning_rate is not None else DEFAULT_LEARNING_RATES[mode]
    photo_z = is_redshift_like(target) if photo_z is None else photo_z

    train_dataset = _drop_missing(train_dataset.select_columns([image_column, target]), target, task, "train")
    eval_dataset = _drop_missing(eval_dataset.select_columns([image_column, target]), target, task, "eval")

    regression = id2label = None
    model_kwargs: dict[str, Any] = {}
    if task == "regression":
        regression = RegressionTarget.fit(target, train_dataset[target])
        model_kwargs.update(num_labels=1, problem_type="regression")
        if pdf_head:  # a PDF head learns the target in its own units
            regression = RegressionTarget(target, 0.0, 1.0)
            model_kwargs.update(pdf_finetune.pdf_model_overrides(pdf_head, train_dataset[target], pdf_bins))
    else:
        classes = sorted({_label_key(v) for split in (train_dataset, eval_dataset) for v in split[target]})
        if len(classes) < 2:
            raise ValueError(f"classification of {target!r} needs at least 2 classes; got {classes}")
        id2label = dict(enumerate(classes))
        model_kwargs.update(
            num_labels=len(classes),
            problem_type="single_label_classification",
            id2label=id2label,
            label2id={label: index for index, label in id2label.items()},
        )

    processor = AutoImageProcessor.from_pretrained(str(model_name_or_path), trust_remote_code=trust_remote_code)
    model = AutoModelForImageClassification.from_pretrained(
        str(model_name_or_path), trust_remote_code=trust_remote_code, ignore_mismatched_sizes=True, **model_kwargs
    )
    label2id = {label: index for index, label in id2label.items()} if id2label else None
    if head_init == "probe":
        _init_head_from_probe(model, processor, train_dataset, image_column, target, task, regression, label2id,
                              batch_size)  # fmt: skip
    model = _apply_mode(model, mode, lora_r, lora_alpha, lora_dropout)
    trainable, total = _count_parameters(model)
    logger.info("fine-tuning %s (%s, %s): %d of %d parameters trainable", target, task, mode, trainable, total)

    collator = LabelCollator(processor, image_column, target, regression, label2id)
    train_collator = (
        LabelCollator(processor, image_column, target, regression, label2id, augment=augment)
        if augment != "none" else None
    )  # fmt: skip
    arguments = _training_arguments(
        output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 64),
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_steps=int(round(warmup_ratio * max_steps)),
        eval_steps=eval_steps or max(1, max_steps // 5),
        logging_steps=logging_steps,
        seed=seed,
        bf16=bf16,
        dataloader_num_workers=dataloader_num_workers,
        report_to=report_to,
    )
    trainer = _trainer_class()(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        train_collator=train_collator,
        compute_metrics=(
            pdf_finetune.pdf_compute_metrics(model.config, photo_z) if pdf_head
            else _compute_metrics_fn(task, regression, photo_z and task == "regression")
        ),
    )  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    final = trainer.predict(eval_dataset, metric_key_prefix="eval")
    metrics = {key: float(value) for key, value in final.metrics.items() if isinstance(value, (int, float))}
    raw = final.predictions[0] if isinstance(final.predictions, tuple) else final.predictions
    if pdf_head:
        eval_predictions = pdf_finetune.pdf_point_predictions(raw, trainer.model.config)
    elif regression is not None:
        eval_predictions = regression.restore(np.asarray(raw).reshape(-1))
    else:
        eval_predictions = np.asarray(raw).argmax(axis=-1)

    # Save a plain AstroPTForImageClassification: adapters merged, head in the target's units.
    model = trainer.model
    if mode == "lora":
        model = model.merge_and_unload()
    if regression is not None and not pdf_head:
        _bake_standardisation(model, regression)
        model.config.regression_target = asdict(regression)
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # a frozen backbone is a training choice, not part of the checkpoint
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    pdf_scores = None
    if pdf_head:
        pdf_scores = pdf_finetune.write_pdf_outputs(model, processor, test_rows, calibration_dataset, target,
                                                    output_dir, image_column, photo_z, max(batch_size, 64))  # fmt: skip

    result = FinetuneResult(
        output_dir=output_dir,
        target=target,
        task=task,
        mode=mode,
        metrics=metrics,
        num_trainable_parameters=trainable,
        num_parameters=total,
        train_seconds=train_seconds,
        max_steps=max_steps,
        learning_rate=learning_rate,
        head_init=head_init,
        augment=augment,
        regression_target=asdict(regression) if regression is not None and not pdf_head else None,
        id2label=id2label,
        log_history=list(trainer.state.log_history),
        eval_predictions=eval_predictions,
        pdf=pdf_scores,
    )
    (output_dir / "finetune_results.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if regression is not None:
        from astropt_hf.plotting import plot_pred_vs_true

        truth = regression.restore(np.asarray(final.label_ids).reshape(-1))
        plot_pred_vs_true(eval_predictions, truth, target, output_dir / "pred_vs_true.png", photo_z=photo_z)
    card = render_finetuned_card(result, str(model_name_or_path), model.config, dataset_description)
    (output_dir / "README.md").write_text(card)
    _remove_trainer_scratch(output_dir)
    return result


def _remove_trainer_scratch(output_dir: Path) -> None:
    scratch = output_dir / "trainer_state"
    if scratch.is_dir() and not any(scratch.iterdir()):
        scratch.rmdir()
