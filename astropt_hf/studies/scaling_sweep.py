"""The scaling sweep: train a ladder of model sizes the same way, one after another, then fit and report.

Upstream astroPT's headline result is that validation loss falls with model size along a saturating
power law, and that probe quality grows with size. The sweep trains every size through
`astropt_hf.training` (so `accelerate launch` works) with the same data, schedule and token budget,
optionally runs the linear probes of `astropt_hf.downstream` on each, and writes its outputs through
`astropt_hf.studies.scaling_report` (the law itself is in `astropt_hf.studies.scaling_laws`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropt_hf.run_files import check_recorded_settings, json_safe, record_settings
from astropt_hf.studies.common import completed_summary, flag_names, load_probe_source, probe_score
from astropt_hf.studies.scaling_laws import PARAM_COUNTS, SizeSpec, count_parameters
from astropt_hf.studies.scaling_report import number_text, read_validation_curve, write_scaling_outputs

__all__ = [
    "SweepOptions",
    "build_size_arguments",
    "check_sweep_settings",
    "run_scaling_sweep",
    "shared_settings",
    "size_output_dir",
    "validate_sweep_options",
]


# Keys the sweep sets per size; giving them on the command line would break "one shape per rung".
SIZE_KEYS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
PER_RUN_KEYS = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir")
# Settings that do not change what a size learns: they may differ when a sweep is resumed.
NON_RESULT_KEYS = (
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "num_workers", "report_to", "run_name",
    "log_steps", "save_steps", "save_schedule", "save_total_limit", "save_model_in_checkpoints",
    "push_to_hub", "hub_model_id", "hub_private", "record_sample_ids",
    "data_cache_dir", "num_plot_images", "compile", "gradient_checkpointing",
)
SETTINGS_FILE = "sweep_settings.json"


@dataclass
class SweepOptions:
    """What a scaling sweep trains and probes.

    Attributes:
        sizes: the ladder (see `parse_sizes`).
        output_dir: sweep folder; size `name` trains in `output_dir/sizes/<name>`.
        pretrain_argv: pretraining command-line settings shared by every size (`--config`, `--max_steps`,
            `--dataset`, `--learning_rate`, ...), as `astropt_hf.training.parse_pretrain_args` reads them.
        probe_targets: catalogue columns to probe on every size (empty: no probes).
        probe_split: split the probes read (held out from pretraining by default).
        param_count: "non_embedding" or "total": which count the fit and plots use (both are recorded).
        preset_learning_rates: give preset names their upstream peak learning rate instead of the shared one.
        probe_batch_size: batch size for embedding the probe galaxies.
    """

    sizes: list[SizeSpec]
    output_dir: Path
    pretrain_argv: list[str] = field(default_factory=list)
    probe_targets: list[str] = field(default_factory=list)
    probe_split: str = "test"
    param_count: str = "non_embedding"
    preset_learning_rates: bool = False
    probe_batch_size: int = 64


def size_output_dir(output_dir: str | Path, size: SizeSpec) -> Path:
    """Where one size trains: `output_dir/sizes/<name>`."""
    return Path(output_dir) / "sizes" / size.name


def build_size_arguments(options: SweepOptions, size: SizeSpec):
    """The `PretrainArguments` of one size: the shared settings, this size's shape, its own folder, and
    `resume_from_checkpoint latest` (a half-trained size continues; an empty folder starts afresh)."""
    from astropt_hf.training import parse_pretrain_args

    overrides = [
        "--output_dir", str(size_output_dir(options.output_dir, size)),
        "--resume_from_checkpoint", "latest",
        "--num_hidden_layers", str(size.num_hidden_layers),
        "--num_attention_heads", str(size.num_attention_heads),
        "--hidden_size", str(size.hidden_size),
        "--intermediate_size", "null",  # 4 x width for every size, whatever a preset file says
    ]
    if options.preset_learning_rates and size.learning_rate is not None:
        overrides += ["--learning_rate", repr(size.learning_rate)]
    return parse_pretrain_args([*options.pretrain_argv, *overrides])


def validate_sweep_options(options: SweepOptions) -> list:
    """Check everything before any training starts; returns each size's `PretrainArguments`.

    Raises `ValueError` (or the pretraining `ConfigError`) naming the flag or key at fault.
    """
    if not options.sizes:
        raise ValueError("no sizes given; expected e.g. --sizes 1x2x32,2x4x64")
    if options.param_count not in PARAM_COUNTS:
        raise ValueError(f"--param_count {options.param_count!r} is not valid; expected one of {list(PARAM_COUNTS)}")
    clashes = sorted(flag_names(options.pretrain_argv) & set(SIZE_KEYS + PER_RUN_KEYS))
    if clashes:
        raise ValueError(
            f"the sweep sets {', '.join('--' + c for c in clashes)} itself (per size: shape from --sizes, "
            f"folder output_dir/sizes/<name>, resumption automatic); remove them from the command line"
        )
    arguments = [build_size_arguments(options, size) for size in options.sizes]
    if options.probe_targets and arguments[0].streaming:
        raise ValueError("--probe_targets needs a map-style dataset; drop --streaming or the probes")
    check_sweep_settings(options.output_dir, shared_settings(options))
    return arguments


def shared_settings(options: SweepOptions) -> dict[str, Any]:
    """The settings every size shares and that change results (shapes and folders excluded). Model and
    processor keys are recorded with their effective values, so that a changed library default is caught
    as well as a changed flag."""
    from astropt_hf.training import known_keys, parse_pretrain_args

    arguments = parse_pretrain_args(list(options.pretrain_argv))
    settings = dict(arguments.to_flat_dict())
    config, processor = arguments.model_config(), arguments.image_processor()
    for key, group in known_keys().items():
        if group == "model":
            settings[key] = getattr(config, key)
        elif group == "processor":
            settings[key] = getattr(processor, key, settings.get(key))
    settings = {k: v for k, v in sorted(settings.items()) if k not in SIZE_KEYS + NON_RESULT_KEYS}
    settings["preset_learning_rates"] = options.preset_learning_rates
    return json_safe(settings)


def check_sweep_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a sweep with settings that change results: a different schedule, data or budget
    would make the sizes incomparable. Names every changed key with its recorded and new value."""
    check_recorded_settings(
        Path(output_dir) / SETTINGS_FILE, settings, "this sweep",
        "Every size must share data, schedule and token budget: use the recorded settings, or a new --output_dir",
    )


