"""Scaling laws of model size: sizes, parameter counts and the saturating power-law fit L(N) = L_inf + (N_c / N)^alpha.

- size parsing: preset names (`astropt-001M`, ...) or shapes `LAYERSxHEADSxWIDTH` (`2x4x64`);
- parameter counting (total and non-embedding, from a meta-device model: no memory, any size);
- the power-law fit with uncertainties, and its description (value ± error per parameter).

Parameter count used for the fit: **non-embedding** by default (Kaplan et al. 2020): everything except
the patch encoder, the learned position table and the next-patch head. Those input/output layers scale
with the patch size rather than with depth, and for tiny models they dominate the total, which bends
the total-count law; both counts are recorded for every size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from astropt_hf import ASTROPT_PRESETS, AstroPTConfig, AstroPTForPreTraining
from astropt_hf.run_files import json_safe

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
    "count_parameters",
    "describe_fit",
    "fit_saturating_power_law",
    "format_count",
    "parse_size",
    "parse_sizes",
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
        return json_safe(asdict(self))


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
        covariance=json_safe(np.asarray(cov).tolist()), notes=notes,
    )
    if fit.alpha is not None and fit.log10_N_c is not None:
        fit.residual_rms = float(np.sqrt(np.mean((fit.predict(n) - loss) ** 2)))
    return fit


# --------------------------------------------------------------------------- describing counts and fits


def format_count(count: float) -> str:
    """12345 -> '12.3k', 4.5e6 -> '4.5M'."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= limit:
            return f"{count / limit:.3g}{suffix}"
    return f"{count:.0f}"


def describe_fit(fit: Mapping[str, Any]) -> str:
    """The fitted law and its parameters (value ± error), one per line, from a `PowerLawFit.to_dict()`."""

    def value(name: str, fmt: str) -> str:
        number, error = fit.get(name), fit.get(f"{name}_err")
        if number is None:
            return "n/a"
        return f"{number:{fmt}}" + (f" ± {error:{fmt}}" if error is not None else "")

    if fit.get("model") == "saturating_power_law":
        return (f"L = L∞ + (N_c / N)^α\nα = {value('alpha', '.3f')}\nL∞ = {value('L_inf', '.4f')}\n"
                f"log10 N_c = {value('log10_N_c', '.2f')}")
    return f"L = (N_c / N)^α\nα = {value('alpha', '.3f')}\nlog10 N_c = {value('log10_N_c', '.2f')}"
