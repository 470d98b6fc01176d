"""Probes across training: the same k-fold probes on every saved checkpoint of a pretraining run.

Every ``checkpoint-<step>`` folder of a run that holds a loadable model (``config.json`` plus weights
in the folder itself, or in a ``model/`` subfolder) is embedded once; its features are cached under
``OUTPUT/embeddings/checkpoint-<step>-<split>.npz`` and every probe reads the cache. Results go to
``OUTPUT/checkpoint_probes.json`` (OUTPUT defaults to ``RUN/checkpoint_probes``):

    [{"step": 1, "tokens_seen": 4096, "checkpoint": "checkpoint-1", "split": "test",
      "targets": {TARGET: {"r2": ..., "mae": ..., ...}},
      "layers": {TARGET: {LAYER: {...}}}, "best_layer": {TARGET: LAYER}},    # with layers
     ...]

written after each checkpoint, so a killed run loses at most one checkpoint's work. A rerun skips
checkpoints whose entry already covers the split, targets and layers asked for, and probes missing
targets from the cached features without loading the model again.

Tokens seen come from the checkpoint's ``trainer_state.json`` (``tokens_seen``, else ``images_seen``
times the patches per image), else from the run's ``metrics.jsonl`` record at that step, else from
``summary.json``'s ``tokens_per_step`` times the step. The plot shows each target's probe score
against tokens seen (log axis) with the validation loss of ``metrics.jsonl`` on a second axis.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astropt_hf.training.checkpointing import TRAINER_STATE_NAME, checkpoint_step

logger = logging.getLogger(__name__)

RESULTS_NAME = "checkpoint_probes.json"
PLOT_NAME = "checkpoint_probes.png"
OUTPUT_SUBDIR = "checkpoint_probes"

__all__ = ["CheckpointProbeOptions", "CheckpointProbesResult", "checkpoint_model_dir", "find_checkpoints",
           "probe_checkpoints", "tokens_seen_at", "validation_loss_curve"]  # fmt: skip


@dataclass
class CheckpointProbeOptions:
    """Which split and layers to probe, and how."""

    split: str | None = "test"
    layers: str | Sequence[int] | None = None  # None: only the model's configured embedding
    n_folds: int = 5
    seed: int = 0
    batch_size: int = 64
    bf16: bool = False
    device: str | None = None
    output_dir: str | os.PathLike | None = None  # default: RUN/checkpoint_probes


@dataclass
class CheckpointProbesResult:
    entries: list[dict[str, Any]]
    json_path: Path
    plot_path: Path | None
    computed_steps: list[int]  # checkpoints embedded or probed by this call (the others were reused)


def checkpoint_model_dir(path: str | os.PathLike) -> Path | None:
    """The folder `from_pretrained` loads for a checkpoint: ``model/`` inside it, or the folder itself."""
    path = Path(path)
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def find_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every loadable ``checkpoint-<step>`` in `run_dir`, lowest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    found = []
    for path in run_dir.iterdir():
        step = checkpoint_step(path)
        if step is None or not path.is_dir():
            continue
        if checkpoint_model_dir(path) is None:
            logger.warning("%s holds no config.json (in it or in model/): not a loadable model, skipped", path)
            continue
        found.append((step, path))
    return sorted(found)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _metrics_records(run_dir: Path) -> list[dict[str, Any]]:
    from astropt_hf.training.metrics_log import MetricsLog

    return MetricsLog(run_dir / "metrics.jsonl").read()


def tokens_seen_at(checkpoint: Path, step: int, run_dir: Path, records: list[dict] | None = None) -> int | None:
    """Tokens (patches) the model had trained on when `checkpoint` was saved; None if nothing says."""
    state = _read_json(checkpoint / TRAINER_STATE_NAME) or {}
    if state.get("tokens_seen") is not None:
        return int(state["tokens_seen"])
    if state.get("images_seen") is not None:
        config = _read_json(checkpoint_model_dir(checkpoint) / "config.json") or {}
        if config.get("image_size") and config.get("patch_size"):
            return int(state["images_seen"]) * (config["image_size"] // config["patch_size"]) ** 2
    records = _metrics_records(run_dir) if records is None else records
    for record in records:
        if record.get("step") == step and record.get("tokens_seen") is not None:
            return int(record["tokens_seen"])
    summary = _read_json(run_dir / "summary.json") or {}
    if summary.get("tokens_per_step"):
        return int(summary["tokens_per_step"]) * step
    return None


def validation_loss_curve(records: list[dict], entries: list[dict]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(x, val_loss, x_is_tokens) from metrics.jsonl records; steps are turned into tokens by
    interpolating the (step, tokens) pairs of training records and checkpoints when there are any."""
    val = sorted((r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None and "step" in r)
    pairs = {int(r["step"]): int(r["tokens_seen"]) for r in records if r.get("tokens_seen") is not None and "step" in r}
    pairs.update({e["step"]: e["tokens_seen"] for e in entries if e.get("tokens_seen") is not None})
    steps = np.array([s for s, _ in val], dtype=np.float64)
    losses = np.array([v for _, v in val], dtype=np.float64)
    if not pairs:
        return steps, losses, False
    known = sorted(pairs.items())
    return np.interp(steps, [0] + [s for s, _ in known], [0] + [t for _, t in known]), losses, True


def _load(model_dir: Path, run_dir: Path, device: str | None):
    from transformers import AutoImageProcessor, AutoModel

    import astropt_hf  # noqa: F401  (registers the Auto classes for local folders)

    model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=True)
    # Checkpoints saved mid-run may lack the processor; the run folder's is the same one.
    source = next((p for p in (model_dir, model_dir.parent, run_dir) if (p / "preprocessor_config.json").is_file()),
                  model_dir)  # fmt: skip
    processor = AutoImageProcessor.from_pretrained(str(source), trust_remote_code=True)
    return model.to(device or "cpu").eval(), processor


