"""The data side of fine-tuning: target standardisation, the task a column implies, and the collator that
turns rows into (pixel_values, labels) with optional dihedral augmentation."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "dihedral")


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
            labels = torch.as_tensor([self.label2id[label_key(v)] for v in values], dtype=torch.long)
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


def label_key(value: Any) -> str:
    """Labels are matched as strings so ints, numpy ints and strings from different splits agree."""
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def drop_missing(dataset, target: str, task: str, what: str):
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


__all__ = ["AUGMENTATIONS", "LabelCollator", "RegressionTarget", "drop_missing", "infer_target_task", "label_key",
           "random_dihedral"]
