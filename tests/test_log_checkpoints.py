"""Log-spaced checkpoints: the schedule's steps, pruning that keeps every log-spaced checkpoint, a loadable
model/ folder in each, tokens seen in each trainer state, the resume check of the schedule, and
scripts/probe_checkpoints.py on a real tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from downstream_helpers import SYNTHETIC, dataset_flags, galaxy_cache_dir, load_script
from safetensors.torch import load_file

from astropt_hf.training import ConfigError, build_pretrain_args, run_pretraining
from astropt_hf.training.checkpointing import (
    COMPLETE_MARKER,
    MODEL_SUBFOLDER,
    RUN_SETTINGS_NAME,
    TRAINER_STATE_NAME,
    CheckpointSaveError,
    is_permanent_checkpoint,
    list_checkpoints,
    rotate_checkpoints,
    save_checkpoint,
)
from astropt_hf.training.save_schedule import (
    checkpoint_steps,
    is_log_checkpoint,
    log_spaced_steps,
    should_save,
)

TOKENS_PER_STEP = 8 * (16 // 4) ** 2  # batch of 8 tiny images of 16 patches


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(output_dir: Path, **overrides) -> dict:
    """A tiny run on the downstream tests' synthetic set (whose test split the probes read)."""
    settings = {
        "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "batch_size": 8, "synthetic_num_train": SYNTHETIC["num_train"],
        "synthetic_num_validation": SYNTHETIC["num_validation"], "synthetic_num_test": SYNTHETIC["num_test"],
        "data_cache_dir": str(galaxy_cache_dir()), "eval_batches": 1, "num_plot_images": 0, "log_steps": 1,
        "warmup_steps": 1, "mixed_precision": "no", "eval_steps": 5, "save_steps": 4, "max_steps": 10,
        "output_dir": str(output_dir),
    }  # fmt: skip
    settings.update(overrides)
    return run_pretraining(build_pretrain_args(settings))


def steps_of(output_dir: Path) -> list[int]:
    return [int(path.name.split("-")[1]) for path in list_checkpoints(output_dir)]


# ---------------------------------------------------------------------------------------- the schedule


def test_log_schedule_doubles_up_to_the_first_regular_save_then_follows_save_steps():
    assert checkpoint_steps(10, 4, "regular") == [4, 8, 10]
    assert checkpoint_steps(10, 4, "log") == [1, 2, 4, 8, 10]
    assert checkpoint_steps(1000, 100, "log") == [1, 2, 4, 8, 16, 32, 64, *range(100, 1001, 100)]
    assert checkpoint_steps(200, 0, "log") == [1, 2, 4, 8, 16, 32, 64, 128, 200]  # save_steps 0: only the end
    assert checkpoint_steps(6, 100, "log") == [1, 2, 4, 6]  # the run ends before the first regular save
    assert checkpoint_steps(8, 8, "log") == [1, 2, 4, 8] and checkpoint_steps(1, 4, "log") == [1]
    assert log_spaced_steps(1000, 100) == [1, 2, 4, 8, 16, 32, 64]
    # the first regular save and later powers of two are regular checkpoints, which save_total_limit prunes
    assert [s for s in range(1, 1001) if is_log_checkpoint(s, 1000, 100, "log")] == [1, 2, 4, 8, 16, 32, 64]
    assert not any(is_log_checkpoint(s, 1000, 100, "regular") for s in range(1, 1001))
    for schedule in ("regular", "log"):
        for max_steps, save_steps in ((10, 4), (37, 5), (64, 16), (9, 0), (3, 50)):
            expected = checkpoint_steps(max_steps, save_steps, schedule)
            assert [s for s in range(1, max_steps + 1) if should_save(s, max_steps, save_steps, schedule)] == expected
    with pytest.raises(ValueError, match="expected one of"):
        checkpoint_steps(10, 4, "linear")


def _fake_checkpoint(root: Path, step: int, permanent: bool) -> None:
    (root / f"checkpoint-{step}").mkdir(parents=True)
    (root / f"checkpoint-{step}" / COMPLETE_MARKER).write_text(json.dumps({"step": step, "permanent": permanent}))


def test_rotation_keeps_every_permanent_checkpoint_and_the_newest_regular_ones(tmp_path):
    for step in (1, 2, 4):
        _fake_checkpoint(tmp_path, step, permanent=True)
    for step in (8, 16, 24, 32):
        _fake_checkpoint(tmp_path, step, permanent=False)
    (tmp_path / "checkpoint-40").mkdir()
    (tmp_path / "checkpoint-40" / COMPLETE_MARKER).write_text("{}")  # saved before markers said "permanent"
    removed = rotate_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint-16", "checkpoint-24", "checkpoint-8"]
    assert steps_of(tmp_path) == [1, 2, 4, 32, 40]
    assert is_permanent_checkpoint(tmp_path / "checkpoint-2") and not is_permanent_checkpoint(tmp_path / "checkpoint-40")
    assert rotate_checkpoints(tmp_path, keep=1) == [tmp_path / "checkpoint-32"]
    assert steps_of(tmp_path) == [1, 2, 4, 40]


