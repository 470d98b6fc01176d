"""`run_pretraining(args)`: the astroPT pretraining loop on Accelerate, as a `Pretrainer` object.

Set up (accelerator, output folder, data, model, optimizer), maybe resume, then train: micro-batches under
`accelerator.accumulate`, clipping, one scheduler step per optimizer step, periodic logging / validation /
atomic checkpoints, and SIGTERM turned into "save and stop". At the end: the final `save_pretrained`
(model, processor, remote code), model card, loss curves and `summary.json`, optionally a hub upload.

Guards: the output folder is locked for the run's life (`run_lock`); a resume must repeat the recorded
settings (`checkpointing.check_run_settings`); a non-finite loss or weights, or a write that fails (a full
disk), stops the run with status "failed" and its reason in `summary.json`, the last good checkpoint kept.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..modeling_astropt import AstroPTForPreTraining
from ..plotting import plot_loss_curves
from ..run_files import write_json_atomic
from .arguments import ConfigError, PretrainArguments, build_pretrain_args, validate_pretrain_args
from .card import write_model_card
from .checkpointing import (
    CheckpointSaveError,
    StopSignal,
    check_run_settings,
    load_checkpoint,
    resolve_resume_path,
    run_settings,
    save_checkpoint,
)
from .collectives import any_process, sum_over_processes
from .data_streams import TrainBatchStream, count_items, load_pretraining_sources, validation_batches
from .evaluation import (
    evaluate_losses,
    input_description,
    loss_description,
    predicted_images,
    save_prediction_grid,
    write_spectrum_panels,
)
from .hub import check_push_possible, push_folder
from .metrics_log import MetricsLog
from .modalities import LossParts, model_inputs
from .optim import build_optimizer
from .output_dir import (
    final_message,
    prepare_output_dir,
    processor_to_save,
    run_summary,
    save_final_model,
    weights_digest,
)
from .precision import resolve_mixed_precision
from .run_health import RunHealth
from .run_lock import lock_output_dir
from .run_setup import (
    check_tracker_installed,
    first_images,
    pretraining_collators,
    reset_accelerate_state,
    run_banner,
    tracker_config,
)
from .save_schedule import is_log_checkpoint, saves_model, should_save
from .schedule import build_scheduler

logger = logging.getLogger(__name__)

# With several processes, the processes agree on "is anything wrong?" (a non-finite loss, a failed write)
# every this many steps, and at every log, evaluation and save; alone, a process checks every step.
HEALTH_CHECK_STEPS = 5


def run_pretraining(args: PretrainArguments | dict) -> dict[str, Any]:
    """Pretrain astroPT as configured; returns the run summary (also written to `output_dir/summary.json`).

    Args:
        args: `PretrainArguments` (e.g. from `parse_pretrain_args`) or a flat dict of config keys on top
            of the demo defaults (`{"output_dir": ..., "hidden_size": 64, "max_steps": 100}`).

    The summary holds at least `steps`, `tokens_seen`, `final_train_loss`, `final_val_loss`,
    `first_val_loss`, `skipped_samples`, `wall_seconds`, `num_processes`, and `status`: "completed",
    "interrupted" after SIGTERM, or "failed" (with `reason` and `last_checkpoint`) after a non-finite loss
    or a failed write.

    Raises:
        ConfigError: bad settings, a resume with settings other than the recorded ones, or an output
            folder in use by another run (`OutputDirLocked`).
    """
    if isinstance(args, dict):
        args = build_pretrain_args(args)
    validate_pretrain_args(args)
    if args.push_to_hub:
        check_push_possible(args.hub_model_id)
    check_tracker_installed(args.report_to)
    reset_accelerate_state()  # an Accelerator made earlier in this process fixed its precision: the run sets its own
    try:
        trainer = Pretrainer(args)
        try:
            return trainer.run()
        finally:
            trainer.close()
    finally:
        reset_accelerate_state()


class Pretrainer:
    """One pretraining run. `__init__` sets up (accelerator, output folder, data, model, optimizer); `run`
    then calls `resume`, `start`, `train` (which calls `train_step`, `log_progress`, `evaluate` and `save`)
    and `finish`, in that order: checkpoints restore the RNG, and every DataLoader started afterwards draws
    from it, so a resumed run matches an uninterrupted one only if the order stays as it is.

    Two dicts hold what checkpoints carry: `state` (the same on every process: steps, counts, losses;
    `trainer_state.json`) and `data_state` (this process's data position and unreduced sums;
    `data_state_<rank>.json`).
    """

    def __init__(self, args: PretrainArguments):
        self.args = args
        self.started = time.perf_counter()
        self.output_dir = Path(args.output_dir)
        self.config = args.model_config()
        self.processor = args.image_processor()
        self.spectrum_extractor = args.spectrum_feature_extractor()  # None unless the model reads spectra
        self.saved_processor = processor_to_save(self.processor, self.spectrum_extractor)
        self.loss_parts = LossParts(self.config)  # each modality's part of the logged loss (multimodal models)
        self._setup_accelerator()
        # Before anything in the folder is read or deleted: a fresh start must not clean up a live run.
        self.lock = lock_output_dir(self.accelerator, self.output_dir)
        try:
            self.resume_path = resolve_resume_path(args.resume_from_checkpoint, self.output_dir)
            self.settings = run_settings(args.to_flat_dict(), args.resolved_lr_decay_steps(), self.config,
                                         self.processor)
            self._check_resume_settings()  # before the data is loaded and before any weights
            prepare_output_dir(args, self.output_dir, self.resume_path, self.accelerator)
            self.metrics = MetricsLog(self.output_dir / "metrics.jsonl")
            self._setup_data()
            self._setup_model()
        except BaseException:
            self.close()
            raise
        self.health = RunHealth(self.accelerator, self.output_dir)
        self.state: dict[str, Any] = {
            "step": 0, "images_seen": 0, "skipped_samples": 0, "wall_seconds": 0.0, "data_seconds": 0.0,
            "first_val_loss": None, "last_val_loss": None, "last_train_loss": None,
        }
        self.data_state: dict[str, Any] = {
            "epoch": 0, "batches_in_epoch": 0, "window_loss_sum": 0.0, "window_images": 0,
            "window_steps": 0, "local_images": 0, "local_skipped": 0,
            **self.loss_parts.initial_state(),
        }

    def run(self) -> dict[str, Any]:
        self.resume()
        self.start()
        return self.finish(self.train())

    def close(self) -> None:
        """Release the output folder (idempotent)."""
        if self.lock is not None:
            self.lock.release()

    # --- setup --------------------------------------------------------------------------------------

    def _setup_accelerator(self) -> None:
        args = self.args
        self.mixed_precision = resolve_mixed_precision(args.mixed_precision)
        self.trackers = None if args.report_to == "none" else args.report_to
        self.accelerator = accelerator = Accelerator(
            mixed_precision=self.mixed_precision,
            log_with=self.trackers,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "runs")
            ),
            step_scheduler_with_optimizer=False,  # we step it once per optimizer update, on every process
            dynamo_backend="inductor" if args.compile else None,
        )
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.main = accelerator.is_main_process
        # Set after creation: the process count is only known once the Accelerator has connected the processes.
        accelerator.gradient_accumulation_steps = args.resolved_accumulation(self.world)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.world:
            raise ConfigError(
                f"{launched} processes were launched but they are not connected (this one sees "
                f"{self.world}). On CPUs launch with: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
                "--num_processes N scripts/pretrain.py (a config file with use_cpu: true does not connect them)"
            )

    def _setup_data(self) -> None:
        args, started = self.args, time.perf_counter()
        self.train_source, self.val_source = load_pretraining_sources(args, self.accelerator)
        self.collator, self.val_collator = pretraining_collators(
            (self.train_source, self.val_source), self.processor, self.config, args.max_image_side_factor, self.main,
            spectrum_extractor=self.spectrum_extractor)
        self.eval_batch_size = args.resolved_eval_batch_size()
        self.num_val_items = args.eval_batches * self.eval_batch_size
        self.num_train = count_items(self.train_source)
        self.batches_per_epoch = (
            self.num_train // (args.batch_size * self.world) if self.num_train is not None else None
        )
        self.data_seconds = time.perf_counter() - started  # loading or generating the data set

    def _setup_model(self) -> None:
        args, accelerator = self.args, self.accelerator
        set_seed(args.seed)  # the same initial weights on every process
        model = AstroPTForPreTraining(self.config)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.num_parameters = sum(p.numel() for p in model.parameters())
        optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, tuple(args.betas), args.adam_epsilon)
        scheduler = build_scheduler(
            optimizer, args.learning_rate, args.resolved_min_lr(), args.warmup_steps, args.resolved_lr_decay_steps()
        )
        deepspeed_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        if deepspeed_plugin is not None and deepspeed_plugin.is_auto("train_micro_batch_size_per_gpu"):
            # our DataLoaders are not prepared (we shard ourselves), so DeepSpeed learns the batch size here
            deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.batch_size
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.accumulation = accelerator.gradient_accumulation_steps  # DeepSpeed's config may have changed it
        self.tokens_per_image = self.config.num_patches
        self.tokens_per_step = args.batch_size * self.accumulation * self.world * self.tokens_per_image

    # --- resume and start ---------------------------------------------------------------------------

    def _check_resume_settings(self) -> None:
        if self.resume_path is None:
            return
        try:
            checked = check_run_settings(self.resume_path, self.settings)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not checked and self.main:
            logger.warning("%s records no run settings (saved by an older version): resuming without checking "
                           "that this run's settings match it", self.resume_path)

    def resume(self) -> None:
        """Restore model, optimizer, scheduler, RNG and both state dicts from `resume_path`, if there is one."""
        if self.resume_path is not None:
            saved_state, saved_data = load_checkpoint(self.accelerator, self.resume_path)
            self.state.update(saved_state)
            self.data_state.update(saved_data)
            self.accelerator.print(f"Resumed from {self.resume_path} at step {self.state['step']}")
            if self.main:
                self.metrics.truncate_after(self.state["step"])
        self.start_step = self.step = self.state["step"]
        self.wall_before = self.state["wall_seconds"]
        self.data_before = self.state.get("data_seconds", 0.0)  # from earlier sessions of a resumed run

    def start(self) -> None:
        """The training stream at the resumed position, the images of the prediction grids, trackers and
        the banner."""
        args = self.args
        self.stream = TrainBatchStream(
            self.train_source, self.collator, args.batch_size, self.rank, self.world, args.seed, args.num_workers,
            args.shuffle_buffer_size, epoch=self.data_state["epoch"],
            batches_in_epoch=self.data_state["batches_in_epoch"],
        )
        self.plot_batch = first_images(self.val_source, self.val_collator, args.num_plot_images)
        if self.trackers:
            self.accelerator.init_trackers(args.run_name, config=tracker_config(args))
        self.accelerator.print(run_banner(self))
        self.debug_dir = self.output_dir / "debug"
        self.sample_log = None
        if args.record_sample_ids:
            self.debug_dir.mkdir(parents=True, exist_ok=True)
            self.sample_log = open(self.debug_dir / f"samples-rank{self.rank}.jsonl", "a")

    # --- train --------------------------------------------------------------------------------------

    def train(self) -> str:
        """Optimizer steps up to `max_steps`, with logging, evaluation and checkpoints; returns the status:
        "completed", "interrupted" when a SIGTERM (on any process) stopped it after a checkpoint, or
        "failed" (`health.failure` says why) when a health check or a checkpoint save failed."""
        args = self.args
        self.model.train()
        self.progress = tqdm(total=args.max_steps, initial=self.start_step, disable=not self.main,
                             desc="pretraining", dynamic_ncols=True)
        self.segment_start, self.segment_images = time.perf_counter(), 0
        status = "completed"
        with StopSignal() as stop:
            while self.step < args.max_steps:
                self.train_step()
                step = self.step
                logging_step = step % args.log_steps == 0 or step == args.max_steps
                if logging_step:
                    self.log_progress()
                evaluating = step % args.eval_steps == 0 or step == args.max_steps
                if evaluating:
                    self.evaluate()
                stopping = any_process(self.accelerator, stop.requested)
                saving = stopping or should_save(step, args.max_steps, args.save_steps, args.save_schedule)
                checking = self.world == 1 or logging_step or evaluating or saving or step % HEALTH_CHECK_STEPS == 0
                if checking and self.health.check(step, self.model if saving else None) or saving and not self.save():
                    status = "failed"
                    self.accelerator.print(f"\nStopped at step {step}: {self.health.failure}")
                    break
                if stopping and step < args.max_steps:
                    status = "interrupted"
                    self.accelerator.print(
                        f"\nStopped by a signal at step {step}; resume with --resume_from_checkpoint latest"
                    )
                    break
        self.progress.close()
        if self.sample_log is not None:
            self.sample_log.close()
        return status

    def train_step(self) -> None:
        """One optimizer update: `accumulation` micro-batches under `accelerator.accumulate`, clipping on the
        update that syncs gradients, then one scheduler step."""
        accelerator, model, data_state = self.accelerator, self.model, self.data_state
        for _ in range(self.accumulation):
            batch = next(self.stream)
            data_state["local_skipped"] += int(batch["num_skipped"])
            if self.sample_log is not None:
                self.sample_log.write(json.dumps({"step": self.step, "ids": [str(i) for i in batch["ids"]]}) + "\n")
            inputs, count = model_inputs(batch, self.config, accelerator.device)
            with accelerator.accumulate(model):
                output = model(**inputs)
                # every item of an empty batch was skipped: its weight-zero pass keeps the processes in step
                loss = output.loss if count else output.loss * 0.0
                accelerator.backward(loss)
                if accelerator.sync_gradients and self.args.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), self.args.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            value = self.loss_parts.add(data_state, batch, output, loss, count)  # syncs once: checking it is free
            self.health.observe_loss(self.step + 1, value)
            data_state["window_loss_sum"] += value * count
            data_state["window_images"] += count
            data_state["local_images"] += count
            self.segment_images += count
        self.scheduler.step()
        self.step += 1
        data_state["window_steps"] += 1
        self.progress.update(1)

    def log_progress(self) -> None:
        """The training loss of the window since the last log (over all processes), the learning rate,
        counts and throughput: to metrics.jsonl, the progress bar and the tracker."""
        data_state, stream = self.data_state, self.stream
        loss_sum, window_images, images, skipped, *part_sums = sum_over_processes(
            self.accelerator, [data_state["window_loss_sum"], data_state["window_images"],
                               data_state["local_images"], data_state["local_skipped"],
                               *self.loss_parts.local_sums(data_state)]
        )
        train_loss = loss_sum / window_images if window_images else float("nan")
        elapsed = time.perf_counter() - self.segment_start
        tokens_per_second = self.segment_images * self.world * self.tokens_per_image / max(elapsed, 1e-9)
        lr = self.scheduler.get_last_lr()[0]
        record = {"step": self.step, "train_loss": train_loss, "lr": lr,
                  "tokens_seen": int(images) * self.tokens_per_image, "images_seen": int(images),
                  "skipped_samples": int(skipped), "tokens_per_second": tokens_per_second,
                  "epoch": stream.epoch + stream.batches_in_epoch / self.batches_per_epoch
                  if self.batches_per_epoch else stream.epoch}
        record.update(self.loss_parts.take(data_state, part_sums))
        self.state["last_train_loss"] = train_loss
        data_state.update(window_loss_sum=0.0, window_images=0, window_steps=0)
        if self.main:
            self.health.write("metrics.jsonl", self.metrics.write, record)
        self.progress.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}")
        if self.trackers:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=self.step)

    def evaluate(self) -> float:
        """Validation loss on the fixed subset (and the prediction grid); logged and returned."""
        args, step = self.args, self.step
        loader = validation_batches(self.val_source, self.val_collator, self.num_val_items, self.eval_batch_size,
                                    self.rank, self.world, args.num_workers)
        losses = evaluate_losses(self.accelerator, self.model, loader, self.config)
        val_loss, val_parts = losses.loss, {f"val_{part}": value for part, value in losses.parts.items()}
        if self.plot_batch is not None and self.spectrum_extractor is not None:
            write_spectrum_panels(self.accelerator, self.model, self.plot_batch, self.output_dir, step,
                                  self.health.write)
        if self.plot_batch is not None:
            panels = predicted_images(self.accelerator, self.model, self.plot_batch["pixel_values"])
            if self.main:
                grid = self.output_dir / "eval" / f"predictions-step{step:06d}.png"
                self.health.write("the prediction grid", save_prediction_grid, panels, grid, self.plot_batch["ids"],
                                  step, stretch=input_description(self.processor, self.config),
                                  title=f"astroPT predictions — {self.output_dir.name}")
        if self.state["first_val_loss"] is None:
            self.state["first_val_loss"] = val_loss
        self.state["last_val_loss"] = val_loss
        if self.main:
            self.health.write("metrics.jsonl", self.metrics.write, {"step": step, "val_loss": val_loss, **val_parts})
            self.health.write("loss.png", self._plot_losses)
        if self.trackers:
            self.accelerator.log({"val_loss": val_loss, **val_parts}, step=step)
        return val_loss

    def save(self) -> bool:
        """An atomic checkpoint of this step (every process must call it), with `model/` if the schedule asks;
        False, with `health.failure` set, if it could not be written (the earlier checkpoints stay as they were)."""
        args, (images, skipped) = self.args, self._global_counts()
        shared = dict(self.state, step=self.step, images_seen=images, tokens_seen=images * self.tokens_per_image,
                      skipped_samples=skipped, wall_seconds=self._wall_seconds(), data_seconds=self._data_seconds())
        export = (lambda folder: save_final_model(self.accelerator, self.model, self.processor, folder)) \
            if saves_model(args.save_schedule, args.save_model_in_checkpoints) else None
        try:
            save_checkpoint(self.accelerator, self.output_dir, self.step, shared,
                            dict(self.data_state, **self.stream.state()), args.save_total_limit, self.settings,
                            is_log_checkpoint(self.step, args.max_steps, args.save_steps, args.save_schedule), export)
        except CheckpointSaveError as err:
            self.health.failure = str(err)
            return False
        return True

    # --- finish -------------------------------------------------------------------------------------

    def finish(self, status: str) -> dict[str, Any]:
        """Final model (if completed), card, loss curves, summary.json and the closing message; returns the
        summary."""
        args, accelerator, output_dir = self.args, self.accelerator, self.output_dir
        if status == "completed":
            failure = save_final_model(accelerator, self.model, self.saved_processor, output_dir)
            if failure is not None:
                status, self.health.failure = "failed", failure
                accelerator.print(f"\n{failure}")
        summary = run_summary(self, status, self._global_counts(), self._wall_seconds(), self._data_seconds())
        if args.record_sample_ids:
            (self.debug_dir / f"final-rank{self.rank}.json").write_text(json.dumps({
                "rank": self.rank, "num_processes": self.world, "steps": self.step,
                "weights_sha256": weights_digest(accelerator.unwrap_model(self.model, keep_torch_compile=False)),
            }))
        if self.main:
            self.health.write("loss.png", self._plot_losses)
            if status == "completed":
                write_model_card(output_dir / "README.md", args, self.config, summary, args.hub_model_id or str(output_dir))
            try:
                write_json_atomic(output_dir / "summary.json", summary)
            except OSError as err:  # the disk that failed a checkpoint may fail this too: say so, in one line
                logger.error("could not write %s either: %s", output_dir / "summary.json", err)
            accelerator.print(final_message(summary, output_dir))
        if self.trackers:
            accelerator.end_training()
        if status == "completed" and args.push_to_hub and self.main:
            summary["hub_url"] = push_folder(output_dir, args.hub_model_id, args.hub_private)
            accelerator.print(f"Uploaded to {summary['hub_url']}")
        accelerator.wait_for_everyone()
        return summary

    # --- small helpers ------------------------------------------------------------------------------

    def _global_counts(self) -> tuple[int, int]:
        """(images trained on, samples skipped) over all processes: a collective."""
        images, skipped = sum_over_processes(
            self.accelerator, [self.data_state["local_images"], self.data_state["local_skipped"]]
        )
        return int(images), int(skipped)

    def _wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def _data_seconds(self) -> float:
        return self.data_before + self.data_seconds

    def _plot_losses(self) -> None:
        """loss.png from the finite losses logged so far (non-finite ones are null in metrics.jsonl);
        nothing while there are none."""
        losses = ("train_loss", "val_loss")
        if any(record.get(key) is not None for record in self.metrics.read() for key in losses):
            plot_loss_curves(self.metrics.path, self.output_dir / "loss.png", title="astroPT pretraining",
                             run_name=self.output_dir.name, loss_name=loss_description(self.config),
                             parts=self.loss_parts.names)


__all__ = ["Pretrainer", "run_pretraining"]
