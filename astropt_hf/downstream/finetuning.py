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
accuracy and F1 for labels), always in the target's own units; for redshifts also the bias Δz/(1+z) in
bins of true z (``redshift_bias`` in the results, a lower panel in the figure).

Against regression to the mean at the ends of a peaked target distribution, a regression can learn
log(1 + y) (``target_transform="log1p"``; the saved head then outputs log(1 + y)) or weight each galaxy's
loss by the inverse density of its target (``sample_weighting="inverse_density"``). Training prints one
progress bar; the Trainer's log entries go to ``trainer_log.jsonl``.

The output folder loads with ``AutoModelForImageClassification.from_pretrained(dir,
trust_remote_code=True)`` and ``AutoImageProcessor``, and holds ``README.md`` (model card from
``astropt_hf.model_cards.finetuned``), ``finetune_results.json`` and, for regressions, ``pred_vs_true.png``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from astropt_hf.command_line import NOT_A_FLAG, option
from astropt_hf.downstream.finetune_data import (
    AUGMENTATIONS,
    SAMPLE_WEIGHTINGS,
    TARGET_TRANSFORMS,
    InverseDensityWeights,
    LabelCollator,
    RegressionTarget,
    drop_missing,
    infer_target_task,
    label_key,
    random_dihedral,
)
from astropt_hf.downstream.finetune_heads import bake_standardisation, init_head_from_probe
from astropt_hf.downstream.finetune_trainer import (
    LOG_FILE,
    finetune_trainer_class,
    trainer_compute_metrics,
    training_arguments,
    use_progress_bar,
)
from astropt_hf.load_reports import plain_load_reports
from astropt_hf.model_cards.finetuned import render_finetuned_card

logger = logging.getLogger(__name__)

MODES = ("frozen", "full", "lora")
HEAD_INITS = ("probe", "random")
ORIENTATION_TARGETS = frozenset({"position_angle", "pa", "theta", "orientation"})
TASKS = ("regression", "classification")
DEFAULT_LEARNING_RATES = {"frozen": 3e-3, "full": 3e-4, "lora": 1e-3}
LORA_TARGET_MODULES = ("qkv", "out_proj", "fc1", "fc2")

__all__ = ["MODES", "FinetuneArguments", "FinetuneResult", "LabelCollator", "random_dihedral", "RegressionTarget",
           "finetune", "infer_target_task"]


