"""The run's output folder: checked and cleaned when a run starts (no mixing of two runs, no leftovers of an
interrupted save), and at the end the final `save_pretrained` (with the processor the model needs), the run's
summary, the closing message, and a weights digest that the multi-process tests compare across ranks."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from .arguments import ConfigError, PretrainArguments
from .checkpointing import find_latest_checkpoint, list_checkpoints, remove_incomplete_checkpoints
from .collectives import first_failure

# Files a run writes into output_dir, removed by --overwrite_output_dir.
RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "loss.png", "README.md", "eval", "debug", "runs")


def _previous_run_files(output_dir: Path) -> list[str]:
    if not output_dir.is_dir():
        return []
    names = sorted(p.name for p in output_dir.iterdir())
    return [n for n in names if n.startswith("checkpoint-") or n in ("metrics.jsonl", "summary.json")]


def prepare_output_dir(args: PretrainArguments, output_dir: Path, resume_path: Path | None, accelerator) -> None:
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


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over all parameters (name order): equal on every rank iff the weights are identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def processor_to_save(image_processor, spectrum_extractor=None):
    """The processor the final model folder holds: the image processor, or for a model with spectra an
    `AstroPTProcessor` of it and the spectrum feature extractor, so that one
    `AutoProcessor.from_pretrained(output_dir, trust_remote_code=True)` prepares both inputs as in training."""
    if spectrum_extractor is None:
        return image_processor
    from ..processing_astropt import AstroPTProcessor

    return AstroPTProcessor(image_processor, spectrum_extractor)


def save_final_model(accelerator, model, processor, output_dir: Path) -> str | None:
    """`save_pretrained` of the model (gathered from all processes under FSDP/DeepSpeed) and processor,
    with the remote-code files, so that `AutoModel.from_pretrained(output_dir, trust_remote_code=True)` works;
    every process must call it (at the end of a run, and for a checkpoint's `model/` folder). Returns None, or on every process the reason the files could not be written (a full disk)."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # a collective under FSDP / DeepSpeed ZeRO-3
    # torch.compile's wrapper prefixes every key with "_orig_mod."; the checkpoint must not carry it
    state_dict = {key.removeprefix("_orig_mod."): value for key, value in state_dict.items()}
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    failure = None
    try:
        if accelerator.is_main_process:
            processor.save_pretrained(output_dir)
        unwrapped.save_pretrained(
            output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
            state_dict=state_dict, safe_serialization=True,
        )
    except Exception as err:  # noqa: BLE001 -- a full disk is an OSError, a SafetensorError or a RuntimeError
        failure = f"could not write the model in {output_dir} ({type(err).__name__}: {err})"
    return first_failure(accelerator, failure)  # also the barrier: the files are complete on return


def run_summary(trainer, status: str, counts: tuple[int, int], wall: float, data_seconds: float) -> dict[str, Any]:
    """The run's `summary.json`: status (and why and where a failed run stopped), steps, tokens and images
    (`counts`: images trained on and samples skipped, over all processes), losses, times (`wall` seconds in
    all, `data_seconds` of them preparing data) and the run's shape, from a `Pretrainer`."""
    images, skipped = counts
    state, args = trainer.state, trainer.args
    failed = {}
    if status == "failed":
        latest = find_latest_checkpoint(trainer.output_dir)
        failed = {"reason": trainer.health.failure, "failed_step": trainer.step,
                   "last_checkpoint": str(latest) if latest is not None else None}
    return {
        "status": status,
        **failed,
        "steps": trainer.step,
        "max_steps": args.max_steps,
        "tokens_seen": images * trainer.tokens_per_image,
        "images_seen": images,
        "tokens_per_step": trainer.tokens_per_step,
        "final_train_loss": state["last_train_loss"],
        "final_val_loss": state["last_val_loss"],
        "first_val_loss": state["first_val_loss"],
        "val_loss_ratio": (state["last_val_loss"] / state["first_val_loss"])
        if state["first_val_loss"] and state["last_val_loss"] is not None else None,
        "skipped_samples": skipped,
        "wall_seconds": wall,
        "data_seconds": data_seconds,
        "train_seconds": wall - data_seconds,
        "num_processes": trainer.world,
        "device": str(trainer.accelerator.device),
        "mixed_precision": trainer.mixed_precision,
        "gradient_accumulation_steps": trainer.accumulation,
        "batch_size": args.batch_size,
        "num_parameters": trainer.num_parameters,
        "epochs": (images + skipped) / trainer.num_train if trainer.num_train else None,
        "dataset": args.dataset,
        "objective": trainer.config.objective,
        "attention_pattern": trainer.config.attention_pattern,
        "resumed_from": str(trainer.resume_path) if trainer.resume_path is not None else None,
        "output_dir": str(trainer.output_dir),
    }


def final_message(summary: dict, output_dir: Path) -> str:
    def fmt(value):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    lines = [
        f"\nDone: {summary['status']} after {summary['steps']} steps, {summary['tokens_seen']:,} tokens, "
        f"{summary['wall_seconds']:.0f} s (data preparation {summary['data_seconds']:.0f} s, training and "
        f"evaluation {summary['train_seconds']:.0f} s).",
        f"  validation loss {fmt(summary['first_val_loss'])} (first evaluation) -> {fmt(summary['final_val_loss'])}"
        f" (final); training loss {fmt(summary['final_train_loss'])}; skipped samples {summary['skipped_samples']}",
    ]
    if summary["status"] == "failed":
        lines.append(f"  failed: {summary['reason']}")
    if summary["status"] == "completed":
        lines.append(
            f"  model: AutoModel.from_pretrained({str(output_dir)!r}, trust_remote_code=True); card, loss.png, "
            "metrics.jsonl, summary.json and eval/ are there too"
        )
    return "\n".join(lines)


__all__ = ["RUN_OUTPUTS", "final_message", "prepare_output_dir", "processor_to_save", "run_summary", "save_final_model",
           "weights_digest"]
