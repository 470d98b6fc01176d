"""Scaling sweeps: train a ladder of model sizes the same way, fit L(N) = L_inf + (N_c / N)^alpha, plot.

Upstream astroPT's headline result is that validation loss falls with model size along a saturating
power law, and that probe quality grows with size. This module owns the pieces of that experiment that
are not training itself:

- size parsing: preset names (`astropt-001M`, ...) or shapes `LAYERSxHEADSxWIDTH` (`2x4x64`);
- parameter counting (total and non-embedding, from a meta-device model: no memory, any size);
- the power-law fit with uncertainties;
- plots, `scaling.json` and a markdown summary;
- the sweep driver, which trains every size through `astropt_hf.training` (so `accelerate launch` works)
  and optionally runs the linear probes of `astropt_hf.downstream.embeddings` / `astropt_hf.downstream.probes` on each.

Parameter count used for the fit: **non-embedding** by default (Kaplan et al. 2020): everything except
the patch encoder, the learned position table and the next-patch head. Those input/output layers scale
with the patch size rather than with depth, and for tiny models they dominate the total, which bends
the total-count law; both counts are recorded for every size.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astropt_hf import ASTROPT_PRESETS, AstroPTConfig, AstroPTForPreTraining

PARAM_COUNTS = ("non_embedding", "total")
# Parameter-name prefixes that make up the "embedding" part: the patch tokeniser, the position table and
# the next-patch head (the analogue of a language model's tied unembedding).
EMBEDDING_PREFIXES = ("astropt.embeddings.", "patch_head.")
_SHAPE_PATTERN = re.compile(r"^(\d+)x(\d+)x(\d+)$")

__all__ = [
    "EMBEDDING_PREFIXES",
    "PARAM_COUNTS",
    "PowerLawFit",
    "SizeSpec",
    "SweepOptions",
    "build_size_arguments",
    "check_sweep_settings",
    "completed_summary",
    "count_parameters",
    "fit_saturating_power_law",
    "flag_names",
    "format_count",
    "parse_size",
    "parse_sizes",
    "plot_probe_scaling",
    "plot_scaling",
    "probe_score",
    "read_validation_curve",
    "run_scaling_sweep",
    "scaling_markdown",
    "shared_settings",
    "size_output_dir",
    "validate_sweep_options",
    "write_scaling_outputs",
    "write_text_atomic",
]


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class SizeSpec:
    """One rung of the ladder: a name and the transformer shape it stands for.

    `learning_rate` is the upstream peak rate for preset names and None for plain shapes.
    """

    name: str
    num_hidden_layers: int
    num_attention_heads: int
    hidden_size: int
    learning_rate: float | None = None

    @property
    def shape(self) -> str:
        """The shape written `LAYERSxHEADSxWIDTH`."""
        return f"{self.num_hidden_layers}x{self.num_attention_heads}x{self.hidden_size}"

    def model_overrides(self) -> dict[str, int]:
        """The `AstroPTConfig` fields this size sets."""
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "hidden_size": self.hidden_size,
        }


def parse_size(text: str) -> SizeSpec:
    """Parse one size: a preset name from `ASTROPT_PRESETS` or a shape `LAYERSxHEADSxWIDTH`.

    Raises `ValueError` naming the size, what was expected and what was found.
    """
    spec = text.strip()
    if spec in ASTROPT_PRESETS:
        preset = ASTROPT_PRESETS[spec]
        return SizeSpec(
            name=spec,
            num_hidden_layers=preset["num_hidden_layers"],
            num_attention_heads=preset["num_attention_heads"],
            hidden_size=preset["hidden_size"],
            learning_rate=preset.get("learning_rate"),
        )
    match = _SHAPE_PATTERN.match(spec)
    if match is None:
        raise ValueError(
            f"size {text!r} is not valid; expected a preset name ({', '.join(ASTROPT_PRESETS)}) "
            f"or a shape LAYERSxHEADSxWIDTH of positive integers such as 2x4x64"
        )
    layers, heads, width = (int(group) for group in match.groups())
    for field_name, value in (("layers", layers), ("heads", heads), ("width", width)):
        if value <= 0:
            raise ValueError(f"size {text!r}: {field_name} must be a positive integer, got {value}")
    if width % heads != 0:
        raise ValueError(
            f"size {text!r}: width (hidden_size) {width} must be divisible by heads {heads} "
            f"(width % heads = {width % heads})"
        )
    return SizeSpec(name=spec, num_hidden_layers=layers, num_attention_heads=heads, hidden_size=width)


def parse_sizes(sizes: str | Sequence[str]) -> list[SizeSpec]:
    """Parse a comma-separated list (or a sequence) of sizes; at least one, no duplicates."""
    items = sizes.split(",") if isinstance(sizes, str) else list(sizes)
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ValueError(f"--sizes {sizes!r} is empty; expected e.g. 1x2x32,2x4x64 or astropt-001M,astropt-005M")
    specs = [parse_size(item) for item in items]
    shapes: dict[str, str] = {}
    for spec in specs:
        if spec.shape in shapes:
            raise ValueError(
                f"--sizes lists the shape {spec.shape} twice ({shapes[spec.shape]!r} and {spec.name!r})"
            )
        shapes[spec.shape] = spec.name
    return specs


def count_parameters(config: AstroPTConfig) -> dict[str, int]:
    """Total and non-embedding parameter counts of `AstroPTForPreTraining(config)`.

    The model is built on the meta device, so this costs no memory even for the 2.1B preset.
    Non-embedding excludes parameters whose names start with one of `EMBEDDING_PREFIXES`.
    """
    import torch

    with torch.device("meta"):
        model = AstroPTForPreTraining(config)
    total = 0
    embedding = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if name.startswith(EMBEDDING_PREFIXES):
            embedding += parameter.numel()
    return {"total": total, "non_embedding": total - embedding, "embedding": embedding}


# --------------------------------------------------------------------------- the fit


@dataclass
class PowerLawFit:
    """Result of fitting L(N) = L_inf + (N_c / N)^alpha.

    `model` says which law was fitted: "saturating_power_law" (all three parameters),
    "power_law" (L_inf fixed at 0; the fallback for fewer than `min_points_saturating` points or a
    failed saturating fit) or "none" (fewer than two points). Errors are one standard deviation from the
    covariance of the fit (None where they cannot be estimated: as many points as parameters).
    `covariance` is over (alpha, L_inf, log10_N_c) in that order.
    """

    model: str
    num_points: int
    alpha: float | None = None
    alpha_err: float | None = None
    L_inf: float | None = None
    L_inf_err: float | None = None
    N_c: float | None = None
    N_c_err: float | None = None
    log10_N_c: float | None = None
    log10_N_c_err: float | None = None
    residual_rms: float | None = None
    covariance: list[list[float | None]] | None = None
    notes: list[str] = field(default_factory=list)

    def predict(self, params: Any) -> np.ndarray:
        """Evaluate the fitted law at parameter counts `params`."""
        if self.alpha is None or self.log10_N_c is None:
            raise ValueError(f"no fitted law to evaluate (model={self.model!r})")
        params = np.asarray(params, dtype=float)
        l_inf = self.L_inf or 0.0
        return l_inf + np.exp(self.alpha * (self.log10_N_c * math.log(10) - np.log(params)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become None)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_points(params: Any, losses: Any, sigma: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n = np.asarray(params, dtype=float).ravel()
    loss = np.asarray(losses, dtype=float).ravel()
    if n.shape != loss.shape:
        raise ValueError(f"params and losses must have the same length; got {n.size} and {loss.size}")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError(f"params must be finite and positive; got {n.tolist()}")
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise ValueError(f"losses must be finite and positive; got {loss.tolist()}")
    if sigma is None:
        return n, loss, None
    sig = np.asarray(sigma, dtype=float).ravel()
    if sig.shape != loss.shape or not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise ValueError(f"sigma must be {loss.size} finite positive numbers; got {sig.tolist()}")
    return n, loss, sig


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _errors_from(covariance: np.ndarray) -> list[float | None]:
    diagonal = np.diag(covariance)
    return [_finite_or_none(math.sqrt(v)) if np.isfinite(v) and v >= 0 else None for v in diagonal]


def fit_saturating_power_law(
    params: Any,
    losses: Any,
    sigma: Any = None,
    min_points_saturating: int = 4,
) -> PowerLawFit:
    """Fit L(N) = L_inf + (N_c / N)^alpha to (parameter count, loss) points, with uncertainties.

    The least-squares fit runs in a well-conditioned parameterisation: with x = ln(N / N0), N0 the
    geometric mean of the counts, L = L_inf + exp(b - alpha * x), so that `b` (the log excess loss at the
    centre of the data) and `alpha` are nearly uncorrelated; N_c = N0 * exp(b / alpha) afterwards, its
    error propagated through the Jacobian of that map. Starting points come from straight-line fits of
    ln(L - L_inf) against x over a grid of L_inf values; bounds keep 0 <= L_inf < min(L) and
    0 < alpha <= 10.

    Args:
        params: parameter counts N (positive).
        losses: losses L (positive).
        sigma: optional one-sigma errors of the losses; when given they are taken as absolute, otherwise the
            covariance is scaled by the residual variance (errors then need more points than parameters).
        min_points_saturating: below this many points the law is fitted with L_inf fixed at 0 (a straight
            line in log-log), because three free parameters on three points leave no error estimate.

    Returns:
        `PowerLawFit`.
    """
    n, loss, sig = _check_points(params, losses, sigma)
    if n.size < 2:
        return PowerLawFit(model="none", num_points=int(n.size), notes=["fewer than 2 points: nothing to fit"])
    if np.unique(n).size < 2:
        return PowerLawFit(model="none", num_points=int(n.size), notes=["all points have the same size"])
    notes: list[str] = []
    if n.size >= min_points_saturating:
        fit = _fit_saturating(n, loss, sig, notes)
        if fit is not None:
            return fit
        notes.append("saturating fit failed; fell back to a pure power law (L_inf = 0)")
    else:
        notes.append(
            f"{n.size} points < {min_points_saturating}: fitted a pure power law with L_inf fixed at 0"
        )
    return _fit_pure_power_law(n, loss, sig, notes)


def _law(x: np.ndarray, l_inf: float, alpha: float, b: float) -> np.ndarray:
    return l_inf + np.exp(b - alpha * x)


def _starting_points(x: np.ndarray, loss: np.ndarray, alpha_max: float) -> list[tuple[float, float, float]]:
    """(L_inf, alpha, b) guesses from straight-line fits of ln(L - L_inf) on x, best first."""
    guesses = []
    for fraction in (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995):
        l_inf = fraction * loss.min()
        slope, intercept = np.polyfit(x, np.log(loss - l_inf), 1)
        alpha = float(np.clip(-slope, 1e-3, alpha_max * 0.99))
        guess = (l_inf, alpha, float(intercept))
        sse = float(np.sum((_law(x, *guess) - loss) ** 2))
        guesses.append((sse, guess))
    guesses.sort(key=lambda item: item[0])
    return [guess for _, guess in guesses]


def _fit_saturating(n: np.ndarray, loss: np.ndarray, sig: np.ndarray | None, notes: list[str]) -> PowerLawFit | None:
    from scipy.optimize import curve_fit

    alpha_max = 10.0
    log_n0 = float(np.mean(np.log(n)))
    x = np.log(n) - log_n0
    upper_l_inf = loss.min() * (1 - 1e-9)
    lower = (0.0, 1e-6, -50.0)
    upper = (upper_l_inf, alpha_max, 50.0)
    best = None
    for guess in _starting_points(x, loss, alpha_max)[:4]:
        start = np.clip(guess, np.add(lower, 1e-12), np.subtract(upper, 1e-12))
        try:
            theta, cov = curve_fit(
                _law, x, loss, p0=start, sigma=sig, absolute_sigma=sig is not None,
                bounds=(lower, upper), method="trf", max_nfev=20000, x_scale="jac",
            )
        except (RuntimeError, ValueError):
            continue
        weights = 1.0 if sig is None else 1.0 / sig**2
        chi2 = float(np.sum(weights * (_law(x, *theta) - loss) ** 2))
        if best is None or chi2 < best[0]:
            best = (chi2, theta, cov)
    if best is None:
        return None
    _, (l_inf, alpha, b), cov = best
    if n.size <= 3 and sig is None:
        cov = np.full((3, 3), np.nan)
    # (alpha, L_inf, log10 N_c) from (L_inf, alpha, b): log10 N_c = (log_n0 + b / alpha) / ln 10.
    log10_nc = (log_n0 + b / alpha) / math.log(10)
    jacobian = np.array([
        [0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, -b / alpha**2 / math.log(10), 1.0 / alpha / math.log(10)],
    ])
    cov_out = jacobian @ cov @ jacobian.T
    alpha_err, l_inf_err, log10_nc_err = _errors_from(cov_out)
    if l_inf <= 1e-9 * loss.min():
        notes.append("L_inf is at its lower bound 0: the data show no saturation; its error is not reliable")
    if l_inf >= upper_l_inf * (1 - 1e-6):
        notes.append("L_inf is at its upper bound min(loss): the data barely fall; the fit is not reliable")
    if alpha <= 1e-5 or alpha >= alpha_max * (1 - 1e-6):
        notes.append(f"alpha={alpha:.3g} is at a bound of (0, {alpha_max}]: the fit is not reliable")
    return _make_fit("saturating_power_law", n, loss, alpha, alpha_err, l_inf, l_inf_err,
                     log10_nc, log10_nc_err, cov_out, notes)


def _fit_pure_power_law(n: np.ndarray, loss: np.ndarray, sig: np.ndarray | None, notes: list[str]) -> PowerLawFit:
    """ln L = b - alpha * x: weighted straight line in log-log (sigma_lnL = sigma_L / L)."""
    log_n0 = float(np.mean(np.log(n)))
    x = np.log(n) - log_n0
    y = np.log(loss)
    weights = np.ones_like(y) if sig is None else (loss / sig) ** 2
    design = np.stack([np.ones_like(x), -x], axis=1)
    normal = design.T @ (weights[:, None] * design)
    b, alpha = np.linalg.solve(normal, design.T @ (weights * y))
    cov = np.linalg.inv(normal)
    dof = n.size - 2
    if sig is None:
        residual = y - design @ np.array([b, alpha])
        cov = cov * (float(np.sum(residual**2)) / dof) if dof > 0 else np.full((2, 2), np.nan)
    if alpha <= 0:
        notes.append(f"alpha={alpha:.3g} <= 0: loss does not fall with size")
    # (alpha, L_inf, log10 N_c) from (b, alpha); L_inf is fixed so its row and column are zero.
    jacobian = np.array([
        [0.0, 1.0],
        [0.0, 0.0],
        [1.0 / alpha / math.log(10), -b / alpha**2 / math.log(10)],
    ]) if alpha != 0 else np.full((3, 2), np.nan)
    cov_out = jacobian @ cov @ jacobian.T
    log10_nc = (log_n0 + b / alpha) / math.log(10) if alpha != 0 else float("nan")
    alpha_err, _, log10_nc_err = _errors_from(cov_out)
    return _make_fit("power_law", n, loss, float(alpha), alpha_err, 0.0, None,
                     log10_nc, log10_nc_err, cov_out, notes)


def _make_fit(model, n, loss, alpha, alpha_err, l_inf, l_inf_err, log10_nc, log10_nc_err, cov, notes) -> PowerLawFit:
    n_c = 10.0**log10_nc if np.isfinite(log10_nc) and abs(log10_nc) < 300 else float("nan")
    n_c_err = n_c * math.log(10) * log10_nc_err if log10_nc_err is not None else None
    fit = PowerLawFit(
        model=model, num_points=int(n.size),
        alpha=_finite_or_none(alpha), alpha_err=alpha_err,
        L_inf=_finite_or_none(l_inf), L_inf_err=l_inf_err,
        N_c=_finite_or_none(n_c), N_c_err=_finite_or_none(n_c_err) if n_c_err is not None else None,
        log10_N_c=_finite_or_none(log10_nc), log10_N_c_err=log10_nc_err,
        covariance=_json_safe(np.asarray(cov).tolist()), notes=notes,
    )
    if fit.alpha is not None and fit.log10_N_c is not None:
        fit.residual_rms = float(np.sqrt(np.mean((fit.predict(n) - loss) ** 2)))
    return fit


# --------------------------------------------------------------------------- outputs

# Probe metrics to plot against size, first found wins (regression first, then labels).
PROBE_SCORE_METRICS = ("r2", "accuracy", "f1")


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


def format_count(count: float) -> str:
    """12345 -> '12.3k', 4.5e6 -> '4.5M'."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= limit:
            return f"{count / limit:.3g}{suffix}"
    return f"{count:.0f}"


