"""Fine-tuning with a probability-density head: the head's settings, Trainer metrics, and what a trained
PDF model writes for its test galaxies.

`finetune(..., head="pdf")` trains `AstroPTForImageClassification` with `head_type="binned_pdf"` (the
default PDF head) or `"gaussian_mixture"` on the likelihood of the target in its own units, over bins
spanning the training targets (padded by `RANGE_PADDING` of their span on each side, kept >= 0 for a
non-negative target). After training, `write_pdf_outputs` predicts the test and validation PDFs, fits a
temperature on the validation split, and writes:

* ``test_predictions.parquet``: per test galaxy ``id``, ``true``, the PDF's ``median``, ``mode``, ``mean``,
  central intervals ``lo68``, ``hi68``, ``lo95``, ``hi95``, its ``pit`` and ``crps``, and the same with a
  ``_calibrated`` suffix after temperature scaling;
* ``pdf_pit.png``, ``pdf_coverage.png``, ``pdf_median_vs_true.png``, ``pdf_examples.png``;

and returns the scores that go into ``finetune_results.json`` under ``"pdf"``.

The binned softmax (with `DEFAULT_LABEL_SMOOTHING`) is the default PDF head: it can take any shape (two
peaks, a hard edge at z = 0, skew) without choosing a number of components, and it scored better on the
proper scores (NLL, CRPS) after calibration; the README's "Photo-z PDFs" compares it with the mixture head.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from astropt_hf.downstream.binned_pdf import BinnedPDF, bin_log_probabilities
from astropt_hf.downstream.pdf_metrics import calibrate_and_score, crps, pit_values

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PDF_HEAD",
    "HEADS",
    "pdf_bin_edges",
    "pdf_compute_metrics",
    "pdf_head_type",
    "pdf_model_overrides",
    "pdf_point_predictions",
    "predict_pdf_log_probabilities",
    "write_pdf_outputs",
]

DEFAULT_PDF_HEAD = "binned_pdf"
HEADS = ("linear", "pdf", "binned_pdf", "gaussian_mixture")
DEFAULT_NUM_BINS = 64
# Each training label spread over about one bin either side: neighbouring bins learn together, which
# lowered the held-out NLL and CRPS against the one-hot likelihood (README, "Photo-z PDFs").
DEFAULT_LABEL_SMOOTHING = 1.0
RANGE_PADDING = 0.05
SUMMARY_COLUMNS = ("median", "mode", "mean", "lo68", "hi68", "lo95", "hi95")


def pdf_head_type(head: str, task: str, head_init: str | None = None) -> str | None:
    """The config `head_type` for `head` ("pdf" is `DEFAULT_PDF_HEAD`), None for the linear head."""
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not valid; expected one of {list(HEADS)}")
    if head == "linear":
        return None
    if task != "regression":
        raise ValueError(f"head={head!r} is a density of a continuous target; the target is a {task}")
    if head_init == "probe":
        raise ValueError(f"head_init='probe' fits a linear regression head; head={head!r} starts at random")
    return DEFAULT_PDF_HEAD if head == "pdf" else head


def pdf_bin_edges(values: Any, bins: int | Any | None = None) -> list[float]:
    """Bin edges: `bins` edges as given, or `bins` (default `DEFAULT_NUM_BINS`) equal bins over the
    finite `values`' range padded by `RANGE_PADDING` of its span (not below 0 if no value is)."""
    if bins is not None and not isinstance(bins, (int, np.integer)):
        return [float(edge) for edge in bins]
    count = int(bins or DEFAULT_NUM_BINS)
    if count < 1:
        raise ValueError(f"pdf_bins={bins!r}: need at least one bin")
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2 or values.max() <= values.min():
        raise ValueError("cannot place PDF bins: the training targets need at least two different finite values")
    low, high = float(values.min()), float(values.max())
    pad = RANGE_PADDING * (high - low)
    low = max(low - pad, 0.0) if low >= 0 else low - pad
    return [float(edge) for edge in np.linspace(low, high + pad, count + 1)]


def pdf_model_overrides(head_type: str, train_values: Any, bins: int | Any | None = None) -> dict[str, Any]:
    """Keyword arguments for `AutoModelForImageClassification.from_pretrained` that build the PDF head
    (the binned head with `DEFAULT_LABEL_SMOOTHING`)."""
    overrides = {"num_labels": 1, "problem_type": "regression", "head_type": head_type,
                 "pdf_bins": pdf_bin_edges(train_values, bins)}  # fmt: skip
    if head_type == "binned_pdf":
        overrides["pdf_label_smoothing"] = DEFAULT_LABEL_SMOOTHING
    return overrides


def pdf_point_predictions(outputs: Any, config) -> np.ndarray:
    """The PDF medians, (N,), from the head's outputs."""
    return BinnedPDF.from_outputs(outputs, config).median()


def pdf_compute_metrics(config, photo_z: bool = False):
    """Trainer `compute_metrics` for a PDF head: CRPS, coverage, PIT distance and the median's point
    metrics on the evaluation rows (labels in the target's units), before any calibration."""
    from astropt_hf.downstream.pdf_metrics import score_pdfs

    def compute_metrics(prediction) -> dict[str, float]:
        outputs = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return score_pdfs(BinnedPDF.from_outputs(outputs, config), np.asarray(prediction.label_ids), photo_z)

    return compute_metrics


