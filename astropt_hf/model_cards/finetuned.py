"""The model card of a fine-tuned checkpoint (`astropt_hf.downstream.finetuning.finetune` writes it)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from . import build_card, card_data, read_template

if TYPE_CHECKING:  # pragma: no cover
    from astropt_hf.downstream.finetuning import FinetuneResult

__all__ = ["render_finetuned_card"]


def _evaluation_scores(metrics: dict[str, float]) -> list[tuple[str, float]]:
    """(name, value) of the evaluation scores, without the trainer's timing entries."""
    return [
        (key.removeprefix("eval_"), value)
        for key, value in metrics.items()
        if key.startswith("eval_") and not key.endswith(("runtime", "per_second"))
    ]


def _metrics_table(metrics: dict[str, float]) -> str:
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.4g} |" for name, value in _evaluation_scores(metrics)]
    return "\n".join(lines)


def _output_and_usage(result: FinetuneResult) -> tuple[str, str]:
    """What the head outputs (a note for the card) and the line of code that reads it."""
    if result.pdf is not None:
        pdf = result.pdf
        output_note = (
            f"The head (`config.head_type = \"{pdf['head_type']}\"`) outputs a probability density of `{result.target}` "
            f"over {pdf['num_bins']} bins from {pdf['range'][0]:.4g} to {pdf['range'][1]:.4g} (`config.pdf_bins`), trained "
            "on its likelihood; `eval loss` below is its negative log-likelihood and the point metrics are those of the "
            f"PDF median. A temperature of {pdf['temperature']:.4g} fitted on a validation split calibrates it "
            "(`finetune_results.json` has the scores raw and calibrated, `test_predictions.parquet` every test galaxy)."
        )
        usage = ("pdfs = BinnedPDF.from_outputs(model(pixel_values=pixel_values).logits, model.config, "
                 f"temperature={pdf['temperature']:.4g})  # from astropt_hf.downstream.binned_pdf")  # fmt: skip
        return output_note, usage
    if result.task == "regression":
        stats = result.regression_target or {}
        logarithmic = stats.get("transform") == "log1p"
        learnt = f"log(1 + {result.target})" if logarithmic else f"`{result.target}` in its own units"
        output_note = (
            f"The head outputs {learnt}. Training used standardised "
            f"{'values of log(1 + ' + result.target + ')' if logarithmic else 'targets'} "
            f"(mean {stats.get('mean', float('nan')):.6g}, std {stats.get('std', float('nan')):.6g} over the "
            "training rows, also stored as `config.regression_target`); the head was rescaled before saving, "
            "so `eval loss` below is the MSE in standardised units and the other metrics are in the target's units."
        )
        if logarithmic:
            output_note += f" `config.regression_target.transform` is `\"log1p\"`: apply `expm1` to get `{result.target}`."
            return output_note, "prediction = model(pixel_values=pixel_values).logits[:, 0].expm1()"
        return output_note, "prediction = model(pixel_values=pixel_values).logits[:, 0]"
    labels = ", ".join(f"{index}: `{label}`" for index, label in (result.id2label or {}).items())
    usage = "labels = [model.config.id2label[i] for i in model(pixel_values=pixel_values).logits.argmax(-1).tolist()]"
    return f"Classes (`config.id2label`): {labels}.", usage


def _bias_section(result: FinetuneResult) -> str:
    """The redshift bias in bins of true z (empty for other targets)."""
    bias = result.redshift_bias
    if not bias:
        return ""
    overall = bias["overall"]
    lines = [
        "Bias Δz / (1 + z) of the predictions (Δz = predicted − true), overall and in bins of true redshift: "
        "a model that regresses towards the training set's mean over-predicts the low-z end and under-predicts "
        "the high-z tail, which σ_NMAD does not show.",
        "",
        "| true z | galaxies | mean Δz/(1+z) | median Δz/(1+z) |",
        "| --- | ---: | ---: | ---: |",
        f"| all | {overall['n']} | {overall['mean']:+.4f} | {overall['median']:+.4f} |",
    ]
    lines += [f"| {b['z_lo']:.2f}–{b['z_hi']:.2f} | {b['n']} | {b['mean']:+.4f} | {b['median']:+.4f} |"
              for b in bias["bins"] if b["n"] > 0]  # fmt: skip
    return "\n".join(lines) + "\n"


_TRANSFORMS = {"none": "none", "log1p": "log(1 + y), transformed back for the metrics"}
_WEIGHTINGS = {"none": "none (every galaxy counts the same)",
               "inverse_density": "inverse of the training targets' histogram density (mean 1, at most 10)"}


def render_finetuned_card(result: FinetuneResult, base_model: str, config, dataset_description: str = "") -> str:
    """README.md for a fine-tuned checkpoint, from the shipped `finetuned` template.

    The front matter names the base model and the evaluation metrics (the loss is not a metric).
    """
    output_note, usage = _output_and_usage(result)
    values = {
        "target": result.target,
        "task": result.task,
        "mode": result.mode,
        "base_model": base_model,
        "max_steps": result.max_steps,
        "learning_rate": f"{result.learning_rate:g}",
        "head_init": "the linear probe of the training embeddings" if result.head_init == "probe" else "random",
        "augment": "random 90-degree turns and mirror images" if result.augment == "dihedral" else "none",
        "target_transform": _TRANSFORMS.get(result.target_transform, result.target_transform),
        "sample_weighting": _WEIGHTINGS.get(result.sample_weighting, result.sample_weighting),
        "bias_section": _bias_section(result),
        "trainable_parameters": f"{result.num_trainable_parameters:,}",
        "num_parameters": f"{result.num_parameters:,}",
        "train_minutes": f"{result.train_seconds / 60:.1f}",
        "metrics_table": _metrics_table(result.metrics),
        "output_note": output_note,
        "usage": usage,
        "dataset": dataset_description or "not recorded",
        "image_size": config.image_size,
        "num_channels": config.num_channels,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "pooling": config.pooling,
        "embedding_layer": config.embedding_layer,
        "metrics_json": json.dumps(result.metrics, indent=2, sort_keys=True),
    }
    metrics = [name for name, _ in _evaluation_scores(result.metrics) if name != "loss"]
    data = card_data(
        "image-classification", tags=("fine-tuned",), base_model=base_model, metrics=metrics or None
    )
    return str(build_card(read_template("finetuned"), data, values))
