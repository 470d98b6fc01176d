"""Pretraining pieces on their own: config parsing, presets, schedule, optimizer groups, checkpoint
bookkeeping, the sharded sampler, precision choice, model card and hub checks. Fast, no training."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from astropt_hf import ASTROPT_PRESETS, AstroPTForPreTraining
from astropt_hf.training import (
    ConfigError,
    PretrainArguments,
    build_optimizer,
    build_pretrain_args,
    build_scheduler,
    learning_rate_at,
    parameter_groups,
    parse_pretrain_args,
    resolve_mixed_precision,
)
from astropt_hf.training.card import card_values, render_card
from astropt_hf.training.checkpointing import (
    COMPLETE_MARKER,
    StopSignal,
    find_latest_checkpoint,
    remove_incomplete_checkpoints,
    resolve_resume_path,
    rotate_checkpoints,
)
from astropt_hf.training.data_streams import ShardedBatchSampler
from astropt_hf.training.hub import check_push_possible
from astropt_hf.training.metrics_log import MetricsLog

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "scripts" / "configs"
SIZE_PRESETS = sorted(ASTROPT_PRESETS)


# --------------------------------------------------------------------------------------------- config


def test_command_line_overrides_any_key_with_typed_values():
    args = parse_pretrain_args(
        ["--hidden_size", "64", "--learning_rate", "3e-4", "--betas", "0.8", "0.99", "--compile",
         "--embedding_layer", "1", "--stretch", "none", "--min_lr", "null", "--max_steps", "1e3"]
    )
    assert args.model["hidden_size"] == 64
    assert args.learning_rate == pytest.approx(3e-4)
    assert args.betas == [0.8, 0.99]
    assert args.compile is True
    assert args.model["embedding_layer"] == 1  # an int block index, not the string "1"
    assert args.processor == {"stretch": "none", "asinh_scale": 0.02}  # the demo softening stays
    assert args.min_lr is None and args.resolved_min_lr() == pytest.approx(3e-5)
    assert args.max_steps == 1000
    assert args.image_processor().stretch == "none"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--hiden_size", "64"], ["unrecognized", "--hiden_size"]),
        (["--max_steps", "ten"], ["max_steps", "'ten'", "integer"]),
        (["--max_steps", "2.5"], ["max_steps", "2.5", "integer"]),
        (["--learning_rate", "-1"], ["learning_rate", "-1", ">= 0"]),
        (["--mixed_precision", "fp8"], ["mixed_precision", "fp8", "bf16"]),
        (["--patch_size", "5"], ["image_size=32", "patch_size=5"]),
        (["--stretch", "log"], ["stretch", "log"]),
        (["--betas", "0.9"], ["betas", "two numbers"]),
        (["--compile", "maybe"], ["compile", "maybe", "true or false"]),
        (["--min_lr", "1.0"], ["min_lr", "learning_rate"]),
        (["--push_to_hub"], ["hub_model_id"]),
        (["--gradient_accumulation_steps", "2", "--tokens_per_step", "4096"], ["tokens_per_step", "null"]),
    ],
)
def test_bad_keys_and_values_fail_before_any_work_with_a_clear_message(argv, words):
    with pytest.raises(ConfigError) as info:
        parse_pretrain_args(argv)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


def test_yaml_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hidden_size: 64\nlerning_rate: 1e-3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*lerning_rate"):
        parse_pretrain_args(["--config", str(bad)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_pretrain_args(["--config", str(tmp_path / "missing.yaml")])
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  hidden_size: 64\n")
    with pytest.raises(ConfigError, match="unknown config key"):
        parse_pretrain_args(["--config", str(nested)])


def test_command_line_beats_yaml(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("hidden_size: 64\nlearning_rate: 1e-3\nmax_steps: 10\n")  # 1e-3 is a YAML string
    args = parse_pretrain_args(["--config", str(preset), "--max_steps", "20"])
    assert (args.model["hidden_size"], args.learning_rate, args.max_steps) == (64, 1e-3, 20)


def test_demo_yaml_spells_out_the_defaults():
    from_file = parse_pretrain_args(["--config", str(CONFIGS / "demo.yaml")])
    assert from_file == parse_pretrain_args([])


def test_build_pretrain_args_from_a_dict_like_a_sweep_would():
    args = build_pretrain_args({"output_dir": "x", "hidden_size": 32, "num_attention_heads": 2, "max_steps": "7"})
    assert args.model_config().hidden_size == 32 and args.max_steps == 7
    with pytest.raises(ConfigError, match="unknown config key"):
        build_pretrain_args({"not_a_key": 1})


@pytest.mark.parametrize("name", SIZE_PRESETS)
def test_size_presets_match_upstream_recipe(name):
    args = parse_pretrain_args(["--config", str(CONFIGS / f"{name}.yaml")])
    config = args.model_config()
    shape = ASTROPT_PRESETS[name]
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == (
        shape["num_hidden_layers"], shape["num_attention_heads"], shape["hidden_size"])
    assert args.learning_rate == pytest.approx(shape["learning_rate"])
    assert args.resolved_min_lr() == pytest.approx(shape["learning_rate"] / 10)
    assert (config.image_size, config.patch_size, config.num_channels) == (512, 16, 3)
    assert args.warmup_steps == 2000 and args.weight_decay == pytest.approx(0.1)
    assert args.betas == [0.9, 0.95] and args.grad_clip == pytest.approx(1.0)
    for processes in (1, 2, 8):  # ~327k tokens per optimizer step whatever the process count
        accumulation = args.resolved_accumulation(processes)
        tokens = args.batch_size * accumulation * processes * config.num_patches
        assert abs(tokens - 327_680) / 327_680 < 0.25, (processes, tokens)
    assert args.resolved_accumulation(1) * args.batch_size * config.num_patches == 327_680


ACCELERATE_CONFIGS = ["ddp_multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml",
                      "multi_node.yaml"]


@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_accelerate_config_files_load_with_accelerate(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = CONFIGS / "accelerate" / name
    config = load_config_from_file(str(path))  # accelerate's own parser: unknown keys raise
    assert config.compute_environment.value == "LOCAL_MACHINE"


def test_fsdp_config_wraps_a_class_that_exists():
    import astropt_hf.modeling_astropt as modeling

    fsdp = yaml.safe_load((CONFIGS / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    for name in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
        cls = getattr(modeling, name.strip())
        assert issubclass(cls, torch.nn.Module)
        assert name.strip() in AstroPTForPreTraining._no_split_modules


def test_deepspeed_configs_use_their_stage():
    for stage in (2, 3):
        config = yaml.safe_load((CONFIGS / "accelerate" / f"deepspeed_zero{stage}.yaml").read_text())
        assert config["distributed_type"] == "DEEPSPEED"
        assert config["deepspeed_config"]["zero_stage"] == stage


# ------------------------------------------------------------------------------------ schedule, optim


def test_schedule_warms_up_then_cosine_decays_to_min_lr():
    peak, low, warmup, decay = 1e-3, 1e-4, 10, 100
    rates = [learning_rate_at(s, peak, low, warmup, decay) for s in range(130)]
    assert 0 < rates[0] < rates[5] < rates[9] < peak
    assert rates[warmup] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:]))
    assert rates[(warmup + decay) // 2 + 0] == pytest.approx((peak + low) / 2, rel=1e-6)
    assert rates[decay] == pytest.approx(low) and rates[129] == pytest.approx(low)

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=peak)
    scheduler = build_scheduler(optimizer, peak, low, warmup, decay)
    seen = []
    for _ in range(120):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(rates[:120], rel=1e-9)


def _upstream_rate(step, peak, low, warmup, decay):
    """Upstream's recipe written out: warmup peak*(s+1)/(W+1), cosine to `low` at `decay`, `low` after."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if step >= decay:
        return low
    progress = (step - warmup) / max(1, decay - warmup)
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - low)


