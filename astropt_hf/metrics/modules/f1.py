"""F1 score (binary, micro or macro average) as an offline `evaluate` metric (numpy only)."""

import evaluate
import numpy as np

from .metric_base import PairedMetric

_AVERAGES = ("binary", "micro", "macro", "weighted")


def _per_class_counts(pred: np.ndarray, true: np.ndarray, label) -> tuple[int, int, int]:
    tp = int(np.sum((pred == label) & (true == label)))
    fp = int(np.sum((pred == label) & (true != label)))
    fn = int(np.sum((pred != label) & (true == label)))
    return tp, fp, fn


def _f1_from_counts(tp: int, fp: int, fn: int) -> float:
    # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall without the 0/0 cases.
    denominator = 2 * tp + fp + fn
    return 0.0 if denominator == 0 else 2.0 * tp / denominator


class F1(PairedMetric, evaluate.Metric):
    """F1 = 2 * precision * recall / (precision + recall), per class, where a class
    with no predicted and no true members (or precision + recall = 0) scores 0.

    average="binary": F1 of the class `pos_label` (default 1).
    average="micro":  F1 from the pooled true-positive / false-positive / false-negative
                      counts over all classes (equals accuracy for single-label data).
    average="macro":  unweighted mean of per-class F1 over every label that occurs in
                      the predictions or the references.
    average="weighted": per-class F1 weighted by each class's number of references.
    """

    key = "f1"
    value_type = "int"
    inputs = ("predicted labels", "true labels")
    options = (
        'average (str, default "binary"): "binary", "micro", "macro" or "weighted".',
        'pos_label (int, default 1): the positive class for average="binary".',
    )
    returns = "(float) in [0, 1]"
    example = ("predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]", "{'f1': 0.6666666666666666}")

    def score(self, pred: np.ndarray, true: np.ndarray, average: str = "binary", pos_label: int = 1) -> float:
        if average not in _AVERAGES:
            raise ValueError(f"f1: average must be one of {_AVERAGES}; got {average!r}")
        labels = np.union1d(pred, true)
        if average == "binary":
            if labels.size > 2:
                raise ValueError(
                    f"f1: average='binary' needs at most 2 labels; got {labels.size} ({labels.tolist()[:10]}). "
                    "Use average='macro' or 'micro'."
                )
            return _f1_from_counts(*_per_class_counts(pred, true, pos_label))
        counts = np.array([_per_class_counts(pred, true, label) for label in labels])
        if average == "micro":
            return _f1_from_counts(*counts.sum(axis=0).tolist())
        per_class = np.array([_f1_from_counts(*row) for row in counts.tolist()])
        if average == "macro":
            return per_class.mean()
        support = np.array([np.sum(true == label) for label in labels], dtype=np.float64)
        return np.sum(per_class * support) / support.sum()
