"""What the shipped metric modules share: their inputs, the checks on them, and their description.

Every other file in this folder is one `evaluate` metric, a thin class over `PairedMetric` that holds
the metric's definition and formula. `evaluate.load(path)` copies a local metric script into its module
cache together with the files it imports relatively, and only from the script's own folder: that is
why the scripts and this file share one folder and import it as ``from .metric_base import ...``.
Numpy and evaluate only, so each script still loads offline from a bare copy of this folder.
"""

import inspect

import datasets
import evaluate
import numpy as np

VALUE_TYPES = {"float": np.float64, "int": np.int64}


class PairedMetric:
    """Turns a formula over paired predictions and references into an `evaluate.Metric`.

    A metric script declares ``class R2(PairedMetric, evaluate.Metric)`` whose docstring is the
    metric's definition, sets the attributes below, and defines ``score(pred, true, **options)``,
    which gets both inputs as non-empty numpy arrays of the value type and returns a float.

    Not an `evaluate.Metric` itself: evaluate takes the first `EvaluationModule` subclass in a script's
    namespace as the script's metric, and this class is imported before the script defines its own.
    """

    key: str  # the result's name, and the metric's name in error messages
    value_type = "float"  # "float": values compared as float64; "int": labels, as int64
    inputs = ("predicted values", "true values")  # what predictions and references hold
    options: tuple[str, ...] = ()  # the Args lines of `compute`'s extra keyword arguments
    returns = "(float)"
    example: tuple[str, str]  # (the keyword arguments of an example `compute` call, its result)
    redshift_references = False  # references are redshifts, which must be > -1

    def describe_inputs(self) -> str:
        value_type = self.value_type
        predictions, references = self.inputs
        options = "".join(f"    {line}\n" for line in self.options)
        call, result = self.example
        return (
            "Args:\n"
            f"    predictions (list of {value_type}): {predictions}.\n"
            f"    references (list of {value_type}): {references}.\n"
            f"{options}"
            f"Returns:\n    {self.key} {self.returns}\n"
            "Examples:\n"
            f'    >>> metric = evaluate.load("astropt_hf/metrics/modules/{self.key}.py")\n'
            f"    >>> metric.compute({call})\n"
            f"    {result}\n"
        )

    def _info(self) -> evaluate.MetricInfo:
        feature = datasets.Value(f"{self.value_type}64")
        return evaluate.MetricInfo(
            description=inspect.getdoc(type(self)),
            citation="",
            inputs_description=self.describe_inputs(),
            features=datasets.Features({"predictions": feature, "references": feature}),
        )

    def _compute(self, predictions, references, **options) -> dict:
        pred = np.asarray(predictions, dtype=VALUE_TYPES[self.value_type])
        true = np.asarray(references, dtype=VALUE_TYPES[self.value_type])
        if pred.size == 0:
            raise ValueError(f"{self.key}: got 0 predictions; need at least one")
        if self.redshift_references and np.any(true <= -1.0):
            raise ValueError(f"{self.key}: references must be redshifts > -1; got minimum {true.min()}")
        return {self.key: float(self.score(pred, true, **options))}