@dataclass
class FinetuneResult:
    """What `finetune` produced: the saved folder, the task set-up and the final evaluation.

    `eval_predictions` are the evaluation rows' predictions (target units for regressions, class
    indices into `id2label` for classifications), as the saved checkpoint reproduces them (after
    ``expm1`` with ``target_transform="log1p"``: the saved head outputs log(1 + y)). `eval_targets` are
    the rows' true values in the same units (regressions only). `train_seconds` is the Trainer's loop
    (with its evaluations); `setup_seconds` loading the model and, for a probe head, embedding the training rows.
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
    target_transform: str = "none"
    sample_weighting: str = "none"
    regression_target: dict[str, Any] | None = None
    # photo-z: mean and median Δz/(1+z) overall and in bins of true z (astropt_hf.metrics.compute_redshift_bias)
    redshift_bias: dict[str, Any] | None = None
    id2label: dict[int, str] | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    pdf: dict[str, Any] | None = None  # PDF head: calibration and scores of the test PDFs (pdf_finetune)
    setup_seconds: float = 0.0
    torch_threads: int = 0
    eval_predictions: np.ndarray | None = field(default=None, repr=False)
    eval_targets: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        data.pop("eval_predictions")
        data.pop("eval_targets")
        return data


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


@dataclass
class FinetuneArguments:
    """What `finetune` trains, and how: the options of `scripts/finetune.py` (one flag per field).

    The head starts from the linear probe (``head_init="probe"``: ridge / logistic regression on the training
    rows' embeddings, LP-FT) or from the usual random init. Default: "probe" for `frozen` (the head then
    starts where a ridge probe ends), "random" for `full` and `lora` (a probe head's large weights turn the
    first backbone updates into large output swings).
    """

    model: str = option(help="pretrained astroPT folder or hub id")
    target: str = option(help="catalogue column to predict")
    output_dir: str = option()
    task: Literal["regression", "classification"] | None = option(
        None, "default: regression for float columns, classification otherwise"
    )
    mode: Literal["frozen", "full", "lora"] = option("full")
    head_init: Literal["probe", "random"] | None = option(
        None, "start the head from the linear probe of the training embeddings or at random "
        "(default: probe for --mode frozen, random otherwise)"
    )
    augment: Literal["none", "dihedral"] = option(
        "none", "dihedral: train on random 90-degree turns and mirror images (not for position angles)"
    )
    train_split: str = option("train")
    eval_split: str = option("test")
    max_steps: int = option(
        1500, "optimizer steps (default 1500: on the demo galaxies 500 full-mode steps did not yet beat the frozen head)"
    )
    learning_rate: float | None = option(None, "default per mode: frozen 3e-3, full 3e-4, lora 1e-3")
    batch_size: int = option(32)
    weight_decay: float = option(0.01)
    warmup_ratio: float = option(0.05)
    eval_steps: int | None = option(None, "default: 5 evaluations per run")
    logging_steps: int = option(10)
    seed: int = option(0)
    lora_r: int = option(8)
    lora_alpha: int = option(16)
    lora_dropout: float = option(0.0)
    bf16: bool = option(False)
    num_workers: int = option(0)
    report_to: str = option("none", "none, tensorboard, wandb, ...")
    head: Literal["linear", "pdf", "binned_pdf", "gaussian_mixture"] = option(
        "linear", "pdf: a probability density of a regression target (binned_pdf, a softmax over bins, or "
        "gaussian_mixture)"
    )
    pdf_bins: str | None = option(
        None, "PDF bins: a count over the training targets' range (default 64) or comma-separated edges"
    )
    calibration_split: str = option("validation", "split on which the PDF temperature is fitted ('' for none)")
    target_transform: Literal["none", "log1p"] = option(
        "none", "regression: learn log(1 + y) instead of y (predictions are transformed back)"
    )
    sample_weighting: Literal["none", "inverse_density"] = option(
        "none", "regression: weight each galaxy's loss by the inverse of the training targets' histogram density "
        "(20 bins, mean weight 1, at most 10) so the rare ends of the distribution count as much as its peak"
    )
    # Set by code, not on the command line:
    # σ_NMAD and the outlier fraction in the metrics (default: when the target looks like a redshift)
    photo_z: bool | None = field(default=None, metadata=NOT_A_FLAG)
    trust_remote_code: bool = field(default=True, metadata=NOT_A_FLAG)

    def resolved_head_init(self) -> str:
        return self.head_init or ("probe" if self.mode == "frozen" and self.head == "linear" else "random")

    def resolved_pdf_bins(self) -> int | list[float] | None:
        """`pdf_bins` as a bin count or a list of edges."""
        if not self.pdf_bins:
            return None
        text = str(self.pdf_bins)
        return [float(edge) for edge in text.split(",")] if "," in text else int(text)

    def resolved_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.mode]


@dataclass
class _Labels:
    """How the target is encoded for training: a standardised regression or class indices."""

    task: str
    regression: RegressionTarget | None = None
    id2label: dict[int, str] | None = None
    pdf_head: str | None = None  # the config's head_type for a PDF head (labels then stay in their units)
    pdf_overrides: dict[str, Any] = field(default_factory=dict)
    sample_weights: InverseDensityWeights | None = None  # training loss weights of a regression

    @property
    def label2id(self) -> dict[str, int] | None:
        return {label: index for index, label in self.id2label.items()} if self.id2label else None

    def model_kwargs(self) -> dict[str, Any]:
        if self.pdf_head:
            return dict(self.pdf_overrides)
        if self.regression is not None:
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": len(self.id2label), "problem_type": "single_label_classification",
                "id2label": self.id2label, "label2id": self.label2id}


def _check_options(options: FinetuneArguments, train_dataset, eval_dataset) -> str:
    """Refuse impossible settings before anything is loaded; returns the task."""
    if options.mode not in MODES:
        raise ValueError(f"mode={options.mode!r} is not valid; expected one of {list(MODES)}")
    if options.resolved_head_init() not in HEAD_INITS:
        raise ValueError(f"head_init={options.head_init!r} is not valid; expected one of {list(HEAD_INITS)}")
    if options.augment not in AUGMENTATIONS:
        raise ValueError(f"augment={options.augment!r} is not valid; expected one of {list(AUGMENTATIONS)}")
    if options.augment != "none" and options.target.lower() in ORIENTATION_TARGETS:
        raise ValueError(
            f"augment={options.augment!r} turns the images, which changes {options.target!r}; use augment='none'"
        )
    task = options.task or infer_target_task(train_dataset, options.target)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not valid; expected one of {list(TASKS)}")
    if eval_dataset is not None and options.target not in eval_dataset.column_names:
        raise ValueError(
            f"evaluation dataset has no column {options.target!r}; columns are {eval_dataset.column_names}"
        )
    if options.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1; got {options.max_steps}")
    _check_regression_options(options, task)
    return task


def _check_regression_options(options: FinetuneArguments, task: str) -> None:
    """The target transformation and loss weighting act on the linear head's squared-error loss only."""
    for name, value, choices in (("target_transform", options.target_transform, TARGET_TRANSFORMS),
                                 ("sample_weighting", options.sample_weighting, SAMPLE_WEIGHTINGS)):  # fmt: skip
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not valid; expected one of {list(choices)}")
        if value != "none" and (task != "regression" or options.head != "linear"):
            raise ValueError(f"{name}={value!r} needs a regression with --head linear; got task={task!r}, "
                             f"head={options.head!r}")  # fmt: skip


