"""What a scaling sweep writes: scaling.json (sizes and fit), scaling.png / probe_scaling.png and scaling.md."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from astropt_hf.plotting.scaling import plot_probe_scaling, plot_scaling
from astropt_hf.run_files import json_safe, write_json_atomic, write_text_atomic
from astropt_hf.studies.common import probe_score
from astropt_hf.studies.scaling_laws import describe_fit, fit_saturating_power_law

__all__ = ["number_text", "read_validation_curve", "scaling_markdown", "write_scaling_outputs"]


def read_validation_curve(metrics_path: str | Path) -> tuple[list[int], list[float]]:
    """(steps, val_losses) from a pretraining `metrics.jsonl` (rows with a `val_loss`)."""
    steps: list[int] = []
    losses: list[float] = []
    path = Path(metrics_path)
    if not path.exists():
        return steps, losses
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number} is not valid JSON ({error}); expected one object per line") from error
        if "val_loss" in row and row["val_loss"] is not None:
            steps.append(int(row["step"]))
            losses.append(float(row["val_loss"]))
    return steps, losses


def number_text(value: Any, fmt: str) -> str:
    """`value` formatted with `fmt`, or "n/a" for a missing one."""
    return "n/a" if value is None else f"{value:{fmt}}"


def scaling_markdown(result: Mapping[str, Any]) -> str:
    """A short markdown summary of a scaling.json: the table of sizes, the fit and any probe scores."""
    fit = result["fit"]
    lines = ["# Scaling sweep", "",
             f"Parameter count used for the fit: **{fit.get('param_count', 'non_embedding')}**.", "",
             "| size | layers x heads x width | params (non-emb) | params (total) | final val loss | final train loss |",
             "|---|---|---:|---:|---:|---:|"]
    for size in result["sizes"]:
        lines.append(
            f"| {size['name']} | {size.get('shape', '')} | {size.get('params_non_embedding', 0):,} | "
            f"{size.get('params_total', 0):,} | {number_text(size.get('final_val_loss'), '.4f')} | "
            f"{number_text(size.get('final_train_loss'), '.4f')} |"
        )
    lines += ["", f"Fit ({fit['model']}, {fit['num_points']} points):", ""]
    if fit.get("alpha") is not None:
        lines.append("- " + describe_fit(fit).replace("\n", "\n- "))
        lines.append(f"- residual rms = {number_text(fit.get('residual_rms'), '.2g')}")
    for note in fit.get("notes", []):
        lines.append(f"- note: {note}")
    probed = [size for size in result["sizes"] if size.get("probe")]
    if probed:
        lines += ["", "Linear probes (astroPT embeddings; random-init and pixel-PCA baselines in brackets):", ""]
        targets = list(dict.fromkeys(t for size in probed for t in size["probe"]))
        lines.append("| size | " + " | ".join(targets) + " |")
        lines.append("|---|" + "---:|" * len(targets))
        for size in probed:
            cells = []
            for target in targets:
                scores = {fs: probe_score(m) for fs, m in size["probe"].get(target, {}).items()}
                main = scores.get("astropt")
                baselines = ", ".join(f"{s[1]:.3f}" for fs, s in scores.items() if fs != "astropt" and s)
                cell = f"{main[0]} {main[1]:.3f}" if main else "n/a"
                cells.append(cell + (f" ({baselines})" if baselines else ""))
            lines.append(f"| {size['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_scaling_outputs(
    sizes: Sequence[Mapping[str, Any]],
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    output_dir: str | Path,
    param_count: str = "non_embedding",
) -> dict[str, Any]:
    """Fit the finished sizes and write scaling.json, scaling.png, probe_scaling.png (if probed) and
    scaling.md into `output_dir`. Returns the scaling.json content."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    done = [size for size in sizes if size.get("final_val_loss") is not None]
    fit = fit_saturating_power_law([s["params"] for s in done], [s["final_val_loss"] for s in done])
    result = {"sizes": [dict(size) for size in sizes], "fit": {**fit.to_dict(), "param_count": param_count}}
    result = json_safe(result)
    write_json_atomic(output_dir / "scaling.json", result)
    plot_scaling(result["sizes"], result["fit"], curves, output_dir / "scaling.png", param_count)
    plot_probe_scaling(result["sizes"], output_dir / "probe_scaling.png", param_count)
    write_text_atomic(output_dir / "scaling.md", scaling_markdown(result))
    return result