def _fit_label(fit: Mapping[str, Any]) -> str:
    def value(name: str, fmt: str) -> str:
        number, error = fit.get(name), fit.get(f"{name}_err")
        if number is None:
            return "n/a"
        return f"{number:{fmt}}" + (f" ± {error:{fmt}}" if error is not None else "")

    if fit.get("model") == "saturating_power_law":
        return (f"L = L∞ + (N_c / N)^α\nα = {value('alpha', '.3f')}\nL∞ = {value('L_inf', '.4f')}\n"
                f"log10 N_c = {value('log10_N_c', '.2f')}")
    return f"L = (N_c / N)^α\nα = {value('alpha', '.3f')}\nlog10 N_c = {value('log10_N_c', '.2f')}"


def _plain_log_axis(axis) -> None:
    """Log y scale with four to eight plain decimal ticks: a loss axis often spans less than a decade,
    where the default log ticks leave one or two labels. Call after plotting."""
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    axis.set_yscale("log")
    low, high = axis.get_ylim()
    candidates = (LogLocator(subs=(1, 2, 5)), LogLocator(subs=(1, 2, 3, 5, 7)), MaxNLocator(6))
    for locator in candidates:
        ticks = [t for t in locator.tick_values(low, high) if low <= t <= high and t > 0]
        if 4 <= len(ticks) <= 8:
            axis.yaxis.set_major_locator(FixedLocator(ticks))
            axis.yaxis.set_major_formatter(FormatStrFormatter("%.4g"))
            axis.yaxis.set_minor_formatter(NullFormatter())
            return