def _encode_labels(train_dataset, eval_dataset, target: str, task: str, options: FinetuneArguments) -> _Labels:
    from astropt_hf.downstream import pdf_finetune

    pdf_head = pdf_finetune.pdf_head_type(options.head, task, options.resolved_head_init())
    if pdf_head:  # a PDF head learns the target in its own units
        overrides = pdf_finetune.pdf_model_overrides(pdf_head, train_dataset[target], options.resolved_pdf_bins())
        return _Labels(task, regression=RegressionTarget(target, 0.0, 1.0), pdf_head=pdf_head,
                       pdf_overrides=overrides)
    if task == "regression":
        regression = RegressionTarget.fit(target, train_dataset[target], options.target_transform)
        weights = (InverseDensityWeights.fit(train_dataset[target]) if options.sample_weighting == "inverse_density"
                   else None)  # fmt: skip
        return _Labels(task, regression=regression, sample_weights=weights)
    classes = sorted({label_key(v) for split in (train_dataset, eval_dataset) for v in split[target]})
    if len(classes) < 2:
        raise ValueError(f"classification of {target!r} needs at least 2 classes; got {classes}")
    return _Labels(task, id2label=dict(enumerate(classes)))


def _load_model(options: FinetuneArguments, labels: _Labels, train_dataset, image_column: str):
    """The classifier (head initialised, mode applied) and its processor."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import astropt_hf  # noqa: F401  (Auto classes for local folders)

    name = str(options.model)
    processor = AutoImageProcessor.from_pretrained(name, trust_remote_code=options.trust_remote_code)
    with plain_load_reports():  # the head is new: transformers reports it, without colour codes in log files
        model = AutoModelForImageClassification.from_pretrained(
            name, trust_remote_code=options.trust_remote_code, ignore_mismatched_sizes=True, **labels.model_kwargs()
        )
    if options.resolved_head_init() == "probe":
        init_head_from_probe(model, processor, train_dataset, image_column, options.target, labels.task,
                              labels.regression, labels.label2id, options.batch_size)  # fmt: skip
    model = _apply_mode(model, options.mode, options.lora_r, options.lora_alpha, options.lora_dropout)
    return model, processor


def _build_trainer(options: FinetuneArguments, model, processor, labels: _Labels, datasets: tuple,
                   image_column: str, photo_z: bool, output_dir: Path):
    collator = LabelCollator(processor, image_column, options.target, labels.regression, labels.label2id)
    train_collator = (
        LabelCollator(processor, image_column, options.target, labels.regression, labels.label2id,
                      augment=options.augment, sample_weights=labels.sample_weights)
        if options.augment != "none" or labels.sample_weights is not None else None
    )  # fmt: skip
    trainer = finetune_trainer_class()(
        model=model,
        args=training_arguments(options, output_dir),
        train_dataset=datasets[0],
        eval_dataset=datasets[1],
        data_collator=collator,
        train_collator=train_collator,
        compute_metrics=trainer_compute_metrics(labels.task, labels.regression, model.config, photo_z,
                                                pdf=bool(labels.pdf_head)),
    )
    use_progress_bar(trainer, output_dir / LOG_FILE)
    return trainer


def _save_plain_model(trainer, processor, options: FinetuneArguments, labels: _Labels, output_dir: Path):
    """Save a plain AstroPTForImageClassification: adapters merged, head in the target's units."""
    model = trainer.model
    if options.mode == "lora":
        model = model.merge_and_unload()
    if labels.regression is not None and not labels.pdf_head:
        bake_standardisation(model, labels.regression)
        model.config.regression_target = asdict(labels.regression)
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # a frozen backbone is a training choice, not part of the checkpoint
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # one file: a "Writing model shards" bar says nothing
    try:
        model.save_pretrained(output_dir)
    finally:
        if shown:
            transformers_logging.enable_progress_bar()
    processor.save_pretrained(output_dir)
    return model


