"""Probes across checkpoints: every checkpoint probed once, tokens seen, resume without recomputing, CLI."""

import json
import shutil

import pytest
from downstream_helpers import SYNTHETIC, dataset_flags, galaxy_cache_dir, load_script, save_tiny_model

from astropt_hf.downstream.checkpoint_probes import (
    CheckpointProbeOptions,
    find_checkpoints,
    probe_checkpoints,
    validation_loss_curve,
)

PATCHES = (16 // 4) ** 2  # the tiny models' patches per image


def _spec():
    return {"dataset": "synthetic", "split": "test", "data_cache_dir": str(galaxy_cache_dir()), "synthetic": SYNTHETIC}


def _build_run(run):
    """checkpoint-1 and -2 as plain model folders, checkpoint-4 with a model/ subfolder, and a .tmp leftover."""
    for step, seed in ((1, 1), (2, 2)):
        save_tiny_model(run / f"checkpoint-{step}", seed=seed)
    save_tiny_model(run / "checkpoint-4" / "model", seed=4)
    (run / "checkpoint-1" / "trainer_state.json").write_text(json.dumps({"step": 1, "images_seen": 8}))
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"step": 2, "tokens_seen": 999}))
    (run / "checkpoint-6.tmp").mkdir()  # an interrupted save is never probed
    records = [{"step": 1, "train_loss": 1.0, "tokens_seen": 8 * PATCHES}, {"step": 2, "val_loss": 0.9},
               {"step": 4, "train_loss": 0.7, "tokens_seen": 32 * PATCHES}, {"step": 4, "val_loss": 0.6}]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _drop_weights(run):
    for weights in run.glob("checkpoint-*/**/model.safetensors"):
        weights.unlink()


def test_probes_every_checkpoint_then_resumes_without_recomputing(tmp_path):
    run = _build_run(tmp_path / "run")
    assert [step for step, _ in find_checkpoints(run)] == [1, 2, 4]
    options = CheckpointProbeOptions(split="test", layers="0,2", n_folds=3, batch_size=8)
    first = probe_checkpoints(run, _spec(), ["redshift"], options)
    assert first.computed_steps == [1, 2, 4]
    stored = json.loads(first.json_path.read_text())
    assert [e["step"] for e in stored] == [1, 2, 4]
    # tokens: images_seen x patches, trainer_state's tokens_seen, then the metrics.jsonl record
    assert [e["tokens_seen"] for e in stored] == [8 * PATCHES, 999, 32 * PATCHES]
    assert {"r2", "mae", "sigma_nmad", "n_samples"} <= set(stored[0]["targets"]["redshift"])
    assert set(stored[2]["layers"]["redshift"]) == {"0", "2"} and stored[2]["best_layer"]["redshift"] in (0, 2)
    # different weights give different probes (the cache is per checkpoint)
    assert stored[0]["targets"]["redshift"]["r2"] != stored[1]["targets"]["redshift"]["r2"]
    assert first.plot_path.read_bytes()[:4] == b"\x89PNG"

    # Without the weights, anything that reloaded a model would fail: a rerun must reuse everything.
    _drop_weights(run)
    second = probe_checkpoints(run, _spec(), ["redshift"], options)
    assert second.computed_steps == [] and second.entries == stored
    # a new target is probed from the cached embeddings; the earlier target keeps its scores
    third = probe_checkpoints(run, _spec(), ["redshift", "mag_r"], options)
    assert third.computed_steps == [1, 2, 4]
    assert [e["targets"]["redshift"] for e in third.entries] == [e["targets"]["redshift"] for e in stored]
    assert all("mag_r" in e["targets"] and "mag_r" in e["layers"] for e in third.entries)
    # a new checkpoint is the only one embedded
    save_tiny_model(run / "checkpoint-8", seed=8)
    fourth = probe_checkpoints(run, _spec(), ["redshift", "mag_r"], options)
    assert fourth.computed_steps == [8] and fourth.entries[-1]["tokens_seen"] is None


def test_validation_loss_is_placed_on_the_token_axis():
    records = [{"step": 10, "tokens_seen": 1000}, {"step": 20, "val_loss": 0.5}, {"step": 30, "tokens_seen": 3000}]
    x, loss, tokens = validation_loss_curve(records, [])
    assert tokens and x.tolist() == [2000.0] and loss.tolist() == [0.5]
    x, _, tokens = validation_loss_curve([{"step": 20, "val_loss": 0.5}], [])
    assert not tokens and x.tolist() == [20.0]


def test_cli_writes_json_and_plot_and_resumes(tmp_path, capsys):
    run = _build_run(tmp_path / "run")
    shutil.rmtree(run / "checkpoint-2")
    script = load_script("probe_checkpoints")
    argv = ["--run", str(run), "--targets", "redshift,mag_r", "--split", "test", "--layers", "all", "--n_folds", "3",
            *dataset_flags()]  # fmt: skip
    assert script.main(argv) == 0
    assert "probed 2 checkpoint(s), reused 0" in capsys.readouterr().out
    stored = json.loads((run / "checkpoint_probes" / "checkpoint_probes.json").read_text())
    assert [e["step"] for e in stored] == [1, 4] and set(stored[0]["layers"]["mag_r"]) == {"0", "1", "2"}
    assert len(list((run / "checkpoint_probes" / "embeddings").glob("*.npz"))) == 2
    assert script.main(argv) == 0
    assert "probed 0 checkpoint(s), reused 2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="does not exist"):
        script.main(["--run", str(tmp_path / "nowhere"), "--targets", "redshift"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no loadable checkpoint"):
        script.main(["--run", str(tmp_path / "empty"), "--targets", "redshift"])


def test_missing_target_is_named(tmp_path):
    run = tmp_path / "run"
    save_tiny_model(run / "checkpoint-1")
    with pytest.raises(ValueError, match="redshfit"):
        probe_checkpoints(run, _spec(), ["redshfit"], CheckpointProbeOptions(n_folds=3))
