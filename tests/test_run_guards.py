"""Guards of a pretraining run: one run per output folder (a lock, stale locks of dead processes taken over),
resume only with the recorded settings, divergence and failed saves ending in a failed summary with the last
good checkpoint kept, and leftovers of killed writes removed. Tiny in-process runs, a few seconds each."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from astropt_hf.training import ConfigError, build_pretrain_args, run_pretraining
from astropt_hf.training.checkpointing import (
    COMPLETE_MARKER,
    KEYS_THAT_MAY_CHANGE_ON_RESUME,
    RUN_SETTINGS_NAME,
    CheckpointSaveError,
    list_checkpoints,
    save_checkpoint,
)
from astropt_hf.training.run_lock import OWNER_NAME, OutputDirLock, OutputDirLocked

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory) -> str:
    from astropt_hf.data import load_synthetic_galaxies

    cache = tmp_path_factory.mktemp("synthetic")
    load_synthetic_galaxies(num_train=48, num_validation=16, num_test=0, image_size=16, cache_dir=cache, num_proc=1)
    return str(cache)


def tiny(cache: str, output_dir: Path, **overrides) -> dict:
    settings = {
        "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "batch_size": 8, "synthetic_num_train": 48, "synthetic_num_validation": 16, "synthetic_num_test": 0,
        "data_cache_dir": cache, "eval_batches": 1, "num_plot_images": 0, "log_steps": 1, "warmup_steps": 1,
        "learning_rate": 2e-3, "mixed_precision": "no", "eval_steps": 1000, "save_steps": 0, "max_steps": 2,
        "output_dir": str(output_dir),
    }
    settings.update(overrides)
    return settings


def train(cache: str, output_dir: Path, **overrides) -> dict:
    return run_pretraining(build_pretrain_args(tiny(cache, output_dir, **overrides)))


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- one run per folder

HOLD_LOCK = textwrap.dedent("""
    import os, signal, sys, time
    from astropt_hf.training.run_lock import OutputDirLock
    lock = OutputDirLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # no release, as after a kill -9
    time.sleep(120)
""")


def hold_lock(folder: Path, then: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), then], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout.readline().strip() == "locked", process.communicate()[0]
    return process


def test_a_run_in_a_folder_that_a_live_run_holds_is_refused_naming_it_and_touches_nothing(synthetic_cache, tmp_path):
    out = tmp_path / "run"
    train(synthetic_cache, out)
    holder = hold_lock(out, "stay")
    before = folder_snapshot(out)
    try:
        for overrides in ({"overwrite_output_dir": True}, {"resume_from_checkpoint": "latest", "max_steps": 4}):
            with pytest.raises(OutputDirLocked, match=rf"in use by another run \(PID {holder.pid} on host "):
                train(synthetic_cache, out, **overrides)
        assert folder_snapshot(out) == before  # a fresh start did not clean up the live run's folder
    finally:
        holder.kill()
        holder.wait()
    assert issubclass(OutputDirLocked, ConfigError)  # the command line shows it as one line, exit code 2


def test_the_lock_of_a_killed_run_is_taken_over_with_a_log_line(synthetic_cache, tmp_path, caplog):
    out = tmp_path / "run"
    train(synthetic_cache, out, save_steps=1)
    dead = hold_lock(out, "die")
    dead.wait()
    assert json.loads((out / OWNER_NAME).read_text())["pid"] == dead.pid  # it left its owner file behind
    with caplog.at_level(logging.WARNING, logger="astropt_hf.training.run_lock"):
        summary = train(synthetic_cache, out, resume_from_checkpoint="latest", max_steps=3, lr_decay_steps=2)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert f"taking over the lock of an earlier run (PID {dead.pid} on host" in caplog.text
    assert not (out / OWNER_NAME).exists()  # released at the end of the run


def test_an_owner_that_still_runs_on_this_host_is_refused_even_if_the_file_lock_was_free(tmp_path):
    """Where the file system's locks do not hold across processes, the owner file still stops a second run."""
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (tmp_path / OWNER_NAME).write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname()}))
        with pytest.raises(OutputDirLocked, match=rf"PID {alive.pid} .*cannot be trusted"):
            OutputDirLock(tmp_path).acquire()
    finally:
        alive.kill()
        alive.wait()
    with OutputDirLock(tmp_path) as lock:  # now dead: taken over
        assert lock.held and json.loads((tmp_path / OWNER_NAME).read_text())["pid"] == os.getpid()


# ---------------------------------------------------------------------------------------- resume checks