def test_a_failed_model_export_fails_the_save_and_keeps_the_earlier_checkpoint(tmp_path):
    from accelerate import Accelerator

    from astropt_hf import AstroPTConfig, AstroPTForPreTraining
    from astropt_hf.training.run_setup import reset_accelerate_state

    def no_room(folder: Path) -> str:
        return f"could not write the model in {folder} (OSError: [Errno 28] No space left on device)"

    try:
        accelerator = Accelerator(cpu=True)
        model = accelerator.prepare(AstroPTForPreTraining(AstroPTConfig(image_size=16, patch_size=4, hidden_size=32,
                                                                        num_hidden_layers=1, num_attention_heads=4)))
        save_checkpoint(accelerator, tmp_path, 1, {"step": 1}, {"epoch": 0}, total_limit=1, permanent=True)
        with pytest.raises(CheckpointSaveError, match=r"could not save checkpoint-2 .*No space left.*checkpoint-1, is kept"):
            save_checkpoint(accelerator, tmp_path, 2, {"step": 2}, {"epoch": 0}, total_limit=1, export_model=no_room)
    finally:
        reset_accelerate_state()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]  # no .tmp left
    assert is_permanent_checkpoint(tmp_path / "checkpoint-1") and not (tmp_path / "checkpoint-1" / MODEL_SUBFOLDER).exists()
    del model


# ---------------------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def log_run(tmp_path_factory) -> Path:
    """10 steps, save_steps 4, save_total_limit 1: log-spaced 1 and 2, regular 4 and 8 pruned, final 10."""
    out = tmp_path_factory.mktemp("log") / "run"
    summary = train(out, save_schedule="log", save_total_limit=1)
    assert summary["status"] == "completed"
    return out


def test_log_checkpoints_survive_pruning_and_each_loads_as_the_model_of_its_step(log_run):
    from transformers import AutoImageProcessor, AutoModelForPreTraining

    assert steps_of(log_run) == [1, 2, 10]
    for checkpoint in list_checkpoints(log_run):
        step = int(checkpoint.name.split("-")[1])
        assert is_permanent_checkpoint(checkpoint) == (step in (1, 2))
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
        assert state["step"] == step and state["images_seen"] == 8 * step
        assert state["tokens_seen"] == TOKENS_PER_STEP * step
        model_dir = checkpoint / MODEL_SUBFOLDER
        model = AutoModelForPreTraining.from_pretrained(model_dir, trust_remote_code=True)
        assert AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True).image_size == 16
        # the exported model is the one the resumable state holds at that step
        resumable = load_file(checkpoint / "model.safetensors")
        exported = model.state_dict()
        assert set(resumable) <= set(exported)
        assert all(torch.equal(exported[key], resumable[key]) for key in resumable)
    first = load_file(log_run / "checkpoint-1" / MODEL_SUBFOLDER / "model.safetensors")
    last = load_file(log_run / "checkpoint-10" / MODEL_SUBFOLDER / "model.safetensors")
    final = load_file(log_run / "model.safetensors")
    assert all(torch.equal(last[key], final[key]) for key in final)
    assert not all(torch.equal(first[key], final[key]) for key in final)  # the checkpoints are of other steps


def test_regular_checkpoints_hold_a_model_only_when_asked(tmp_path):
    train(tmp_path / "plain", max_steps=2, save_steps=1)
    assert steps_of(tmp_path / "plain") == [1, 2]
    assert not any((c / MODEL_SUBFOLDER).exists() for c in list_checkpoints(tmp_path / "plain"))
    assert not any(is_permanent_checkpoint(c) for c in list_checkpoints(tmp_path / "plain"))
    train(tmp_path / "models", max_steps=2, save_steps=1, save_model_in_checkpoints=True)
    assert all((c / MODEL_SUBFOLDER / "config.json").is_file() for c in list_checkpoints(tmp_path / "models"))


def test_the_schedule_defines_the_run_and_older_checkpoints_resume_with_the_regular_one(log_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(log_run, out)
    with pytest.raises(ConfigError, match=r"save_schedule: 'log' -> 'regular'"):
        train(out, max_steps=12, lr_decay_steps=10, resume_from_checkpoint="latest")
    # a checkpoint recorded before these keys existed did what their defaults do
    older = tmp_path / "older"
    train(older, max_steps=2, save_steps=2)
    recorded = list_checkpoints(older)[-1] / RUN_SETTINGS_NAME
    settings = json.loads(recorded.read_text())
    assert settings["save_schedule"] == "regular" and settings["max_image_side_factor"] == 16
    del settings["save_schedule"], settings["max_image_side_factor"]
    recorded.write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match=r"max_image_side_factor: None -> 2"):
        train(older, max_steps=3, lr_decay_steps=2, resume_from_checkpoint="latest", max_image_side_factor=2)
    resumed = train(older, max_steps=3, lr_decay_steps=2, resume_from_checkpoint="latest")
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("checkpoint-2")


def test_probe_checkpoints_script_probes_every_log_checkpoint_of_a_run(log_run, capsys):
    script = load_script("probe_checkpoints")
    assert script.main(["--run", str(log_run), "--targets", "redshift,mag_r", "--split", "test", "--n_folds", "3",
                        "--batch_size", "8", "--device", "cpu", *dataset_flags()]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"| 1 | {TOKENS_PER_STEP} |" in printed and "probed 3 checkpoint(s), reused 0" in printed
    entries = json.loads((log_run / "checkpoint_probes" / "checkpoint_probes.json").read_text())
    assert [e["step"] for e in entries] == [1, 2, 10]
    assert [e["tokens_seen"] for e in entries] == [TOKENS_PER_STEP * s for s in (1, 2, 10)]  # from trainer_state
    for entry in entries:
        assert set(entry["targets"]) == {"redshift", "mag_r"} and entry["targets"]["redshift"]["n_samples"] == 24
    assert (log_run / "checkpoint_probes" / "checkpoint_probes.png").read_bytes()[:4] == b"\x89PNG"
