"""Galaxy data: the synthetic GalSim set, dataset sources, image decoding and batch collation."""

from .collate import GalaxyCollator
from .decoding import IMAGE_SUFFIXES, CorruptSampleError, decode_image
from .sources import VALIDATION_FRACTION, GalaxySource, load_galaxy_dataset
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
    "IMAGE_SUFFIXES",
    "PIXEL_SCALE",
    "TRUTH_COLUMNS",
    "VALIDATION_FRACTION",
    "CorruptSampleError",
    "GalaxyCollator",
    "GalaxyParams",
    "GalaxySource",
    "decode_image",
    "edge_flux_fraction",
    "load_galaxy_dataset",
    "load_synthetic_galaxies",
    "make_galaxy_row",
    "render_galaxy",
    "sample_galaxy_params",
]