def plot_scaling(
    sizes: Sequence[Mapping[str, Any]],
    fit: Mapping[str, Any],
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    param_count: str = "non_embedding",
) -> Path:
    """Two panels: final validation loss against parameters (log-log, fit overlaid) and the validation
    curves of every size on one axis. `sizes` are scaling.json size entries, `fit` its fit entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, (ax_law, ax_curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    done = [size for size in sizes if size.get("final_val_loss") is not None]
    colours = plt.cm.viridis(np.linspace(0.05, 0.9, max(len(sizes), 1)))
    colour_of = {size["name"]: colours[index] for index, size in enumerate(sizes)}
    if done:
        params = np.array([size["params"] for size in done], dtype=float)
        losses = np.array([size["final_val_loss"] for size in done], dtype=float)
        for size, n, loss in zip(done, params, losses):
            ax_law.scatter([n], [loss], color=colour_of[size["name"]], zorder=3, s=36)
            ax_law.annotate(size["name"], (n, loss), textcoords="offset points", xytext=(4, 5), fontsize=7)
        if fit.get("alpha") is not None and fit.get("log10_N_c") is not None:
            grid = np.logspace(np.log10(params.min()) - 0.3, np.log10(params.max()) + 0.3, 200)
            law = PowerLawFit(model=fit["model"], num_points=len(done), alpha=fit["alpha"],
                              L_inf=fit.get("L_inf"), log10_N_c=fit["log10_N_c"])
            ax_law.plot(grid, law.predict(grid), color="crimson", lw=1.5, label=_fit_label(fit))
            if fit.get("L_inf"):
                ax_law.axhline(fit["L_inf"], color="crimson", lw=0.8, ls=":")
            ax_law.legend(fontsize=8, loc="upper right")
    ax_law.set_xscale("log")
    _plain_log_axis(ax_law)
    ax_law.set_xlabel(f"parameters ({param_count.replace('_', '-')})")
    ax_law.set_ylabel("final validation loss")
    ax_law.set_title("validation loss against model size")
    ax_law.grid(True, which="both", alpha=0.25)
    for size in sizes:
        steps, losses = curves.get(size["name"], ([], []))
        if steps:
            params_text = format_count(size["params"]) if size.get("params") else "?"
            ax_curves.plot(steps, losses, marker=".", color=colour_of[size["name"]],
                           label=f"{size['name']} ({params_text})")
    _plain_log_axis(ax_curves)
    ax_curves.set_xlabel("step")
    ax_curves.set_ylabel("validation loss")
    ax_curves.set_title("validation curves (same data, schedule, tokens)")
    ax_curves.grid(True, which="both", alpha=0.25)
    if any(curves.values()):
        ax_curves.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def probe_score(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """(metric name, value) of one feature set's headline probe score: R², else accuracy, else F1."""
    for name in PROBE_SCORE_METRICS:
        if metrics.get(name) is not None:
            return name, float(metrics[name])
    return None