def _features(model_dir: Path, run_dir: Path, cache: Path, data, image_column: str, ids: np.ndarray,
              layers: list[int], options: CheckpointProbeOptions) -> dict[str, np.ndarray]:
    """{"embedding": (N, D), "layer_<k>": (N, D)} from the cache, or computed (one pass) and cached."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if np.array_equal(stored["ids"], ids) and all(f"layer_{k}" in stored for k in layers):
                return {name: stored[name] for name in stored.files if name != "ids"}
    from astropt_hf.downstream.embeddings import compute_embeddings
    from astropt_hf.downstream.layer_features import compute_layer_features, default_layer_number

    model, processor = _load(model_dir, run_dir, options.device)
    default = default_layer_number(model.config)
    needed = sorted(set(layers) | ({default} if default is not None else set()))
    by_layer = compute_layer_features(model, data, processor, needed, batch_size=options.batch_size,
                                      bf16=options.bf16, image_column=image_column)  # fmt: skip
    features = {f"layer_{k}": v for k, v in by_layer.items()}
    features["embedding"] = (by_layer[default] if default is not None else
                             compute_embeddings(model, data, processor, options.batch_size, bf16=options.bf16,
                                                image_column=image_column, progress=False))  # fmt: skip
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.tmp.npz")
    np.savez(tmp, ids=ids, **features)
    os.replace(tmp, cache)
    return features


def _covered(entry: dict | None, split: str, targets: Sequence[str], layers: list[int]) -> bool:
    if not entry or entry.get("split") != split or not all(t in entry.get("targets", {}) for t in targets):
        return False
    return all(str(k) in entry.get("layers", {}).get(t, {}) for t in targets for k in layers)


def _probe_entry(entry: dict, features: dict[str, np.ndarray], data, targets: Sequence[str], layers: list[int],
                 options: CheckpointProbeOptions) -> None:
    from astropt_hf.downstream.layer_probes import LayerProbeOptions, best_layers, probe_layer_features
    from astropt_hf.downstream.probes import run_probe_suite

    keep = np.all([np.isfinite(v).all(axis=1) for v in features.values()], axis=0)
    values = {t: np.asarray(data[t])[keep] for t in targets}
    suite = run_probe_suite({"astropt": features["embedding"][keep]}, values, n_folds=options.n_folds, seed=options.seed)
    entry.setdefault("targets", {}).update({t: suite.results["targets"][t]["astropt"] for t in targets})
    if layers:
        scores, _ = probe_layer_features({k: features[f"layer_{k}"][keep] for k in layers}, values,
                                         LayerProbeOptions(n_folds=options.n_folds, seed=options.seed))  # fmt: skip
        for target, by_layer in scores.items():
            entry.setdefault("layers", {}).setdefault(target, {}).update(by_layer)
        entry["best_layer"], _ = best_layers(entry["layers"])


def _write_entries(path: Path, entries: dict[int, dict]) -> list[dict]:
    ordered = [entries[step] for step in sorted(entries)]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(ordered, indent=2) + "\n")
    os.replace(tmp, path)
    return ordered


def probe_checkpoints(run_dir: str | os.PathLike, dataset, targets: Sequence[str],
                      options: CheckpointProbeOptions | None = None) -> CheckpointProbesResult:
    """Probe `targets` on every checkpoint of `run_dir`; resumable (see the module docstring).

    `dataset` is a dataset spec dict (opened on `options.split`), a `GalaxySource` or a map-style dataset.
    """
    from astropt_hf.downstream.layer_features import resolve_layers
    from astropt_hf.downstream.layer_probes import open_probe_dataset
    from astropt_hf.plotting.checkpoint_probes import plot_checkpoint_probes

    options = options or CheckpointProbeOptions()
    run_dir = Path(run_dir)
    checkpoints = find_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} holds no loadable checkpoint-<step> folders")
    data, image_column, id_column = open_probe_dataset(dataset, options.split)
    missing = [t for t in targets if t not in data.column_names]
    if missing or not targets:
        raise ValueError(f"targets {missing or list(targets)} are not columns of the dataset: {data.column_names}")
    ids = np.array([str(v) for v in data[id_column]] if id_column else [str(i) for i in range(len(data))])
    output_dir = Path(options.output_dir) if options.output_dir else run_dir / OUTPUT_SUBDIR
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / RESULTS_NAME
    entries = {int(e["step"]): e for e in (_read_json(json_path) or [])}
    records = _metrics_records(run_dir)
    split = str(options.split)
    computed = []
    for step, path in checkpoints:
        config = _read_json(checkpoint_model_dir(path) / "config.json")
        layers = [] if options.layers is None else resolve_layers(options.layers, config["num_hidden_layers"])
        entry = entries.get(step)
        if _covered(entry, split, targets, layers):
            continue
        if entry is None or entry.get("split") != split:
            entry = {"step": step, "tokens_seen": tokens_seen_at(path, step, run_dir, records),
                     "checkpoint": path.name, "split": split}  # fmt: skip
        cache = output_dir / "embeddings" / f"{path.name}-{split}.npz"
        features = _features(checkpoint_model_dir(path), run_dir, cache, data, image_column, ids, layers, options)
        _probe_entry(entry, features, data, targets, layers, options)
        entries[step] = entry
        computed.append(step)
        _write_entries(json_path, entries)
        logger.info("probed %s (%s tokens)", path.name, entry["tokens_seen"])
    ordered = _write_entries(json_path, entries)
    curve = validation_loss_curve(records, ordered)
    plot = plot_checkpoint_probes(ordered, output_dir / PLOT_NAME, targets, val_loss=curve)
    return CheckpointProbesResult(entries=ordered, json_path=json_path, plot_path=plot, computed_steps=computed)
