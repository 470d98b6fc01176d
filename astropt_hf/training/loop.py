"""`run_pretraining(args)`: the astroPT pretraining loop on Accelerate.

One function, top to bottom: set up (accelerator, output folder, data, model, optimizer), maybe resume,
then train: micro-batches under `accelerator.accumulate`, clipping, one scheduler step per optimizer
step, periodic logging / validation / atomic checkpoints, and SIGTERM turned into "save and stop".
At the end: the final `save_pretrained` (model, processor, remote code), model card, loss curves and
`summary.json`, optionally a hub upload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..data import GalaxyCollator, decode_image
from ..modeling_astropt import AstroPTForPreTraining
from ..plotting import plot_loss_curves
from .arguments import ConfigError, PretrainArguments, build_pretrain_args, validate_pretrain_args
from .card import write_model_card
from .checkpointing import (
    StopSignal,
    list_checkpoints,
    load_checkpoint,
    remove_incomplete_checkpoints,
    resolve_resume_path,
    save_checkpoint,
)
from .data_streams import TrainBatchStream, count_items, load_pretraining_sources, validation_batches
from .evaluation import dummy_pixel_values, evaluate_loss, predicted_images, save_prediction_grid
from .hub import check_push_possible, push_folder
from .metrics_log import MetricsLog
from .optim import build_optimizer
from .precision import resolve_mixed_precision
from .schedule import build_scheduler

logger = logging.getLogger(__name__)

# Files a run writes into output_dir, removed by --overwrite_output_dir.
RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "loss.png", "README.md", "eval", "debug", "runs")


# ----------------------------------------------------------------------------------------------------
# Output folder
# ----------------------------------------------------------------------------------------------------


def _previous_run_files(output_dir: Path) -> list[str]:
    if not output_dir.is_dir():
        return []
    names = sorted(p.name for p in output_dir.iterdir())
    return [n for n in names if n.startswith("checkpoint-") or n in ("metrics.jsonl", "summary.json")]


def _prepare_output_dir(args: PretrainArguments, output_dir: Path, resume_path: Path | None, accelerator) -> None:
    """Refuse to silently mix two runs in one folder; clean up what an interrupted run left behind."""
    previous = _previous_run_files(output_dir)
    if previous and resume_path is None and not args.overwrite_output_dir and args.resume_from_checkpoint != "latest":
        raise ConfigError(
            f"output_dir {str(output_dir)!r} already holds a run ({', '.join(previous[:4])}). Pass "
            "--resume_from_checkpoint latest to continue it, or --overwrite_output_dir true to start afresh."
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete_checkpoints(output_dir)
        if resume_path is None:  # a fresh start: nothing of an earlier run may leak into this one
            for path in list_checkpoints(output_dir):
                shutil.rmtree(path)
            for name in RUN_OUTPUTS:
                target = output_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def _tracker_config(args: PretrainArguments) -> dict[str, Any]:
    """Flat scalars only: TensorBoard's hparams accept nothing else."""
    flat = {}
    for key, value in args.to_flat_dict().items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over all parameters (name order): equal on every rank iff the weights are identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _reduce_sum(accelerator, values: list[float]) -> list[float]:
    """Element-wise sum over processes (a collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="sum")
    return tensor.tolist()


def _first_images(source, collator, count: int) -> dict | None:
    """The first `count` decodable validation images, for the prediction grids."""
    if count <= 0:
        return None
    loader = validation_batches(source, collator, num_items=count * 2, batch_size=count * 2)
    for batch in loader:
        if batch["pixel_values"].shape[0]:
            return {"pixel_values": batch["pixel_values"][:count], "ids": batch["ids"][:count]}
    return None


def _warn_if_stretching_display_images(source, processor) -> None:
    """Warn when an asinh stretch meant for fluxes (the demo's default) meets 8-bit images, which PNG/JPEG
    cutouts are and which are usually stretched for display already. Looks at the first item only."""
    if processor.stretch != "asinh" or count_items(source) in (None, 0):
        return
    try:
        image = decode_image(source.dataset[0][source.image_column], source=f"{source.origin} item 0")
    except (ValueError, OSError):
        return  # an undecodable first item is skipped and counted by the collator, as any other
    if image.dtype == np.uint8:
        logger.warning(
            "%s holds 8-bit images (e.g. PNG/JPEG), usually already stretched for display, and this run applies "
            "asinh(x / %g) on top (the demo's setting for fluxes); for display images pass --stretch none",
            source.origin, processor.asinh_scale,
        )


def _check_tracker_installed(report_to: str) -> None:
    """Fail before any work if the chosen tracker's package is missing (Accelerate would skip it quietly)."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    needed = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    if report_to in needed and not needed[report_to]():
        raise ConfigError(f"config key 'report_to': {report_to!r} is not installed (pip install {report_to})")


def _reset_accelerate_state() -> None:
    """Forget this run's Accelerator settings so that another run can start in the same process
    (e.g. a scaling sweep) with a different precision or accumulation. The process group stays."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


def run_pretraining(args: PretrainArguments | dict) -> dict[str, Any]:
    """Pretrain astroPT as configured; returns the run summary (also written to `output_dir/summary.json`).

    Args:
        args: `PretrainArguments` (e.g. from `parse_pretrain_args`) or a flat dict of config keys on top
            of the demo defaults (`{"output_dir": ..., "hidden_size": 64, "max_steps": 100}`).

    The summary holds at least `steps`, `tokens_seen`, `final_train_loss`, `final_val_loss`,
    `first_val_loss`, `skipped_samples`, `wall_seconds`, `num_processes`, and `status`
    ("completed" or "interrupted" after SIGTERM).
    """
    if isinstance(args, dict):
        args = build_pretrain_args(args)
    validate_pretrain_args(args)
    if args.push_to_hub:
        check_push_possible(args.hub_model_id)
    _check_tracker_installed(args.report_to)
    try:
        return _run(args)
    finally:
        _reset_accelerate_state()


def _run(args: PretrainArguments) -> dict[str, Any]:
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    config = args.model_config()
    processor = args.image_processor()
    mixed_precision = resolve_mixed_precision(args.mixed_precision)
    trackers = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer update, on every process
        dynamo_backend="inductor" if args.compile else None,
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    # Set after creation: the process count is only known once the Accelerator has connected the processes.
    accumulation = args.resolved_accumulation(world)
    accelerator.gradient_accumulation_steps = accumulation
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world:
        raise ConfigError(
            f"{launched} processes were launched but they are not connected (this one sees "
            f"{world}). On CPUs launch with: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes N scripts/pretrain.py (a config file with use_cpu: true does not connect them)"
        )

    resume_path = resolve_resume_path(args.resume_from_checkpoint, output_dir)
    _prepare_output_dir(args, output_dir, resume_path, accelerator)
    metrics = MetricsLog(output_dir / "metrics.jsonl")

    # --- data ---------------------------------------------------------------------------------------
    train_source, val_source = load_pretraining_sources(args, accelerator)
    collator = GalaxyCollator(processor, train_source.image_column, train_source.id_column)
    if accelerator.is_main_process:
        _warn_if_stretching_display_images(val_source, processor)
    val_collator = GalaxyCollator(processor, val_source.image_column, val_source.id_column)
    eval_batch_size = args.resolved_eval_batch_size()
    num_train = count_items(train_source)
    batches_per_epoch = num_train // (args.batch_size * world) if num_train is not None else None

    # --- model, optimizer, schedule -----------------------------------------------------------------
    set_seed(args.seed)  # the same initial weights on every process
    model = AstroPTForPreTraining(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    num_parameters = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(
        model, args.learning_rate, args.weight_decay, tuple(args.betas), args.adam_epsilon
    )
    scheduler = build_scheduler(
        optimizer, args.learning_rate, args.resolved_min_lr(), args.warmup_steps, args.resolved_lr_decay_steps()
    )
    deepspeed_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if deepspeed_plugin is not None and deepspeed_plugin.is_auto("train_micro_batch_size_per_gpu"):
        # our DataLoaders are not prepared (we shard ourselves), so DeepSpeed learns the batch size here
        deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.batch_size
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accumulation = accelerator.gradient_accumulation_steps  # DeepSpeed's config may have changed it

    # --- resume -------------------------------------------------------------------------------------
    state: dict[str, Any] = {
        "step": 0, "images_seen": 0, "skipped_samples": 0, "wall_seconds": 0.0,
        "first_val_loss": None, "last_val_loss": None, "last_train_loss": None,
    }
    data_state: dict[str, Any] = {"epoch": 0, "batches_in_epoch": 0, "window_loss_sum": 0.0, "window_images": 0,
                                  "window_steps": 0, "local_images": 0, "local_skipped": 0}
    if resume_path is not None:
        saved_state, saved_data = load_checkpoint(accelerator, resume_path)
        state.update(saved_state)
        data_state.update(saved_data)
        accelerator.print(f"Resumed from {resume_path} at step {state['step']}")
        if main:
            metrics.truncate_after(state["step"])
    start_step = state["step"]
    wall_before = state["wall_seconds"]

    stream = TrainBatchStream(
        train_source, collator, args.batch_size, rank, world, args.seed, args.num_workers,
        args.shuffle_buffer_size, epoch=data_state["epoch"], batches_in_epoch=data_state["batches_in_epoch"],
    )
    plot_batch = _first_images(val_source, val_collator, args.num_plot_images)
    num_val_items = args.eval_batches * eval_batch_size
    tokens_per_image = config.num_patches
    tokens_per_step = args.batch_size * accumulation * world * tokens_per_image

    if trackers:
        accelerator.init_trackers(args.run_name, config=_tracker_config(args))
    accelerator.print(
        f"astroPT pretraining: {num_parameters / 1e6:.2f}M parameters, {config.num_hidden_layers} layers x "
        f"{config.hidden_size} wide, {config.num_patches} patches of {config.patch_size}px per "
        f"{config.image_size}px image\n"
        f"  data: {train_source.origin} ({num_train if num_train is not None else 'streaming'} items), "
        f"validation {val_source.origin}\n"
        f"  {world} process(es) on {accelerator.device}, precision {mixed_precision}, batch {args.batch_size} x "
        f"accumulation {accumulation} x {world} = {tokens_per_step:,} tokens per step, "
        f"steps {start_step}->{args.max_steps}\n"
        f"  output: {output_dir}"
    )

    debug_dir = output_dir / "debug"
    if args.record_sample_ids:
        debug_dir.mkdir(parents=True, exist_ok=True)
    sample_log = open(debug_dir / f"samples-rank{rank}.jsonl", "a") if args.record_sample_ids else None

    # --- helpers bound to this run ------------------------------------------------------------------
    def global_counts() -> tuple[int, int]:
        images, skipped = _reduce_sum(accelerator, [data_state["local_images"], data_state["local_skipped"]])
        return int(images), int(skipped)

    def run_evaluation(step: int) -> float:
        loader = validation_batches(val_source, val_collator, num_val_items, eval_batch_size, rank, world,
                                    args.num_workers)
        val_loss, _, _ = evaluate_loss(accelerator, model, loader, config)
        if plot_batch is not None:
            panels = predicted_images(accelerator, model, plot_batch["pixel_values"])
            if main:
                save_prediction_grid(panels, output_dir / "eval" / f"predictions-step{step:06d}.png",
                                     plot_batch["ids"], step)
        if state["first_val_loss"] is None:
            state["first_val_loss"] = val_loss
        state["last_val_loss"] = val_loss
        if main:
            metrics.write({"step": step, "val_loss": val_loss})
            plot_loss_curves(metrics.path, output_dir / "loss.png", title=f"astroPT pretraining ({args.run_name})")
        if trackers:
            accelerator.log({"val_loss": val_loss}, step=step)
        return val_loss

    def checkpoint(step: int) -> None:
        images, skipped = global_counts()
        shared = dict(state, step=step, images_seen=images, skipped_samples=skipped,
                      wall_seconds=wall_before + time.perf_counter() - started)
        save_checkpoint(accelerator, output_dir, step, shared, dict(data_state, **stream.state()),
                        args.save_total_limit)

    # --- train --------------------------------------------------------------------------------------
    model.train()
    progress = tqdm(total=args.max_steps, initial=start_step, disable=not main, desc="pretraining",
                    dynamic_ncols=True)
    segment_start, segment_images = time.perf_counter(), 0
    status, step = "completed", start_step
    with StopSignal() as stop:
        while step < args.max_steps:
            for _ in range(accumulation):
                batch = next(stream)
                count = int(batch["pixel_values"].shape[0])
                data_state["local_skipped"] += int(batch["num_skipped"])
                if sample_log is not None:
                    sample_log.write(json.dumps({"step": step, "ids": [str(i) for i in batch["ids"]]}) + "\n")
                with accelerator.accumulate(model):
                    if count:
                        loss = model(pixel_values=batch["pixel_values"].to(accelerator.device, non_blocking=True)).loss
                    else:  # every item of this batch was skipped: a weight-zero pass keeps the processes in step
                        loss = model(pixel_values=dummy_pixel_values(config, accelerator.device)).loss * 0.0
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.grad_clip > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                data_state["window_loss_sum"] += float(loss.detach().float().item()) * count
                data_state["window_images"] += count
                data_state["local_images"] += count
                segment_images += count
            scheduler.step()
            step += 1
            data_state["window_steps"] += 1
            progress.update(1)

            if step % args.log_steps == 0 or step == args.max_steps:
                loss_sum, window_images, images, skipped = _reduce_sum(
                    accelerator, [data_state["window_loss_sum"], data_state["window_images"],
                                  data_state["local_images"], data_state["local_skipped"]]
                )
                train_loss = loss_sum / window_images if window_images else float("nan")
                elapsed = time.perf_counter() - segment_start
                tokens_per_second = segment_images * world * tokens_per_image / max(elapsed, 1e-9)
                lr = scheduler.get_last_lr()[0]
                record = {"step": step, "train_loss": train_loss, "lr": lr,
                          "tokens_seen": int(images) * tokens_per_image, "images_seen": int(images),
                          "skipped_samples": int(skipped), "tokens_per_second": tokens_per_second,
                          "epoch": stream.epoch + stream.batches_in_epoch / batches_per_epoch
                          if batches_per_epoch else stream.epoch}
                state["last_train_loss"] = train_loss
                data_state.update(window_loss_sum=0.0, window_images=0, window_steps=0)
                if main:
                    metrics.write(record)
                progress.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}")
                if trackers:
                    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)

            if step % args.eval_steps == 0 or step == args.max_steps:
                run_evaluation(step)

            stopping = _any_stop(accelerator, stop.requested)
            if stopping or step == args.max_steps or (args.save_steps and step % args.save_steps == 0):
                checkpoint(step)
            if stopping and step < args.max_steps:
                status = "interrupted"
                accelerator.print(f"\nStopped by a signal at step {step}; resume with --resume_from_checkpoint latest")
                break
    progress.close()
    if sample_log is not None:
        sample_log.close()

    # --- finish -------------------------------------------------------------------------------------
    images, skipped = global_counts()
    summary = {
        "status": status,
        "steps": step,
        "max_steps": args.max_steps,
        "tokens_seen": images * tokens_per_image,
        "images_seen": images,
        "tokens_per_step": tokens_per_step,
        "final_train_loss": state["last_train_loss"],
        "final_val_loss": state["last_val_loss"],
        "first_val_loss": state["first_val_loss"],
        "val_loss_ratio": (state["last_val_loss"] / state["first_val_loss"])
        if state["first_val_loss"] and state["last_val_loss"] is not None else None,
        "skipped_samples": skipped,
        "wall_seconds": wall_before + time.perf_counter() - started,
        "num_processes": world,
        "device": str(accelerator.device),
        "mixed_precision": mixed_precision,
        "gradient_accumulation_steps": accumulation,
        "batch_size": args.batch_size,
        "num_parameters": num_parameters,
        "epochs": (images + skipped) / num_train if num_train else None,
        "dataset": args.dataset,
        "resumed_from": str(resume_path) if resume_path is not None else None,
        "output_dir": str(output_dir),
    }
    if status == "completed":
        _save_final_model(accelerator, model, processor, output_dir)
    if args.record_sample_ids:
        (debug_dir / f"final-rank{rank}.json").write_text(json.dumps({
            "rank": rank, "num_processes": world, "steps": step,
            "weights_sha256": _weights_digest(accelerator.unwrap_model(model, keep_torch_compile=False)),
        }))
    if main:
        if metrics.read():
            plot_loss_curves(metrics.path, output_dir / "loss.png", title=f"astroPT pretraining ({args.run_name})")
        if status == "completed":
            repo_id = args.hub_model_id or str(output_dir)
            write_model_card(output_dir / "README.md", args, config, summary, repo_id)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        accelerator.print(_final_message(summary, output_dir))
    if trackers:
        accelerator.end_training()
    if status == "completed" and args.push_to_hub and main:
        summary["hub_url"] = push_folder(output_dir, args.hub_model_id, args.hub_private)
        accelerator.print(f"Uploaded to {summary['hub_url']}")
    accelerator.wait_for_everyone()
    return summary


def _any_stop(accelerator, requested: bool) -> bool:
    """Stop on every process if any of them got SIGTERM (they must save the checkpoint together)."""
    if accelerator.num_processes == 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _save_final_model(accelerator, model, processor, output_dir: Path) -> None:
    """`save_pretrained` of the model (gathered from all processes under FSDP/DeepSpeed) and processor,
    with the remote-code files, so that `AutoModel.from_pretrained(output_dir, trust_remote_code=True)` works."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # a collective under FSDP / DeepSpeed ZeRO-3
    # torch.compile's wrapper prefixes every key with "_orig_mod."; the checkpoint must not carry it
    state_dict = {key.removeprefix("_orig_mod."): value for key, value in state_dict.items()}
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if accelerator.is_main_process:
        processor.save_pretrained(output_dir)
    unwrapped.save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
        state_dict=state_dict, safe_serialization=True,
    )
    accelerator.wait_for_everyone()


def _final_message(summary: dict, output_dir: Path) -> str:
    def fmt(value):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    lines = [
        f"\nDone: {summary['status']} after {summary['steps']} steps, {summary['tokens_seen']:,} tokens, "
        f"{summary['wall_seconds']:.0f} s.",
        f"  validation loss {fmt(summary['first_val_loss'])} (first evaluation) -> {fmt(summary['final_val_loss'])}"
        f" (final); training loss {fmt(summary['final_train_loss'])}; skipped samples {summary['skipped_samples']}",
    ]
    if summary["status"] == "completed":
        lines.append(
            f"  model: AutoModel.from_pretrained({str(output_dir)!r}, trust_remote_code=True); card, loss.png, "
            "metrics.jsonl, summary.json and eval/ are there too"
        )
    return "\n".join(lines)


__all__ = ["run_pretraining"]