def plot_probe_scaling(sizes: Sequence[Mapping[str, Any]], path: str | Path,
                       param_count: str = "non_embedding") -> Path | None:
    """Probe score against parameters, one panel per target, one line per feature set (astroPT,
    random init, pixel PCA). Reads each size's `probe` entry ({target: {feature_set: metrics}});
    returns None when no size has probes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probed = [size for size in sizes if size.get("probe")]
    if not probed:
        return None
    targets = list(dict.fromkeys(target for size in probed for target in size["probe"]))
    columns = min(len(targets), 3)
    rows = math.ceil(len(targets) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    styles = {"astropt": dict(marker="o", color="C0"), "random_init": dict(marker="s", color="C7", ls="--"),
              "pixel_pca": dict(marker="^", color="C2", ls=":")}
    for ax, target in zip(axes.ravel(), targets):
        metric_name = None
        feature_sets = list(dict.fromkeys(fs for size in probed for fs in size["probe"].get(target, {})))
        for feature_set in feature_sets:
            xs, ys = [], []
            for size in probed:
                score = probe_score(size["probe"].get(target, {}).get(feature_set, {}))
                if score is not None:
                    metric_name = score[0]
                    xs.append(size["params"])
                    ys.append(score[1])
            if xs:
                ax.plot(xs, ys, label=feature_set, **styles.get(feature_set, dict(marker="o")))
        ax.set_xscale("log")
        ax.set_title(target)
        ax.set_xlabel(f"parameters ({param_count.replace('_', '-')})")
        ax.set_ylabel(metric_name or "score")
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(targets):]:
        ax.set_visible(False)
    figure.suptitle("linear-probe score against model size")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _number(value: Any, fmt: str) -> str:
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
            f"{size.get('params_total', 0):,} | {_number(size.get('final_val_loss'), '.4f')} | "
            f"{_number(size.get('final_train_loss'), '.4f')} |"
        )
    lines += ["", f"Fit ({fit['model']}, {fit['num_points']} points):", ""]
    if fit.get("alpha") is not None:
        lines.append("- " + _fit_label(fit).replace("\n", "\n- "))
        lines.append(f"- residual rms = {_number(fit.get('residual_rms'), '.2g')}")
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
    result = _json_safe(result)
    write_text_atomic(output_dir / "scaling.json", json.dumps(result, indent=2) + "\n")
    plot_scaling(result["sizes"], result["fit"], curves, output_dir / "scaling.png", param_count)
    plot_probe_scaling(result["sizes"], output_dir / "probe_scaling.png", param_count)
    write_text_atomic(output_dir / "scaling.md", scaling_markdown(result))
    return result


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


# --------------------------------------------------------------------------- the sweep

# Keys the sweep sets per size; giving them on the command line would break "one shape per rung".
SIZE_KEYS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
PER_RUN_KEYS = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir")
# Settings that do not change what a size learns: they may differ when a sweep is resumed.
NON_RESULT_KEYS = (
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "num_workers", "report_to", "run_name",
    "log_steps", "save_steps", "save_total_limit", "push_to_hub", "hub_model_id", "hub_private", "record_sample_ids",
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


def flag_names(argv: Sequence[str]) -> set[str]:
    """The `--key` names given in an argv list (`--key value`, `--key=value`, `--key-name` as `key_name`)."""
    return {item[2:].split("=", 1)[0].replace("-", "_") for item in argv if item.startswith("--")}


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
    return _json_safe(settings)


def check_sweep_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a sweep with settings that change results: a different schedule, data or budget
    would make the sizes incomparable. Names every changed key with its recorded and new value."""
    path = Path(output_dir) / SETTINGS_FILE
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    changed = {key: (stored.get(key), settings.get(key)) for key in set(stored) | set(settings)
               if stored.get(key) != settings.get(key)}
    if changed:
        details = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items()))
        raise ValueError(
            f"{path} records different settings for this sweep ({details}). Every size must share data, "
            f"schedule and token budget: use the recorded settings, or a new --output_dir"
        )


