"""End-to-end pretraining runs with a tiny model on tiny synthetic sets: the command line through
`accelerate launch`, exact resume after SIGTERM and after SIGKILL, one run per folder, two CPU processes on
one machine and on two (loopback) machines, corrupt files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from launching import free_port
from safetensors.torch import load_file

from astropt_hf.training import ConfigError, parse_pretrain_args, run_pretraining
from astropt_hf.training.checkpointing import MODEL_SUBFOLDER, is_permanent_checkpoint, list_checkpoints
from astropt_hf.training.run_lock import OWNER_NAME, OutputDirLocked
from astropt_hf.training.save_schedule import checkpoint_steps

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "pretrain.py"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]




@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory) -> str:
    """A tiny synthetic set (16px), generated once for this module."""
    from astropt_hf.data import load_synthetic_galaxies

    cache = tmp_path_factory.mktemp("synthetic")
    load_synthetic_galaxies(num_train=96, num_validation=32, num_test=0, image_size=16, cache_dir=cache, num_proc=1)
    return str(cache)


def tiny_args(cache: str, output_dir: Path, **overrides) -> list[str]:
    settings = {
        "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "batch_size": 8, "synthetic_num_train": 96, "synthetic_num_validation": 32, "synthetic_num_test": 0,
        "data_cache_dir": cache, "eval_batches": 2, "num_plot_images": 4, "log_steps": 1, "warmup_steps": 5,
        "learning_rate": 2e-3, "output_dir": str(output_dir),
    }
    settings.update(overrides)
    argv = []
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv


def subprocess_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def assert_same_weights(dir_a: Path, dir_b: Path, atol: float = 1e-6) -> None:
    a, b = load_file(dir_a / "model.safetensors"), load_file(dir_b / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"


def wait_for(condition, process: subprocess.Popen, timeout: float = 240.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"training ended (rc {process.returncode}) before {what}:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def logged_step(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return -1
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps, default=-1)


# ---------------------------------------------------------------------------------------- the main job


def test_default_command_line_run_writes_a_loadable_model_and_learns(synthetic_cache, tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
               *tiny_args(synthetic_cache, out, max_steps=40, eval_steps=20)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tokens per step" in result.stdout and "Done: completed after 40 steps" in result.stdout

    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "configuration_astropt.py",
                 "modeling_astropt.py", "image_processing_astropt.py", "README.md", "metrics.jsonl",
                 "summary.json", "loss.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "eval").iterdir()) == [
        f"predictions-step{s:06d}.png" for s in (20, 40)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["status"] == "completed" and summary["skipped_samples"] == 0
    assert summary["tokens_seen"] == 40 * 8 * 16 and summary["wall_seconds"] > 0
    assert summary["num_processes"] == 1
    # data preparation (loading or generating the galaxies) and training are timed apart
    assert summary["data_seconds"] > 0 and summary["train_seconds"] > 0
    assert summary["data_seconds"] + summary["train_seconds"] == pytest.approx(summary["wall_seconds"])
    assert summary["objective"] == "next_patch" and summary["attention_pattern"] == "causal"
    records = read_metrics(out)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    train = [r for r in records if "train_loss" in r]
    assert len(val) == 2 and len(train) == 40 and all("step" in r for r in records)
    assert val[-1] < val[0], val
    assert summary["final_val_loss"] == pytest.approx(val[-1]) and summary["first_val_loss"] == pytest.approx(val[0])
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and "| optimizer steps | 40 |" in card

    # The checkpoint loads as remote code in a fresh process, from its own files.
    probe = (
        "import sys, torch\n"
        "from transformers import AutoModel, AutoImageProcessor\n"
        f"path = {str(out)!r}\n"
        "model = AutoModel.from_pretrained(path, trust_remote_code=True)\n"
        "processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        "pixels = processor([torch.rand(3, 16, 16).numpy()], return_tensors='pt')['pixel_values']\n"
        "print(tuple(model.get_image_embeddings(pixels).shape))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], env=subprocess_env(), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip().endswith("(1, 32)")

    with pytest.raises(ConfigError, match="already holds a run"):  # no silent mixing of two runs
        run_pretraining(parse_pretrain_args(tiny_args(synthetic_cache, out, max_steps=2)))


# ---------------------------------------------------------------------------------------- exact resume

RESUME_STEPS = 200


@pytest.fixture(scope="module")
def reference_run(synthetic_cache, tmp_path_factory) -> Path:
    """An uninterrupted run that the interrupted-and-resumed ones must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_pretraining(parse_pretrain_args(tiny_args(
        synthetic_cache, out, max_steps=RESUME_STEPS, eval_steps=1000, save_steps=0, gradient_accumulation_steps=2,
        num_plot_images=0)))
    return out