def finetune(options: FinetuneArguments, train_dataset, eval_dataset, image_column: str = "image",
             dataset_description: str = "", calibration_dataset=None) -> FinetuneResult:
    """Fine-tune astroPT on `options.target` and save a checkpoint, its processor, metrics and a model card.

    Args:
        options: the model (a pretrained astroPT folder or hub id, any head: the backbone is used), target,
            output folder, mode ("frozen", "full" or "lora", see the module docstring) and training settings.
        train_dataset, eval_dataset: map-style datasets with `image_column` and the target column.
        dataset_description: one line for the model card (where the rows came from).
        calibration_dataset: PDF heads: the rows on which the PDFs' temperature is fitted (None: T = 1).
    Returns:
        `FinetuneResult` with the final evaluation metrics (also written to finetune_results.json).
    """
    from transformers import set_seed

    from astropt_hf.downstream.probes import is_redshift_like

    task = _check_options(options, train_dataset, eval_dataset)
    target, output_dir = options.target, Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(options.seed)
    photo_z = is_redshift_like(target) if options.photo_z is None else options.photo_z
    test_rows = eval_dataset  # with every column: the PDF table carries the ids
    train_dataset = drop_missing(train_dataset.select_columns([image_column, target]), target, task, "train")
    eval_dataset = drop_missing(eval_dataset.select_columns([image_column, target]), target, task, "eval")
    started = time.perf_counter()
    labels = _encode_labels(train_dataset, eval_dataset, target, task, options)
    model, processor = _load_model(options, labels, train_dataset, image_column)
    trainable, total = _count_parameters(model)
    logger.info("fine-tuning %s (%s, %s): %d of %d parameters trainable", target, task, options.mode, trainable, total)

    trainer = _build_trainer(options, model, processor, labels, (train_dataset, eval_dataset), image_column,
                             photo_z, output_dir)  # fmt: skip
    setup_seconds = time.perf_counter() - started
    logger.info("training on %d CPU thread(s) (OMP_WAIT_POLICY=%s); log: %s", torch.get_num_threads(),
                os.environ.get("OMP_WAIT_POLICY", "default"), output_dir / LOG_FILE)  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    metrics, eval_predictions, eval_targets = _final_evaluation(trainer, eval_dataset, labels)
    model = _save_plain_model(trainer, processor, options, labels, output_dir)
    pdf_scores = None
    if labels.pdf_head:
        from astropt_hf.downstream import pdf_finetune

        pdf_scores = pdf_finetune.write_pdf_outputs(model, processor, test_rows, calibration_dataset, target,
                                                    output_dir, image_column, photo_z, max(options.batch_size, 64))
    redshift_bias = None
    if photo_z and labels.regression is not None:
        from astropt_hf.metrics import compute_redshift_bias

        redshift_bias = compute_redshift_bias(eval_predictions, eval_targets)

    result = FinetuneResult(
        output_dir=output_dir, target=target, task=task, mode=options.mode, metrics=metrics,
        num_trainable_parameters=trainable, num_parameters=total, train_seconds=train_seconds,
        max_steps=options.max_steps, learning_rate=options.resolved_learning_rate(),
        head_init=options.resolved_head_init(), augment=options.augment,
        target_transform=options.target_transform, sample_weighting=options.sample_weighting,
        regression_target=asdict(labels.regression) if labels.regression is not None and not labels.pdf_head
        else None, redshift_bias=redshift_bias,
        id2label=labels.id2label, log_history=list(trainer.state.log_history), eval_predictions=eval_predictions,
        eval_targets=eval_targets, pdf=pdf_scores, setup_seconds=setup_seconds, torch_threads=torch.get_num_threads(),
    )  # fmt: skip
    _write_outputs(result, options, model.config, labels, photo_z, dataset_description)
    return result