def record_sweep_settings(output_dir: Path, settings: dict[str, Any]) -> None:
    """Write the shared settings on a sweep's first run (main process only)."""
    path = Path(output_dir) / SETTINGS_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


def completed_summary(size_dir: Path, max_steps: int) -> dict[str, Any] | None:
    """The size's `summary.json` if its training completed all `max_steps`, else None (train or resume)."""
    path = size_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("status") != "completed" or summary.get("final_val_loss") is None:
        return None
    if summary.get("steps") != max_steps:
        raise ValueError(
            f"{path}: a completed run of {summary.get('steps')} steps, but this sweep trains {max_steps}; "
            f"use the same --max_steps or a new --output_dir"
        )
    return summary


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


def load_probe_source(arguments, split: str):
    """The galaxies the probes read: the pretraining dataset's `split`, loaded the way pretraining loads
    it (same synthetic cache)."""
    from astropt_hf.data.arguments import open_dataset

    return open_dataset(arguments.dataset_spec(split))


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
                f"final val loss {_number(entry['final_val_loss'], '.4f')} "
                f"({action}, {_number(entry['wall_seconds'], '.0f')} s, {entry['tokens_seen'] or 0:,} tokens)"
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
        f"fit ({fit['model']}, {options.param_count} params): alpha = {_number(fit.get('alpha'), '.3f')} "
        f"± {_number(fit.get('alpha_err'), '.3f')}, L_inf = {_number(fit.get('L_inf'), '.4f')} "
        f"± {_number(fit.get('L_inf_err'), '.4f')}, N_c = {_number(fit.get('N_c'), '.3g')} "
        f"(log10 {_number(fit.get('log10_N_c'), '.2f')} ± {_number(fit.get('log10_N_c_err'), '.2f')})"
    )
    log(f"wrote {output_dir / 'scaling.json'}, scaling.png, scaling.md"
        + (", probe_scaling.png" if options.probe_targets else ""))
    return result