@pytest.mark.parametrize(
    "peak, low, warmup, decay",
    [(1e-3, 1e-4, 0, 100), (1e-3, 1e-4, 10, 100), (2e-3, 2e-4, 30, 60), (1e-3, 0.0, 5, 5), (1e-3, 1e-4, 10, 5)],
)
def test_schedule_follows_the_upstream_recipe(peak, low, warmup, decay):
    """Warmup 0, warmup > 0, and a decay that ends before training does (the rate then stays at min_lr)."""
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=peak)
    scheduler = build_scheduler(optimizer, peak, low, warmup, decay)
    for step in range(150):
        expected = _upstream_rate(step, peak, low, warmup, decay)
        assert learning_rate_at(step, peak, low, warmup, decay) == pytest.approx(expected, rel=1e-12, abs=1e-18)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-18)
        optimizer.step()
        scheduler.step()
    # a resumed scheduler continues from the saved step: its state is plain numbers
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None] and state["last_epoch"] == 150
    fresh = build_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=peak), peak, low, warmup, decay)
    fresh.load_state_dict(state)
    fresh.step()
    assert fresh.get_last_lr()[0] == pytest.approx(_upstream_rate(151, peak, low, warmup, decay), rel=1e-12)


def test_weight_decay_only_on_matrices(tiny_config):
    model = AstroPTForPreTraining(tiny_config(use_bias=True))
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.astropt.layernorm.weight for p in no_decay["params"])

    # With zero gradients Adam's update is zero, so only the decoupled weight decay moves weights.
    optimizer = build_optimizer(model, learning_rate=0.5, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            assert torch.allclose(p, before[name] * (1 - 0.5 * 0.1)), name
        else:
            assert torch.equal(p, before[name]), name


# ------------------------------------------------------------------------------------ checkpoints


def _fake_checkpoint(root: Path, name: str, complete: bool) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if complete:
        (path / COMPLETE_MARKER).write_text("{}")
    return path


def test_latest_checkpoint_ignores_half_written_ones(tmp_path):
    _fake_checkpoint(tmp_path, "checkpoint-10", True)
    _fake_checkpoint(tmp_path, "checkpoint-9", True)
    _fake_checkpoint(tmp_path, "checkpoint-30.tmp", True)  # killed before the rename
    _fake_checkpoint(tmp_path, "checkpoint-20", False)  # no marker
    _fake_checkpoint(tmp_path, "checkpoint-x", True)
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-10"  # by step, not by name order
    assert resolve_resume_path("latest", tmp_path).name == "checkpoint-10"
    assert resolve_resume_path("latest", tmp_path / "empty") is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume_path(str(tmp_path / "checkpoint-20"), tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_resume_path(str(tmp_path / "nope"), tmp_path)
    removed = remove_incomplete_checkpoints(tmp_path)
    assert [p.name for p in removed] == ["checkpoint-30.tmp"]


def test_rotation_keeps_the_newest(tmp_path):
    for step in (5, 10, 15, 20):
        _fake_checkpoint(tmp_path, f"checkpoint-{step}", True)
    rotate_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-15", "checkpoint-20"]


def test_stop_signal_turns_sigterm_into_a_flag():
    with StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


def test_metrics_log_survives_a_torn_last_line(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.write({"step": step, "train_loss": 1.0 / step})
    with open(log.path, "a") as handle:
        handle.write('{"step": 4, "train_lo')  # killed mid-write
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    log.truncate_after(2)
    assert [r["step"] for r in log.read()] == [1, 2]
    log.write({"step": 3, "val_loss": float("nan")})
    assert json.loads(log.path.read_text().splitlines()[-1])["val_loss"] is None


# ------------------------------------------------------------------------------------ data order


def test_sharded_sampler_gives_disjoint_ranks_and_resumes_mid_epoch():
    ranks = [list(ShardedBatchSampler(103, 4, num_replicas=3, rank=r, seed=7, epoch=2)) for r in range(3)]
    flat = [i for batches in ranks for batch in batches for i in batch]
    assert len(flat) == len(set(flat)) == (103 // 12) * 12
    assert all(len(b) == 4 for batches in ranks for b in batches)
    resumed = list(ShardedBatchSampler(103, 4, num_replicas=3, rank=1, seed=7, epoch=2, start_batch=5))
    assert resumed == ranks[1][5:]
    other_epoch = list(ShardedBatchSampler(103, 4, num_replicas=3, rank=1, seed=7, epoch=3))
    assert other_epoch != ranks[1]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedBatchSampler(5, 4, num_replicas=2)


# ------------------------------------------------------------------------------------ precision, card, hub


def test_auto_precision_is_full_on_cpu_unless_the_launcher_asks(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    on_gpu = torch.cuda.is_available()
    expected = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if on_gpu else "no"
    assert resolve_mixed_precision("auto", cpu_flags=()) == expected
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision("auto", cpu_flags=()) == "bf16"
    assert resolve_mixed_precision("no") == "no"


def test_auto_precision_is_bf16_on_cpus_with_hardware_bf16(monkeypatch):
    from astropt_hf.training.precision import cpu_bf16_flags, parse_cpu_flags

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if not torch.cuda.is_available():
        assert resolve_mixed_precision("auto", cpu_flags=("amx_bf16",)) == "bf16"
        assert resolve_mixed_precision("auto") == ("bf16" if cpu_bf16_flags() else "no")
    sapphire_rapids = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n"
    assert {"amx_bf16", "avx512_bf16"} <= parse_cpu_flags(sapphire_rapids)
    assert "amx_bf16" not in parse_cpu_flags("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert parse_cpu_flags("") == set()


def test_optimizer_is_fused_on_cpu_and_matches_the_unfused_step():
    from astropt_hf.training import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    twin = copy.deepcopy(model)
    fused = build_optimizer(model, 1e-2)
    assert fused.defaults["fused"] is True
    assert [group["weight_decay"] for group in fused.param_groups] == [0.1, 0.0]
    reference_groups = [
        {"params": [twin[0].weight], "weight_decay": 0.1},
        {"params": [twin[0].bias, *twin[1].parameters()], "weight_decay": 0.0},
    ]
    plain = torch.optim.AdamW(reference_groups, lr=1e-2, betas=(0.9, 0.95), foreach=False)
    for _ in range(3):
        for net, optimizer in ((model, fused), (twin, plain)):
            net(torch.ones(2, 8)).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    for ours, reference in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_model_card_template_is_fully_filled():
    args = PretrainArguments()
    summary = {"steps": 10, "tokens_seen": 12345, "final_train_loss": 0.21, "final_val_loss": 0.2,
               "first_val_loss": 0.3, "num_parameters": 1000, "wall_seconds": 75.0}
    card = render_card(card_values(args, args.model_config(), summary, "me/astropt-demo"))
    assert "{{" not in card and "me/astropt-demo" in card and "12,345" in card and "1 min 15 s" in card
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert "| asinh(x / 0.02), then per-image standardisation |" in card
    upstream_like = parse_pretrain_args(["--stretch", "none", "--patch_norm", "per_patch"])
    assert "| none, then per-patch standardisation |" in render_card(
        card_values(upstream_like, upstream_like.model_config(), summary, "me/x"))
    with pytest.raises(KeyError, match="missing_value"):
        render_card({}, template="{{missing_value}}")


def test_push_to_hub_fails_early_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        check_push_possible("me/astropt")
    with pytest.raises(ConfigError, match="hub_model_id"):
        check_push_possible(None)


def test_learning_rate_at_is_finite_for_degenerate_schedules():
    assert learning_rate_at(0, 1e-3, 1e-4, 0, 1) == pytest.approx(1e-3)
    assert math.isfinite(learning_rate_at(5, 1e-3, 1e-4, 10, 5))


def test_final_save_of_a_compiled_model_has_plain_keys(tiny_config, tmp_path):
    """torch.compile wraps the model (keys gain '_orig_mod.'); the saved checkpoint must not show it.
    Wrapping is lazy, so nothing is compiled here."""
    from accelerate import Accelerator
    from safetensors.torch import load_file

    from astropt_hf import AstroPTImageProcessor
    from astropt_hf.training.output_dir import save_final_model
    from astropt_hf.training.run_setup import reset_accelerate_state

    config = tiny_config()
    model = AstroPTForPreTraining(config)
    try:
        accelerator = Accelerator(cpu=True)
        compiled = accelerator.prepare(torch.compile(model))
        save_final_model(accelerator, compiled, AstroPTImageProcessor(image_size=16), tmp_path)
    finally:
        reset_accelerate_state()
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(model.state_dict()) and not any("_orig_mod" in k for k in saved)
    reloaded = AstroPTForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(reloaded.patch_head.mlp[0].weight, model.patch_head.mlp[0].weight)


@pytest.mark.parametrize("streaming, workers", [(False, 0), (True, 0), (True, 2)])
def test_train_stream_resumes_at_the_same_batch(streaming, workers):
    """A stream restarted at (epoch, batch) yields exactly what an uninterrupted one yields from there on,
    across epoch boundaries, for map-style data (seeded sampler) and streaming data (shuffle buffer)."""
    import datasets
    import numpy as np

    from astropt_hf import AstroPTImageProcessor
    from astropt_hf.data import GalaxyCollator, GalaxySource
    from astropt_hf.training.data_streams import TrainBatchStream

    rng = np.random.default_rng(0)
    table = datasets.Dataset.from_dict({"image": [rng.random((3, 8, 8), dtype=np.float32) for _ in range(40)],
                                        "id": [f"g{i:02d}" for i in range(40)]})
    dataset = table.to_iterable_dataset(num_shards=4) if streaming else table
    source = GalaxySource(dataset, "image", "id", (), "test")
    collator = GalaxyCollator(AstroPTImageProcessor(image_size=8), "image", "id")

    def stream(**position):
        return TrainBatchStream(source, collator, batch_size=4, rank=1, num_replicas=2, seed=3,
                                shuffle_buffer_size=8, num_workers=workers, **position)

    uninterrupted = stream()
    reference, states = [], []
    for _ in range(14):  # about 3 epochs of this rank's 20 items
        reference.append(next(uninterrupted)["ids"])
        states.append(uninterrupted.state())
    assert states[-1]["epoch"] >= 2
    first_epoch = [ids for ids, state in zip(reference, states) if state["epoch"] == 0]
    assert len({i for ids in first_epoch for i in ids}) == 4 * len(first_epoch)  # no repeats within an epoch
    assert reference[0] != reference[len(first_epoch)]  # each epoch has its own order
    resume_at = 7
    assert states[resume_at - 1]["batches_in_epoch"] > 0  # a mid-epoch position
    resumed = stream(**states[resume_at - 1])
    assert [next(resumed)["ids"] for _ in range(14 - resume_at)] == reference[resume_at:]


def test_missing_tracker_fails_before_training(tmp_path):
    from accelerate.utils import is_wandb_available

    if is_wandb_available():
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match="wandb"):
        from astropt_hf.training import run_pretraining

        run_pretraining({"output_dir": str(tmp_path / "x"), "report_to": "wandb"})
    assert not (tmp_path / "x").exists()  # nothing was started


def test_asinh_on_8bit_images_is_warned_about(tmp_path, caplog):
    from PIL import Image

    from astropt_hf import AstroPTImageProcessor
    from astropt_hf.data import load_galaxy_dataset
    from astropt_hf.training.run_setup import warn_if_stretching_display_images

    pngs, fluxes = tmp_path / "pngs", tmp_path / "fluxes"
    pngs.mkdir(), fluxes.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(pngs / f"g{i}.png")
        np.save(fluxes / f"g{i}.npy", np.full((3, 8, 8), 0.01 * i, np.float32))
    asinh = AstroPTImageProcessor(image_size=8, stretch="asinh", asinh_scale=0.02)
    plain = AstroPTImageProcessor(image_size=8, stretch="none")
    with caplog.at_level(logging.WARNING, logger="astropt_hf.training.loop"):
        warn_if_stretching_display_images(load_galaxy_dataset(str(pngs), split="all"), asinh)
        assert "8-bit images" in caplog.text and "--stretch none" in caplog.text and "0.02" in caplog.text
        caplog.clear()
        warn_if_stretching_display_images(load_galaxy_dataset(str(pngs), split="all"), plain)
        warn_if_stretching_display_images(load_galaxy_dataset(str(fluxes), split="all"), asinh)
        assert caplog.text == ""


def test_leave_process_group_tears_down_the_group_and_is_then_a_no_op(tmp_path):
    """Scripts call it on the way out, so a process that finishes before the others exits cleanly."""
    import torch.distributed as dist

    from astropt_hf.training.collectives import leave_process_group

    leave_process_group()  # nothing joined yet: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        leave_process_group()
        assert not dist.is_initialized()
        leave_process_group()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
