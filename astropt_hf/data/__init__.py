"""Galaxy data: the synthetic GalSim set, dataset sources, image decoding and batch collation."""

from .collate import GalaxyCollator, SpectrumColumns
from .decoding import (
    DEFAULT_DECODE_LIMITS,
    DEFAULT_MAX_SIDE_FACTOR,
    IMAGE_SUFFIXES,
    CorruptSampleError,
    DecodeLimits,
    decode_image,
)
from .sources import VALIDATION_FRACTION, GalaxySource, is_streaming_dataset, load_galaxy_dataset
from .synthetic import (
    BANDS,
    PIXEL_SCALE,
    TRUTH_COLUMNS,
    GalaxyParams,
    edge_flux_fraction,
    load_synthetic_galaxies,
    make_galaxy_row,
    render_galaxy,
    sample_galaxy_params,
)

__all__ = [
    "BANDS",
    "DEFAULT_DECODE_LIMITS",
    "DEFAULT_MAX_SIDE_FACTOR",
    "IMAGE_SUFFIXES",
    "PIXEL_SCALE",
    "TRUTH_COLUMNS",
    "VALIDATION_FRACTION",
    "CorruptSampleError",
    "DecodeLimits",
    "GalaxyCollator",
    "GalaxyParams",
    "GalaxySource",
    "SpectrumColumns",
    "decode_image",
    "edge_flux_fraction",
    "is_streaming_dataset",
    "load_galaxy_dataset",
    "load_synthetic_galaxies",
    "make_galaxy_row",
    "render_galaxy",
    "sample_galaxy_params",
]