def test_recorded_settings_leave_out_what_may_change_and_keep_what_defines_the_run():
    from astropt_hf.training import build_pretrain_args
    from astropt_hf.training.checkpointing import run_settings

    args = build_pretrain_args({"max_steps": 40, "eval_steps": 5, "num_workers": 2, "seed": 3})
    recorded = run_settings(args.to_flat_dict(), args.resolved_lr_decay_steps(), args.model_config(),
                            args.image_processor())
    assert recorded["lr_decay_steps"] == 40 and recorded["seed"] == 3 and recorded["betas"] == [0.9, 0.95]
    assert recorded["patch_order"] == "spiral" and recorded["asinh_scale"] == 0.02  # defaults, resolved
    assert not set(recorded) & KEYS_THAT_MAY_CHANGE_ON_RESUME
    streaming = build_pretrain_args({"streaming": True, "num_workers": 2})
    # a stream's order depends on how its shards are dealt to the workers
    assert run_settings(streaming.to_flat_dict(), 300)["num_workers"] == 2


@pytest.fixture(scope="module")
def two_step_run(synthetic_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    train(synthetic_cache, out, eval_steps=2)
    return out


def resume_copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


def test_a_resume_with_other_defining_settings_is_refused_naming_each(synthetic_cache, two_step_run, tmp_path):
    out = resume_copy(two_step_run, tmp_path)
    before = folder_snapshot(out)
    with pytest.raises(ConfigError) as refused:
        train(synthetic_cache, out, resume_from_checkpoint="latest", patch_norm="none", seed=7, batch_size=4)
    message = str(refused.value)
    for detail in ("patch_norm: 'per_image' -> 'none'", "seed: 1337 -> 7", "batch_size: 8 -> 4"):
        assert detail in message, message
    with pytest.raises(ConfigError, match=r"hidden_size: 32 -> 64") as refused:  # not torch's size mismatch
        train(synthetic_cache, out, resume_from_checkpoint="latest", hidden_size=64)
    assert "size mismatch" not in str(refused.value)
    # max_steps with lr_decay_steps null would stretch the cosine: refused, naming the resolved decay
    with pytest.raises(ConfigError, match=r"lr_decay_steps: 2 -> 4"):
        train(synthetic_cache, out, resume_from_checkpoint="latest", max_steps=4)
    assert folder_snapshot(out) == before


def test_a_resume_with_a_longer_max_steps_equals_the_uninterrupted_run(synthetic_cache, two_step_run, tmp_path):
    out = resume_copy(two_step_run, tmp_path)
    # keys that may change do change here; the learning-rate schedule stays (decay pinned at step 2), and a
    # default now written out (patch_order) is no change
    resumed = train(synthetic_cache, out, resume_from_checkpoint="latest", max_steps=4, lr_decay_steps=2,
                    eval_steps=2, log_steps=2, save_total_limit=1, run_name="longer", patch_order="spiral")
    assert resumed["status"] == "completed" and resumed["steps"] == 4
    straight = tmp_path / "straight"
    train(synthetic_cache, straight, max_steps=4, lr_decay_steps=2, eval_steps=2)
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run ended elsewhere than the uninterrupted one"
    recorded = json.loads((list_checkpoints(out)[-1] / RUN_SETTINGS_NAME).read_text())
    assert recorded["lr_decay_steps"] == 2 and recorded["patch_order"] == "spiral" and recorded["seed"] == 1337
    assert not set(recorded) & KEYS_THAT_MAY_CHANGE_ON_RESUME


def test_a_checkpoint_without_recorded_settings_resumes_with_a_warning(synthetic_cache, two_step_run, tmp_path,
                                                                       caplog):
    out = resume_copy(two_step_run, tmp_path)
    (list_checkpoints(out)[-1] / RUN_SETTINGS_NAME).unlink()  # as saved before settings were recorded
    with caplog.at_level(logging.WARNING, logger="astropt_hf.training.loop"):
        summary = train(synthetic_cache, out, resume_from_checkpoint="latest", max_steps=3, lr_decay_steps=2)
    assert summary["status"] == "completed" and "records no run settings" in caplog.text


# ---------------------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("save_steps", [1, 0], ids=["caught-before-a-save", "caught-by-the-loss"])
def test_a_diverging_run_stops_failed_and_keeps_the_last_good_checkpoint(synthetic_cache, tmp_path, save_steps):
    out = tmp_path / "run"
    summary = train(synthetic_cache, out, learning_rate=1e6, grad_clip=0.0, warmup_steps=0, max_steps=50,
                    save_steps=save_steps, eval_steps=2)
    assert summary["status"] == "failed" and summary["failed_step"] <= 5, summary
    assert "non-finite" in summary["reason"] or "became nan" in summary["reason"] or "became inf" in summary["reason"]
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    assert not (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*.tmp"))
    for checkpoint in list_checkpoints(out):  # only checkpoints from before the divergence, all finite
        assert int(checkpoint.name.split("-")[1]) < summary["failed_step"]
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())
    if save_steps:
        assert summary["last_checkpoint"].endswith("checkpoint-1")


def test_the_command_line_exits_nonzero_on_a_failed_run(synthetic_cache, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_script", REPO / "scripts" / "pretrain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = []
    for key, value in tiny(synthetic_cache, tmp_path / "run", learning_rate=1e6, grad_clip=0.0, max_steps=30).items():
        argv += [f"--{key}", str(value)]
    assert script.main(argv) == 1
    assert "Done: failed after" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- a full disk


def _disk_full_on(monkeypatch, fragment: str) -> None:
    """torch.save (optimizer, scheduler, RNG files of a checkpoint) fails as on a full disk for paths
    containing `fragment`."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if fragment in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_failed_checkpoint_save_leaves_the_previous_one_intact(tiny_config, tmp_path, monkeypatch):
    from accelerate import Accelerator

    from astropt_hf import AstroPTForPreTraining
    from astropt_hf.training.run_setup import reset_accelerate_state

    try:
        accelerator = Accelerator(cpu=True)
        model = AstroPTForPreTraining(tiny_config())
        optimizer = torch.optim.AdamW(model.parameters())
        model, optimizer = accelerator.prepare(model, optimizer)
        save_checkpoint(accelerator, tmp_path, 1, {"step": 1}, {"epoch": 0}, total_limit=1, settings={"seed": 0})
        before = folder_snapshot(tmp_path / "checkpoint-1")
        _disk_full_on(monkeypatch, "checkpoint-2")
        with pytest.raises(CheckpointSaveError, match=r"could not save checkpoint-2 .*No space left on device.*"
                                                      r"checkpoint-1, is kept"):
            save_checkpoint(accelerator, tmp_path, 2, {"step": 2}, {"epoch": 0}, total_limit=1)
    finally:
        reset_accelerate_state()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # no .tmp left, nothing rotated out
    assert folder_snapshot(tmp_path / "checkpoint-1") == before
    assert (tmp_path / "checkpoint-1" / COMPLETE_MARKER).is_file()


def test_a_run_whose_save_fails_ends_failed_with_a_summary(synthetic_cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _disk_full_on(monkeypatch, "checkpoint-4")
    summary = train(synthetic_cache, out, max_steps=6, save_steps=2)
    assert summary["status"] == "failed" and summary["failed_step"] == 4
    assert "No space left on device" in summary["reason"] and summary["last_checkpoint"].endswith("checkpoint-2")
    assert json.loads((out / "summary.json").read_text())["reason"] == summary["reason"]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and not list(out.glob("checkpoint-*.tmp"))
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()  # the disk has room again: the run resumes from the checkpoint it kept
    resumed = train(synthetic_cache, out, max_steps=6, save_steps=2, resume_from_checkpoint="latest")
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("checkpoint-2")


# ---------------------------------------------------------------------------------------- killed writes


def test_a_killed_embedding_merge_leaves_no_temporary_file_after_the_next_run(tmp_path):
    from downstream_helpers import save_tiny_model, tiny_split

    from astropt_hf import AstroPTForPreTraining, AstroPTImageProcessor
    from astropt_hf.downstream.embeddings import ExtractionOptions, extract_embeddings
    from astropt_hf.run_files import temporary_path

    folder = save_tiny_model(tmp_path / "model")
    model, processor = AstroPTForPreTraining.from_pretrained(folder), AstroPTImageProcessor.from_pretrained(folder)
    output = tmp_path / "embeddings.parquet"
    leftover = temporary_path(output)  # what a merge killed mid-write leaves
    leftover.write_bytes(b"PAR1 half a file")
    unrelated = tmp_path / f".other.parquet.{leftover.name.split('.')[-2]}.tmp"
    unrelated.write_bytes(b"")
    extract_embeddings(model, tiny_split("test").dataset, processor, output,
                       ExtractionOptions(batch_size=8, progress=False))
    assert output.is_file() and not leftover.exists()
    assert unrelated.exists()  # another output's temporary is not this run's to delete
