"""Bring upstream astroPT checkpoints (`ckpt.pt`, v1 / v2.x / v3 layouts; next-patch and masked objectives;
images, or images and spectra; local files or hub references) across, safely and checked.

Not part of the remote code: nothing here is needed to load a converted model.
"""

from .convert import ConversionReport, ParityCheckError, convert_upstream_checkpoint
from .hub_reference import CheckpointReferenceError, resolve_checkpoint
from .parity import ParityResult, check_parity
from .safe_unpickle import UnsafeCheckpointError, load_upstream_checkpoint
from .upstream_config import ConfigMapping, map_upstream_config
from .upstream_formats import (
    FORMAT_DESCRIPTIONS,
    UpstreamWeights,
    detect_upstream_format,
    read_upstream_weights,
    rename_to_astropt_hf,
    strip_compile_prefix,
)
from .upstream_objective import UpstreamPrefixAttentionWarning, map_objective

__all__ = [
    "CheckpointReferenceError",
    "ConversionReport",
    "ParityCheckError",
    "ParityResult",
    "UpstreamPrefixAttentionWarning",
    "check_parity",
    "convert_upstream_checkpoint",
    "FORMAT_DESCRIPTIONS",
    "ConfigMapping",
    "UnsafeCheckpointError",
    "UpstreamWeights",
    "detect_upstream_format",
    "load_upstream_checkpoint",
    "map_objective",
    "map_upstream_config",
    "read_upstream_weights",
    "resolve_checkpoint",
    "rename_to_astropt_hf",
    "strip_compile_prefix",
]
