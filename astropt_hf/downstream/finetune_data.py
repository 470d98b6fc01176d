"""The data side of fine-tuning: target transformation and standardisation, the task a column implies,
per-galaxy loss weights, and the collator that turns rows into (pixel_values, labels[, sample_weights]) with
optional dihedral augmentation."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "dihedral")
TARGET_TRANSFORMS = ("none", "log1p")
SAMPLE_WEIGHTINGS = ("none", "inverse_density")


def transform_target(values: Any, transform: str) -> np.ndarray:
    """The target as the head learns it: unchanged ("none") or log(1 + y) ("log1p", for y > -1)."""
    array = np.asarray(values, dtype=np.float64)
    if transform == "none":
        return array
    if transform == "log1p":
        if np.any(array[np.isfinite(array)] <= -1):
            raise ValueError("target_transform='log1p' needs every target value above -1")
        return np.log1p(array)
    raise ValueError(f"target_transform={transform!r} is not valid; expected one of {list(TARGET_TRANSFORMS)}")


def untransform_target(values: Any, transform: str) -> np.ndarray:
    """Inverse of `transform_target`: the head's output back in the target's own units."""
    array = np.asarray(values, dtype=np.float64)
    if transform == "none":
        return array
    if transform == "log1p":
        return np.expm1(array)
    raise ValueError(f"target_transform={transform!r} is not valid; expected one of {list(TARGET_TRANSFORMS)}")


@dataclass(frozen=True)
class RegressionTarget:
    """How a continuous target is learnt: the model trains on (t(y) - mean) / std, with t the `transform`
    ("none" or "log1p") and mean, std those of t(y) over the training rows."""

    name: str
    mean: float
    std: float
    transform: str = "none"

    @classmethod
    def fit(cls, name: str, values: Any, transform: str = "none") -> RegressionTarget:
        array = np.asarray(values, dtype=np.float64)
        array = transform_target(array[np.isfinite(array)], transform)
        if array.size < 2:
            raise ValueError(f"target {name!r}: need at least 2 finite training values; got {array.size}")
        std = float(array.std())
        return cls(name=name, mean=float(array.mean()), std=std if std > 0 else 1.0, transform=transform)

    def standardise(self, values: Any) -> np.ndarray:
        return (transform_target(values, self.transform) - self.mean) / self.std

    def restore(self, values: Any) -> np.ndarray:
        """Standardised head outputs back in the target's own units."""
        return untransform_target(self.unstandardise(values), self.transform)

    def unstandardise(self, values: Any) -> np.ndarray:
        """Standardised head outputs in the transformed units (what a saved head outputs)."""
        return np.asarray(values, dtype=np.float64) * self.std + self.mean


@dataclass(frozen=True)
class InverseDensityWeights:
    """Per-galaxy loss weights inverse to the training targets' histogram density.

    A regression trained on a peaked distribution pulls the rare ends towards the peak (the loss is
    dominated by the common values); weighting each galaxy by 1 / (number of training galaxies in its
    bin) gives every occupied bin the same total weight. Weights are normalised to mean 1 over the
    training rows, so the learning rate keeps its meaning, and capped at `max_weight` (then normalised
    again) so that a bin of one or two galaxies cannot dominate a batch.
    """

    edges: tuple[float, ...]
    bin_weights: tuple[float, ...]

    @classmethod
    def fit(cls, values: Any, bins: int = 20, max_weight: float = 10.0) -> InverseDensityWeights:
        array = np.asarray(values, dtype=np.float64)
        array = array[np.isfinite(array)]
        if array.size < 2:
            raise ValueError(f"inverse-density weights need at least 2 finite values; got {array.size}")
        if max_weight < 1:
            raise ValueError(f"max_weight must be at least 1 (the mean weight); got {max_weight}")
        counts, edges = np.histogram(array, bins=bins)
        inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        capped = np.zeros(counts.size, dtype=bool)
        while True:  # scale the uncapped bins so the mean is 1; cap the bins that pass max_weight, repeat
            free = ~capped & (counts > 0)
            scale = (array.size - max_weight * counts[capped].sum()) / np.sum(inverse[free] * counts[free])
            over = free & (scale * inverse > max_weight)
            if not over.any():
                break
            capped |= over
        weights = np.where(capped, max_weight, scale * inverse)
        return cls(edges=tuple(float(e) for e in edges), bin_weights=tuple(float(w) for w in weights))

    def __call__(self, values: Any) -> np.ndarray:
        """Weight of each value (values outside the fitted range take the weight of the nearest end bin)."""
        array = np.asarray(values, dtype=np.float64)
        index = np.clip(np.searchsorted(self.edges, array, side="right") - 1, 0, len(self.bin_weights) - 1)
        return np.asarray(self.bin_weights)[index]


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
    image the data layer cannot read is skipped together with its label. With `sample_weights` (training
    only) the batch also holds each galaxy's loss weight, (B,), looked up from its target value. `augment="dihedral"` turns
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
        sample_weights: InverseDensityWeights | None = None,
    ):
        from astropt_hf.data import GalaxyCollator

        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment={augment!r} is not valid; expected one of {list(AUGMENTATIONS)}")
        self.images = GalaxyCollator(processor, image_column=image_column, keep_columns=[target])
        self.target = target
        self.regression = regression
        self.label2id = label2id
        self.augment = augment
        self.sample_weights = sample_weights

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
        encoded = {"pixel_values": batch["pixel_values"], "labels": labels}
        if self.sample_weights is not None:
            encoded["sample_weights"] = torch.as_tensor(self.sample_weights(values), dtype=torch.float32)
        return encoded


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


__all__ = ["AUGMENTATIONS", "SAMPLE_WEIGHTINGS", "TARGET_TRANSFORMS", "InverseDensityWeights", "LabelCollator",
           "RegressionTarget", "drop_missing", "infer_target_task", "label_key", "random_dihedral", "transform_target",
           "untransform_target"]
