"""Attentive probe: learns what mean pooling destroys; classification; the workflow writes beside "astropt"."""

import json

import numpy as np
import pytest
import torch

from astropt_hf.downstream.attentive_probe import (
    AttentivePooling,
    AttentiveProbeOptions,
    AttentiveWorkflowOptions,
    attentive_probe_cv,
    run_attentive_probes,
)
from astropt_hf.downstream.probes import linear_probe_cv

FAST = AttentiveProbeOptions(learning_rate=3e-3, batch_size=64, max_epochs=150, patience=15, device="cpu")


def _one_patch_features(n=360, positions=8, content=8, seed=0):
    """(N, T, D) features: each token is its content plus a one-hot position code.

    The content is centred over the tokens of each row, so mean pooling leaves only the (constant)
    position codes: the mean-pooled features carry nothing about any row. The target is one content
    value of one patch position.
    """
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, positions, content))
    values -= values.mean(axis=1, keepdims=True)
    codes = np.broadcast_to(3.0 * np.eye(positions), (n, positions, positions))
    features = np.concatenate([values, codes], axis=2).astype(np.float32)
    return features, values[:, 3, 0]


def test_attentive_probe_reads_one_patch_that_mean_pooling_destroys():
    features, target = _one_patch_features()
    linear = linear_probe_cv(features.mean(axis=1), target, n_folds=3)
    attentive = attentive_probe_cv(features, target, task="regression", n_folds=3, options=FAST)
    assert linear.metrics["r2"] < 0.05
    assert attentive.metrics["r2"] > 0.8, attentive.metrics
    assert attentive.predictions.shape == target.shape and set(attentive.metrics) == {"r2", "mae"}


def test_classification_and_missing_targets():
    features, value = _one_patch_features(n=300, seed=1)
    labels = np.where(value > 0, "pos", "neg").astype(object)
    labels[:6] = None  # missing labels are dropped and counted
    result = attentive_probe_cv(features, labels, n_folds=3, options=FAST)
    assert result.task == "classification" and result.n_dropped == 6 and result.true.size == 294
    assert result.metrics["accuracy"] > 0.75 and set(result.predictions) <= {"pos", "neg"}
    kept = labels != None  # noqa: E711  (elementwise on an object array)
    linear = linear_probe_cv(features[kept].mean(axis=1), labels[kept].astype(str), task="classification", n_folds=3)
    assert linear.metrics["accuracy"] < 0.65  # the mean-pooled features cannot tell the classes apart


def test_pooling_module_shapes_and_queries():
    probe = AttentivePooling(dim=12, num_outputs=3, num_queries=4)
    assert probe.attention.num_heads == 4  # 8 does not divide 12
    assert probe(torch.randn(5, 7, 12)).shape == (5, 3)
    with pytest.raises(ValueError, match="patch_features"):
        attentive_probe_cv(np.zeros((4, 3)), np.zeros(4))


def test_workflow_reports_attentive_beside_astropt(tmp_path):
    from downstream_helpers import save_tiny_model, tiny_split

    model = save_tiny_model(tmp_path / "model", seed=1)
    results = tmp_path / "out" / "probe_results.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"targets": {"redshift": {"astropt": {"r2": 0.2}}}}))
    options = AttentiveWorkflowOptions(n_folds=3, probe=AttentiveProbeOptions(max_epochs=5, patience=2, device="cpu"))
    scores = run_attentive_probes(model, tiny_split("test"), ["redshift"], tmp_path / "out", options=options)
    stored = json.loads(results.read_text())["targets"]["redshift"]
    assert stored["astropt"] == {"r2": 0.2}
    assert set(stored) == {"astropt", "attentive", "attentive_random_init"}
    assert stored["attentive"]["n_samples"] == 24 and stored["attentive"]["layer"] == 2
    assert {"r2", "mae", "sigma_nmad", "outlier_fraction"} <= set(stored["attentive"])
    assert scores["redshift"]["attentive"] == stored["attentive"]
