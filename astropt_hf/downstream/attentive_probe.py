"""Attentive probes (as in AIM): a few learned queries attend over a layer's frozen patch features.

A linear probe of a mean-pooled embedding can only read what survives the average over patches; an
attentive probe learns *where* to look. The probe is: LayerNorm on the patch features, multi-head
cross-attention from `num_queries` learned queries to the patches, the queries' outputs averaged,
LayerNorm, then a linear head. It is trained with AdamW; each training fold holds out a share of its
rows for early stopping (the weights of the best held-out epoch are kept), and predictions are made
out of fold with the same k-fold splits and seed convention as `astropt_hf.downstream.probes`
(KFold for regression, StratifiedKFold for labels, shuffled with `seed`).

Patch features of the chosen layer are extracted once into memory (float16 by default: N x T x D x 2
bytes) and every fold and target trains on that cache. `run_attentive_probes` reports the probe as
"attentive" (and its random-init baseline as "attentive_random_init") next to "astropt" in
probe_results.json.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from torch import nn

from astropt_hf.downstream.probes import ProbeResult, infer_task, is_redshift_like
from astropt_hf.metrics import compute_classification_metrics, compute_regression_metrics, encode_labels

logger = logging.getLogger(__name__)

__all__ = ["AttentivePooling", "AttentiveProbeOptions", "AttentiveWorkflowOptions", "attentive_probe_cv",
           "fit_attentive_probe", "run_attentive_probes"]  # fmt: skip


@dataclass
class AttentiveProbeOptions:
    """The probe's shape and training (the folds come from `attentive_probe_cv`'s n_folds and seed)."""

    num_queries: int = 1
    num_heads: int | None = None  # None: the largest of 8, 4, 2, 1 that divides the feature width
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 128
    max_epochs: int = 60  # what the README's table was measured with: minutes per target on 2 CPU cores
    patience: int = 10
    validation_fraction: float = 0.15
    device: str | None = None


class AttentivePooling(nn.Module):
    """(B, T, D) patch features -> (B, num_outputs): learned queries cross-attend, then a linear head."""

    def __init__(self, dim: int, num_outputs: int, num_queries: int = 1, num_heads: int | None = None):
        super().__init__()
        heads = num_heads or next(h for h in (8, 4, 2, 1) if dim % h == 0)
        self.input_norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.empty(1, num_queries, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.output_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        keys = self.input_norm(features)
        queries = self.queries.expand(features.shape[0], -1, -1)
        pooled, _ = self.attention(queries, keys, keys, need_weights=False)
        return self.head(self.output_norm(pooled.mean(dim=1)))


def _device(options: AttentiveProbeOptions) -> torch.device:
    return torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _loss(task: str):
    return nn.MSELoss() if task == "regression" else nn.CrossEntropyLoss()


def _outputs(probe: nn.Module, features: torch.Tensor, task: str) -> torch.Tensor:
    """The probe's outputs in the loss's shape: (B,) for regression, (B, classes) for labels."""
    outputs = probe(features.float())
    return outputs[:, 0] if task == "regression" else outputs


@torch.no_grad()
def _predict(probe: nn.Module, features: torch.Tensor, task: str, batch_size: int) -> torch.Tensor:
    probe.eval()
    return torch.cat([_outputs(probe, features[start : start + batch_size], task)
                      for start in range(0, len(features), batch_size)])  # fmt: skip


def fit_attentive_probe(
    features: torch.Tensor, targets: torch.Tensor, task: str, num_outputs: int,
    options: AttentiveProbeOptions | None = None, seed: int = 0,
) -> AttentivePooling:
    """Train one probe on (N, T, D) `features` (any float dtype, already on the training device).

    `targets` are standardised floats (regression) or class codes. A `validation_fraction` of the rows
    is held out; training stops `patience` epochs after the best held-out loss and that epoch's
    weights are returned.
    """
    options = options or AttentiveProbeOptions()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(features), generator=generator).to(features.device)
    n_val = max(1, int(round(options.validation_fraction * len(features))))
    val, train = order[:n_val], order[n_val:]
    probe = AttentivePooling(features.shape[-1], num_outputs, options.num_queries, options.num_heads).to(features.device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    loss_fn = _loss(task)
    best_loss, best_state, since_best = math.inf, copy.deepcopy(probe.state_dict()), 0
    for _ in range(options.max_epochs):
        probe.train()
        shuffled = train[torch.randperm(len(train), generator=generator).to(features.device)]
        for start in range(0, len(shuffled), options.batch_size):
            rows = shuffled[start : start + options.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(_outputs(probe, features[rows], task), targets[rows]).backward()
            optimizer.step()
        val_loss = float(loss_fn(_predict(probe, features[val], task, options.batch_size), targets[val]))
        if val_loss < best_loss - 1e-6:
            best_loss, best_state, since_best = val_loss, copy.deepcopy(probe.state_dict()), 0
        else:
            since_best += 1
            if since_best >= options.patience:
                break
    probe.load_state_dict(best_state)
    return probe.eval()


def _missing(values: np.ndarray) -> np.ndarray:
    if np.issubdtype(values.dtype, np.number):
        return ~np.isfinite(values.astype(np.float64))
    return np.array([v is None or (isinstance(v, float) and not np.isfinite(v)) for v in values], dtype=bool)


def attentive_probe_cv(
    patch_features: Any, targets: Any, task: str | None = None, n_folds: int = 5, seed: int = 0,
    photo_z: bool = False, options: AttentiveProbeOptions | None = None,
) -> ProbeResult:
    """k-fold attentive probe of `targets` (N,) from (N, T, D) patch features; out-of-fold metrics.

    Rows with a missing target are dropped (counted). Regression targets are standardised on each
    training fold and predictions mapped back; labels are encoded to codes and scored as labels.
    """
    options = options or AttentiveProbeOptions()
    values = np.asarray(targets)
    features = np.asarray(patch_features)
    if features.ndim != 3 or features.shape[0] != values.shape[0]:
        raise ValueError(f"patch_features: expected (N, T, D) with N={values.shape[0]}; got {features.shape}")
    task = task or infer_task(values)
    kept = ~_missing(values)
    values, features = values[kept], features[kept]
    device = _device(options)
    cached = torch.from_numpy(np.ascontiguousarray(features)).to(device)
    if task == "regression":
        true = values.astype(np.float64)
        splits = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(true)
        codes, classes = None, None
    else:
        (codes,), classes = encode_labels(values)
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(codes, codes)
    predictions = np.empty(len(values), dtype=np.float64 if task == "regression" else np.int64)
    for fold, (train, test) in enumerate(splits):
        if task == "regression":
            mean, scale = float(true[train].mean()), float(true[train].std()) or 1.0
            fold_targets = torch.tensor((true[train] - mean) / scale, dtype=torch.float32, device=device)
            probe = fit_attentive_probe(cached[train], fold_targets, task, 1, options, seed + fold)
            predictions[test] = _predict(probe, cached[test], task, options.batch_size).cpu().numpy() * scale + mean
        else:
            fold_targets = torch.as_tensor(codes[train], device=device)
            probe = fit_attentive_probe(cached[train], fold_targets, task, len(classes), options, seed + fold)
            predictions[test] = _predict(probe, cached[test], task, options.batch_size).argmax(-1).cpu().numpy()
    n_dropped = int((~kept).sum())
    if task == "regression":
        return ProbeResult(compute_regression_metrics(predictions, true, photo_z=photo_z), predictions, true, kept,
                           n_dropped, task)  # fmt: skip
    return ProbeResult(compute_classification_metrics(predictions, codes), classes[predictions], values, kept,
                       n_dropped, task)  # fmt: skip


@dataclass
class AttentiveWorkflowOptions:
    """What `run_attentive_probes` embeds and how it probes."""

    layer: int | None = None  # layer number (0..L, as in layer_features); None: the config's embedding layer
    n_folds: int = 5
    seed: int = 0
    batch_size: int = 64
    bf16: bool = False
    device: str | None = None
    random_init_baseline: bool = True
    feature_dtype: Any = np.float16
    probe: AttentiveProbeOptions = field(default_factory=AttentiveProbeOptions)


def run_attentive_probes(
    model_name_or_path: str | os.PathLike, dataset, targets: Sequence[str], output_dir: str | os.PathLike,
    split: str | None = None, options: AttentiveWorkflowOptions | None = None,
) -> dict[str, Any]:
    """Attentive probes of `targets` for a model and its random-init twin, merged into probe_results.json.

    `dataset` is what `run_layer_probes` takes (spec dict, `GalaxySource` or dataset). Returns
    {TARGET: {"attentive": metrics, "attentive_random_init": metrics}}, also written under "targets".
    """
    from astropt_hf.downstream.layer_features import (
        compute_patch_features,
        default_layer_number,
        load_backbone,
    )
    from astropt_hf.downstream.layer_probes import RESULTS_NAME, merge_probe_results, open_probe_dataset
    from astropt_hf.downstream.linear_probe import random_init_like

    options = options or AttentiveWorkflowOptions()
    options.probe.device = options.probe.device or options.device
    data, image_column, _ = open_probe_dataset(dataset, split)
    missing = [t for t in targets if t not in data.column_names]
    if missing or not targets:
        raise ValueError(f"targets {missing or list(targets)} are not columns of the dataset: {data.column_names}")
    model, processor = load_backbone(model_name_or_path, device=options.device)
    layer = options.layer if options.layer is not None else default_layer_number(model.config)
    layer = model.config.num_hidden_layers if layer is None else layer
    models = {"attentive": model}
    if options.random_init_baseline:
        models["attentive_random_init"] = random_init_like(model, options.seed)
    scores: dict[str, dict[str, Any]] = {name: {} for name in targets}
    for name, backbone in models.items():
        features, readable = compute_patch_features(backbone, data, processor, layer, options.batch_size,
                                                    options.feature_dtype, options.bf16, image_column)  # fmt: skip
        for target in targets:
            values = np.asarray(data[target])[readable]
            probe = attentive_probe_cv(features[readable], values, n_folds=options.n_folds, seed=options.seed,
                                       photo_z=is_redshift_like(target) and infer_task(values) == "regression",
                                       options=options.probe)  # fmt: skip
            scores[target][name] = {**probe.metrics, "n_samples": int(probe.true.size), "n_dropped": probe.n_dropped,
                                    "layer": int(layer), "max_epochs": options.probe.max_epochs,
                                    "patience": options.probe.patience}  # fmt: skip
            logger.info("attentive probe %s <- %s: %s", target, name, probe.metrics)
        del features
    merge_probe_results(Path(output_dir) / RESULTS_NAME, {"targets": scores})
    return scores