def _start_training(synthetic_cache: str, out: Path, **overrides) -> subprocess.Popen:
    argv = tiny_args(synthetic_cache, out, max_steps=RESUME_STEPS, eval_steps=1000, gradient_accumulation_steps=2,
                     num_plot_images=0, **overrides)
    return subprocess.Popen([sys.executable, str(SCRIPT), *argv], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


def _resume(synthetic_cache: str, out: Path, **overrides) -> dict:
    return run_pretraining(parse_pretrain_args(tiny_args(
        synthetic_cache, out, max_steps=RESUME_STEPS, eval_steps=1000, gradient_accumulation_steps=2,
        num_plot_images=0, resume_from_checkpoint="latest", **overrides)))


def test_sigterm_saves_and_exits_then_resume_equals_uninterrupted(synthetic_cache, reference_run, tmp_path):
    out = tmp_path / "run"
    process = _start_training(synthetic_cache, out, save_steps=0)
    wait_for(lambda: logged_step(out) >= 5, process, what="step 5")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    stopped = summary["steps"]
    assert summary["status"] == "interrupted" and 5 <= stopped < RESUME_STEPS, summary
    assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-{stopped}"]
    assert not (out / "model.safetensors").exists()  # no final model from an interrupted run

    resumed = _resume(synthetic_cache, out, save_steps=0)
    assert resumed["status"] == "completed" and resumed["steps"] == RESUME_STEPS
    assert resumed["resumed_from"].endswith(f"checkpoint-{stopped}")
    assert_same_weights(out, reference_run)
    reference = {r["step"]: r for r in read_metrics(reference_run) if "train_loss" in r}
    for record in read_metrics(out):
        if "train_loss" in record:
            assert record["train_loss"] == pytest.approx(reference[record["step"]]["train_loss"], abs=1e-6)
    assert [r["step"] for r in read_metrics(out) if "train_loss" in r] == sorted(reference)
    assert resumed["tokens_seen"] == json.loads((reference_run / "summary.json").read_text())["tokens_seen"]


def test_sigkill_mid_run_resumes_from_the_last_complete_checkpoint(synthetic_cache, reference_run, tmp_path):
    out = tmp_path / "run"
    process = _start_training(synthetic_cache, out, save_steps=20)
    wait_for(lambda: any(p.name == "checkpoint-40" for p in list_checkpoints(out)), process, what="checkpoint-40")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()  # it really died mid-run
    assert json.loads((out / OWNER_NAME).read_text())["pid"] == process.pid  # and left its lock's owner file
    last_complete = list_checkpoints(out)[-1]
    assert int(last_complete.name.split("-")[1]) >= 40

    resumed = _resume(synthetic_cache, out, save_steps=20)  # the dead run's lock is taken over
    assert not (out / OWNER_NAME).exists()
    assert resumed["resumed_from"] == str(last_complete)
    assert resumed["status"] == "completed" and resumed["steps"] == RESUME_STEPS
    assert not list(out.glob("checkpoint-*.tmp"))
    assert_same_weights(out, reference_run)


def test_a_second_run_in_the_folder_of_a_live_run_is_refused_and_leaves_it_alone(synthetic_cache, tmp_path):
    out = tmp_path / "run"
    process = _start_training(synthetic_cache, out, save_steps=20)
    wait_for(lambda: any(p.name == "checkpoint-20" for p in list_checkpoints(out)), process, what="checkpoint-20")
    for overrides in ({"overwrite_output_dir": "true"}, {"resume_from_checkpoint": "latest"}):
        with pytest.raises(OutputDirLocked, match=rf"in use by another run \(PID {process.pid} on host "):
            run_pretraining(parse_pretrain_args(tiny_args(synthetic_cache, out, max_steps=RESUME_STEPS, **overrides)))
        assert list_checkpoints(out)  # a fresh start would have deleted them (and metrics.jsonl) at once
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    steps = [r["step"] for r in read_metrics(out) if "train_loss" in r]
    assert steps == list(range(1, len(steps) + 1)), "two runs wrote into one metrics.jsonl"


# ---------------------------------------------------------------------------------------- two processes

TWO_PROCESS_STEPS = 6


def _two_process_argv(synthetic_cache: str, out: Path) -> list[str]:
    return [str(SCRIPT), *tiny_args(synthetic_cache, out, max_steps=TWO_PROCESS_STEPS, eval_steps=3,
                                    record_sample_ids="true")]


def _launch(machine_flags: list[str], argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--mixed_precision", "no", "--dynamo_backend", "no", *machine_flags, *argv]
    env = dict(subprocess_env(), ACCELERATE_USE_CPU="1")
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def two_process_run(synthetic_cache, tmp_path_factory) -> Path:
    """Two CPU processes on one machine."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    process = _launch(["--num_machines", "1", "--main_process_port", str(free_port())],
                      _two_process_argv(synthetic_cache, out))
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-6000:]
    return out


def test_two_cpu_processes_see_disjoint_data_and_end_identical(two_process_run):
    out, steps = two_process_run, TWO_PROCESS_STEPS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["tokens_seen"] == steps * 8 * 2 * 16

    seen = {}
    for rank in (0, 1):
        lines = (out / "debug" / f"samples-rank{rank}.jsonl").read_text().splitlines()
        seen[rank] = [i for line in lines for i in json.loads(line)["ids"]]
        assert len(seen[rank]) == steps * 8 == len(set(seen[rank]))
    assert not set(seen[0]) & set(seen[1]), "the two ranks trained on the same samples"
    digests = {json.loads((out / "debug" / f"final-rank{r}.json").read_text())["weights_sha256"] for r in (0, 1)}
    assert len(digests) == 1, "the ranks ended with different weights"
    assert (out / "model.safetensors").is_file()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_two_machines_over_loopback_train_the_same_run_as_two_processes_on_one(synthetic_cache, two_process_run,
                                                                                tmp_path):
    """Two launchers, one process each, as two machines sharing a file system (multi_node.yaml's setup)."""
    out, port = tmp_path / "nodes", free_port()
    launchers = []
    for machine in (0, 1):
        cwd = tmp_path / f"machine{machine}"  # each machine's working folder: it must stay empty
        cwd.mkdir()
        flags = ["--num_machines", "2", "--machine_rank", str(machine), "--main_process_ip", "127.0.0.1",
                 "--main_process_port", str(port)]
        launchers.append(_launch(flags, _two_process_argv(synthetic_cache, out), cwd=cwd))
    outputs = [launcher.communicate(timeout=300)[0] for launcher in launchers]
    for launcher, output in zip(launchers, outputs):
        assert launcher.returncode == 0, output[-6000:]
    assert f"Done: completed after {TWO_PROCESS_STEPS} steps" in outputs[0] and "Done:" not in outputs[1]

    assert_same_weights(out, two_process_run, atol=0.0)
    reference, ours = read_metrics(two_process_run), read_metrics(out)
    assert [r["step"] for r in ours] == [r["step"] for r in reference]
    for mine, theirs in zip(ours, reference):
        for key in ("train_loss", "val_loss", "tokens_seen", "images_seen"):
            assert mine.get(key) == theirs.get(key), (mine, theirs)
    for rank in (0, 1):  # each rank trained on the same samples as on one machine
        name = f"debug/samples-rank{rank}.jsonl"
        assert (out / name).read_text() == (two_process_run / name).read_text()
    # The same files as on one machine (the per-rank parts of each checkpoint included), and nothing in the
    # machines' working folders: machine 1 wrote only its own rank's parts.
    assert _listing(out) == _listing(two_process_run)
    assert [list((tmp_path / f"machine{machine}").iterdir()) for machine in (0, 1)] == [[], []]


# ---------------------------------------------------------------------------------------- bad data


@pytest.fixture(scope="module")
def log_reference_run(synthetic_cache, tmp_path_factory) -> Path:
    """The reference run again, with log-spaced checkpoints."""
    out = tmp_path_factory.mktemp("log-reference") / "run"
    run_pretraining(parse_pretrain_args(tiny_args(
        synthetic_cache, out, max_steps=RESUME_STEPS, eval_steps=1000, save_steps=0, gradient_accumulation_steps=2,
        num_plot_images=0, save_schedule="log")))
    return out


def test_log_checkpoints_sigterm_and_resume_equal_the_uninterrupted_run(synthetic_cache, reference_run,
                                                                       log_reference_run, tmp_path):
    log_steps = checkpoint_steps(RESUME_STEPS, 0, "log")[:-1]  # 1, 2, 4, ..., 128
    assert [int(p.name.split("-")[1]) for p in list_checkpoints(log_reference_run)] == [*log_steps, RESUME_STEPS]
    assert_same_weights(log_reference_run, reference_run)  # saving the checkpoints does not change the training
    out = tmp_path / "run"
    process = _start_training(synthetic_cache, out, save_steps=0, save_schedule="log")
    wait_for(lambda: any(p.name == "checkpoint-8" for p in list_checkpoints(out)), process, what="checkpoint-8")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    stopped = json.loads((out / "summary.json").read_text())["steps"]
    assert 8 <= stopped < 128

    resumed = _resume(synthetic_cache, out, save_steps=0, save_schedule="log")
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith(f"checkpoint-{stopped}")
    assert_same_weights(out, log_reference_run)
    reference = {r["step"]: r["train_loss"] for r in read_metrics(log_reference_run) if "train_loss" in r}
    resumed_losses = {r["step"]: r["train_loss"] for r in read_metrics(out) if "train_loss" in r}
    assert sorted(resumed_losses) == sorted(reference)
    assert all(resumed_losses[step] == pytest.approx(loss, abs=1e-6) for step, loss in reference.items())
    # every log-spaced checkpoint, before and after the stop, holds the model of the uninterrupted run at its step
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
    assert set(steps) == {*log_steps, stopped, RESUME_STEPS}
    for step in log_steps:
        assert is_permanent_checkpoint(out / f"checkpoint-{step}")
        assert_same_weights(out / f"checkpoint-{step}" / MODEL_SUBFOLDER,
                            log_reference_run / f"checkpoint-{step}" / MODEL_SUBFOLDER)
        state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["tokens_seen"] == step * resumed["tokens_per_step"]


def _write_png_folder(root: Path, good: int, rng: np.random.Generator) -> None:
    from PIL import Image

    root.mkdir(parents=True)
    for index in range(good):
        pixels = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"galaxy_{index:03d}.png")


@pytest.mark.parametrize("streaming", [False, True])
def test_corrupt_files_are_skipped_and_counted(tmp_path, streaming):
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "folder"
    _write_png_folder(data / "train", 28, rng)
    good = (data / "train" / "galaxy_000.png").read_bytes()
    (data / "train" / "bad_truncated.png").write_bytes(good[: len(good) // 2])
    (data / "train" / "bad_empty.png").write_bytes(b"")
    Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(data / "train" / "bad_one_band.png")
    Image.fromarray((rng.random((16, 16, 4)) * 255).astype(np.uint8)).save(data / "train" / "bad_four_bands.png")
    _write_png_folder(data / "validation", 8, rng)

    out = tmp_path / "run"
    # 32 training files, batches of 8, 4 steps: exactly one pass over every file.
    summary = run_pretraining(parse_pretrain_args(tiny_args(
        str(tmp_path / "cache"), out, dataset=str(data), max_steps=4, eval_steps=2, streaming=str(streaming).lower())))
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert summary["skipped_samples"] == 4
    assert summary["images_seen"] == 28 and summary["tokens_seen"] == 28 * 16
    assert np.isfinite(summary["final_val_loss"]) and (out / "model.safetensors").is_file()
    assert max(r.get("skipped_samples", 0) for r in read_metrics(out)) == 4
    assert torch.isfinite(load_file(out / "model.safetensors")["astropt.layernorm.weight"]).all()


def test_gradient_accumulation_equals_one_big_batch(synthetic_cache, tmp_path):
    """8 images x 2 accumulated micro-batches read the same 16 images per step as one batch of 16
    (the sampler cuts one permutation into consecutive batches), so the weights must agree. In fp32: bf16
    autocast (what `auto` picks on CPUs with hardware bf16) rounds the two sums differently."""
    common = {"max_steps": 5, "eval_steps": 5, "save_steps": 0, "num_plot_images": 0, "mixed_precision": "no"}
    run_pretraining(parse_pretrain_args(tiny_args(
        synthetic_cache, tmp_path / "accumulated", batch_size=8, gradient_accumulation_steps=2, **common)))
    run_pretraining(parse_pretrain_args(tiny_args(
        synthetic_cache, tmp_path / "big", batch_size=16, gradient_accumulation_steps=1, **common)))
    assert_same_weights(tmp_path / "accumulated", tmp_path / "big", atol=1e-5)
    untrained = tmp_path / "untrained"
    run_pretraining(parse_pretrain_args(tiny_args(
        synthetic_cache, untrained, batch_size=16, gradient_accumulation_steps=1, **dict(common, max_steps=1))))
    with pytest.raises(AssertionError):  # the comparison can tell runs apart
        assert_same_weights(tmp_path / "big", untrained, atol=1e-5)


def test_images_over_the_side_factor_are_skipped_and_counted(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    data = tmp_path / "folder"
    _write_png_folder(data / "train", 30, rng)
    # 4x the model's side: within the default factor (16), over a factor of 1
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(data / "train" / "big.png")
    np.save(data / "train" / "big.npy", rng.random((64, 64, 3)).astype(np.float32))
    _write_png_folder(data / "validation", 8, rng)
    summaries = {}
    for factor in (16, 1):
        # 32 training files, batches of 8, 4 steps: exactly one pass over every file.
        argv = tiny_args(str(tmp_path / "cache"), tmp_path / f"factor-{factor}", dataset=str(data), max_steps=4,
                         eval_steps=4, save_steps=0, num_plot_images=0, stretch="none")
        summaries[factor] = run_pretraining(parse_pretrain_args([*argv, "--max_image_side_factor", str(factor)]))
    assert summaries[16]["skipped_samples"] == 0 and summaries[16]["images_seen"] == 32
    assert summaries[1]["status"] == "completed" and summaries[1]["skipped_samples"] == 2
    assert summaries[1]["images_seen"] == 30