def _final_evaluation(trainer, eval_dataset, labels: _Labels):
    """Metrics, predictions and true values (target units; class indices for a classification) of the
    evaluation rows."""
    final = trainer.predict(eval_dataset, metric_key_prefix="eval")
    metrics = {key: float(value) for key, value in final.metrics.items() if isinstance(value, (int, float))}
    raw = np.asarray(final.predictions[0] if isinstance(final.predictions, tuple) else final.predictions)
    if labels.regression is None:
        return metrics, raw.argmax(axis=-1), None
    targets = labels.regression.restore(np.asarray(final.label_ids).reshape(-1))
    if labels.pdf_head:
        from astropt_hf.downstream import pdf_finetune

        return metrics, pdf_finetune.pdf_point_predictions(raw, trainer.model.config), targets
    return metrics, labels.regression.restore(raw.reshape(-1)), targets


def _write_outputs(result: FinetuneResult, options: FinetuneArguments, config, labels: _Labels,
                   photo_z: bool, dataset_description: str) -> None:
    """finetune_results.json, the predicted-vs-true figure of a regression and the model card."""
    output_dir = result.output_dir
    (output_dir / "finetune_results.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if labels.regression is not None:
        from astropt_hf.plotting import plot_pred_vs_true

        plot_pred_vs_true(result.eval_predictions, result.eval_targets, result.target, output_dir / "pred_vs_true.png",
                          photo_z=photo_z, model_description=f"fine-tuned astroPT ({options.mode}, test split)",
                          bias=result.redshift_bias)  # fmt: skip
    card = render_finetuned_card(result, str(options.model), config, dataset_description)
    (output_dir / "README.md").write_text(card)
    _remove_trainer_scratch(output_dir)


def _remove_trainer_scratch(output_dir: Path) -> None:
    scratch = output_dir / "trainer_state"
    if scratch.is_dir() and not any(scratch.iterdir()):
        scratch.rmdir()