def predict_pdf_log_probabilities(model, processor, dataset, target: str, image_column: str = "image",
                                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """(log-probability per bin (N, M), true values (N,), ids) of the rows with a finite target that the
    data layer can read; ids are the dataset's `id` column when it has one."""
    import torch
    from torch.utils.data import DataLoader

    from astropt_hf.data import GalaxyCollator

    id_column = "id" if "id" in dataset.column_names else None
    keep = [c for c in (image_column, target, id_column) if c is not None]
    dataset = dataset.select_columns(keep)
    finite = [i for i, v in enumerate(dataset[target]) if v is not None and math.isfinite(float(v))]
    dataset = dataset.select(finite)
    collator = GalaxyCollator(processor, image_column=image_column, id_column=id_column, keep_columns=[target])
    device = next(model.parameters()).device
    outputs, truth, ids = [], [], []
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
            if len(batch["pixel_values"]) == 0:
                continue
            logits = model(pixel_values=batch["pixel_values"].to(device)).logits
            outputs.append(bin_log_probabilities(logits, model.config))
            truth.append(np.asarray(batch[target], dtype=np.float64).reshape(-1))
            ids.extend(str(i) for i in batch["ids"])
    if not outputs:
        raise ValueError(f"no readable rows with a finite {target!r}")
    return np.concatenate(outputs), np.concatenate(truth), ids


def _prediction_table(ids, truth, raw: BinnedPDF, calibrated: BinnedPDF):
    import pandas as pd

    columns: dict[str, Any] = {"id": list(ids), "true": truth}
    for suffix, pdfs in (("", raw), ("_calibrated", calibrated)):
        columns.update({f"{name}{suffix}": values for name, values in pdfs.summary().items()})
        columns[f"pit{suffix}"] = pit_values(pdfs, truth)
        columns[f"crps{suffix}"] = crps(pdfs, truth)
    return pd.DataFrame(columns)


def _write_figures(output_dir: Path, truth, ids, raw: BinnedPDF, calibrated: BinnedPDF, calibration,
                   target_label: str) -> None:  # fmt: skip
    from astropt_hf.plotting.pdf import (
        plot_median_vs_true,
        plot_pdf_coverage,
        plot_pdf_examples,
        plot_pit_histogram,
    )

    calibrated_name = f"calibrated (T = {calibration.temperature:.2f})"
    named = {"raw": raw, calibrated_name: calibrated}
    scores = {"raw": calibration.raw, calibrated_name: calibration.calibrated}
    pits = {name: pit_values(pdfs, truth) for name, pdfs in named.items()}
    plot_pit_histogram(pits, output_dir / "pdf_pit.png", scores=scores)
    plot_pdf_coverage(named, truth, output_dir / "pdf_coverage.png", scores=scores)
    shown = ("sigma_nmad", "bias", "outlier_fraction", "crps", "coverage_68")
    metrics = {k: calibration.calibrated[k] for k in shown if k in calibration.calibrated}
    plot_median_vs_true(calibrated.summary(), truth, target_label, output_dir / "pdf_median_vs_true.png",
                        metrics=metrics, label="calibrated PDF: median, 68% interval")  # fmt: skip
    plot_pdf_examples(named, truth, target_label, output_dir / "pdf_examples.png", ids=ids)


def write_pdf_outputs(model, processor, test_dataset, validation_dataset, target: str, output_dir,
                      image_column: str = "image", photo_z: bool = False, batch_size: int = 64) -> dict[str, Any]:  # fmt: skip
    """Predict the test (and validation) PDFs of a trained PDF model, calibrate, and write the table and
    figures (see the module docstring). Returns {"head_type", "num_bins", "temperature", "raw",
    "calibrated", ...} for ``finetune_results.json``; `validation_dataset` None leaves T at 1."""
    output_dir = Path(output_dir)
    edges = np.asarray(model.config.pdf_bins, dtype=np.float64)
    log_p, truth, ids = predict_pdf_log_probabilities(model, processor, test_dataset, target, image_column,
                                                      batch_size)  # fmt: skip
    validation_log_p = validation_truth = None
    if validation_dataset is not None:
        validation_log_p, validation_truth, _ = predict_pdf_log_probabilities(
            model, processor, validation_dataset, target, image_column, batch_size
        )
    calibration = calibrate_and_score(log_p, truth, edges, validation_log_p, validation_truth, photo_z)
    logger.info("PDF temperature %.3g fitted on %d validation rows", calibration.temperature, calibration.validation_size)
    raw = BinnedPDF.from_log_probabilities(log_p, edges)
    calibrated = BinnedPDF.from_log_probabilities(log_p, edges, calibration.temperature)
    _prediction_table(ids, truth, raw, calibrated).to_parquet(output_dir / "test_predictions.parquet", index=False)
    _write_figures(output_dir, truth, ids, raw, calibrated, calibration, "redshift z" if photo_z else target)
    return {"head_type": model.config.head_type, "num_bins": len(edges) - 1, "range": [edges[0], edges[-1]],
            "test_size": len(truth), **calibration.to_json()}  # fmt: skip