def record_sweep_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    """Write the shared settings on a sweep's first run (main process only)."""
    record_settings(Path(output_dir) / SETTINGS_FILE, settings)


def _size_entry(size: SizeSpec, arguments, counts: dict[str, int], summary: dict[str, Any],
                param_count: str) -> dict[str, Any]:
    return {
        "name": size.name,
        "shape": size.shape,
        "num_hidden_layers": size.num_hidden_layers,
        "num_attention_heads": size.num_attention_heads,
        "hidden_size": size.hidden_size,
        "params": counts[param_count],
        "params_non_embedding": counts["non_embedding"],
        "params_total": counts["total"],
        "final_val_loss": summary.get("final_val_loss"),
        "final_train_loss": summary.get("final_train_loss"),
        "first_val_loss": summary.get("first_val_loss"),
        "steps": summary.get("steps"),
        "tokens_seen": summary.get("tokens_seen"),
        "tokens_per_step": summary.get("tokens_per_step"),
        "learning_rate": arguments.learning_rate,
        "wall_seconds": summary.get("wall_seconds"),
        "output_dir": f"sizes/{size.name}",  # relative to the sweep folder
    }


def _broadcast(value: Any, state) -> Any:
    """The main process's `value` on every process (decisions from files only the main one may see)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def probe_size(options: SweepOptions, arguments, size: SizeSpec, source, device: str,
               reuse: bool = True) -> dict[str, Any]:
    """Linear probes of one trained size; returns {target: {feature_set: metrics}}. With `reuse`, earlier
    results covering every target are read back instead (the sweep passes False for sizes it just trained)."""
    from astropt_hf.downstream.linear_probe import probe_trained_run

    return probe_trained_run(size_output_dir(options.output_dir, size), source, options.probe_targets,
                             batch_size=options.probe_batch_size, seed=arguments.seed, device=device, reuse=reuse)


def run_scaling_sweep(options: SweepOptions, log=print) -> dict[str, Any]:
    """Train every size with the same data, schedule and token budget, then fit, plot and summarise.

    Sizes run one after another in this process (under `accelerate launch`, every process takes part in
    each size's training; only the main process writes the sweep's files and runs the probes). A size
    whose folder holds a completed `summary.json` is not retrained; a half-trained one resumes from its
    latest checkpoint. After each size, scaling.json / scaling.png / scaling.md are rewritten, so an
    interrupted sweep still leaves the fit of the sizes done so far.

    Returns the scaling.json content (on every process; probes only on the main one).
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from astropt_hf.training import run_pretraining

    arguments = validate_sweep_options(options)
    # As AcceleratorState does: `accelerate launch` on CPUs says so only through this variable, and
    # PartialState would otherwise leave the processes unconnected.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    output_dir = Path(options.output_dir)
    settings = shared_settings(options)
    if state.is_main_process:
        record_sweep_settings(output_dir, settings)
    state.wait_for_everyone()
    entries: list[dict[str, Any]] = []
    trained: set[str] = set()
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for index, (size, size_args) in enumerate(zip(options.sizes, arguments), start=1):
        size_dir = size_output_dir(output_dir, size)
        counts = count_parameters(size_args.model_config())
        summary = _broadcast(completed_summary(size_dir, size_args.max_steps) if state.is_main_process else None,
                             state)
        action = "reused"
        if summary is None:
            action = "trained"
            trained.add(size.name)
            summary = run_pretraining(size_args)
            if summary.get("status") != "completed":  # SIGTERM: the size saved a checkpoint; stop the sweep
                if state.is_main_process:
                    log(f"stopped during {size.name} ({summary.get('status')}); run the same command to resume")
                return {"sizes": entries, "stopped": size.name}
        entry = _size_entry(size, size_args, counts, summary, options.param_count)
        entries.append(entry)
        curves[size.name] = read_validation_curve(size_dir / "metrics.jsonl")
        if state.is_main_process:
            log(
                f"[{index}/{len(options.sizes)}] {size.name} ({size.shape}): "
                f"{counts['non_embedding']:,} non-embedding / {counts['total']:,} total params; "
                f"final val loss {number_text(entry['final_val_loss'], '.4f')} "
                f"({action}, {number_text(entry['wall_seconds'], '.0f')} s, {entry['tokens_seen'] or 0:,} tokens)"
            )
            write_scaling_outputs(entries, curves, output_dir, options.param_count)
    if not state.is_main_process:
        return {"sizes": entries}
    if options.probe_targets:
        source = load_probe_source(arguments[0], options.probe_split)
        device = str(state.device)
        for entry, size, size_args in zip(entries, options.sizes, arguments):
            entry["probe"] = probe_size(options, size_args, size, source, device, reuse=size.name not in trained)
            scores = {t: probe_score(m.get("astropt", {})) for t, m in entry["probe"].items()}
            log(f"probes {size.name}: " + ", ".join(
                f"{t} {s[0]}={s[1]:.3f}" for t, s in scores.items() if s is not None))
    result = write_scaling_outputs(entries, curves, output_dir, options.param_count)
    tokens = {entry["tokens_seen"] for entry in entries}
    if len(tokens) > 1:
        log(f"warning: the sizes saw different numbers of tokens {sorted(tokens)}; compare with care")
    fit = result["fit"]
    log(
        f"fit ({fit['model']}, {options.param_count} params): alpha = {number_text(fit.get('alpha'), '.3f')} "
        f"± {number_text(fit.get('alpha_err'), '.3f')}, L_inf = {number_text(fit.get('L_inf'), '.4f')} "
        f"± {number_text(fit.get('L_inf_err'), '.4f')}, N_c = {number_text(fit.get('N_c'), '.3g')} "
        f"(log10 {number_text(fit.get('log10_N_c'), '.2f')} ± {number_text(fit.get('log10_N_c_err'), '.2f')})"
    )
    log(f"wrote {output_dir / 'scaling.json'}, scaling.png, scaling.md"
        + (", probe_scaling.png" if options.probe_targets else ""))
    return result
