"""The spectra half of an images+spectra upstream checkpoint, as `AstroPTConfig` arguments.

PyPI astropt 2.0.9 builds such models as `GPT(config, ModalityRegistry([images, spectra]))`. Its sequence is
every image patch, then every spectrum patch (modalities in name order), inside one `block_size`; the images'
position table has `block_size` rows. Its dataset feeds a spectrum as runs of `patch_size` samples,
zero-padded at the end, and places each patch by its wavelengths as `(wavelength - 3000) / 7000`, zero where
padded (`embed_pos=False`, read by an encoder of the tokeniser's kind); with `embed_pos=True` a learned table
is indexed by the patch's place in the spectrum. The scale is a property of the training data, not of the
weights, so it is recorded in the config (and can be overridden for checkpoints trained with another one).
"""

from __future__ import annotations

import math
from typing import Any

from .upstream_formats import SPECTRUM_MODALITY, UpstreamWeights

UPSTREAM_WAVELENGTH_OFFSET = 3000.0  # Angstrom: astropt 2.0.9's GalaxyImageDataset subtracts 3000
UPSTREAM_WAVELENGTH_SCALE = 7000.0  # and divides by 10000 - 3000


def choose_multimodal_image_size(
    block_size: int, training_config: dict, patch_size: int, requested: int | None, source: str
) -> tuple[int, str]:
    """The image side of an images+spectra checkpoint: the image's T patches and at least one spectrum patch
    share the block, so T <= block_size - 1. The size given, else the one recorded in the training config,
    else the largest square grid that leaves room for a spectrum patch."""

    def fits(size: Any) -> bool:
        return isinstance(size, int) and size > 0 and size % patch_size == 0 and (size // patch_size) ** 2 < block_size

    if requested is not None:
        if not fits(requested):
            raise ValueError(
                f"{source}: --image_size={requested} does not fit: it must be a multiple of patch_size={patch_size} "
                f"with fewer than block_size={block_size} patches (the spectrum patches share the block)"
            )
        return requested, "given with --image_size"
    recorded = training_config.get("image_size")
    if fits(recorded):
        return recorded, "config['image_size'] saved in the checkpoint"
    grid = math.isqrt(block_size - 1)
    if grid == 0:
        raise ValueError(f"{source}: block_size={block_size} leaves no room for both an image and a spectrum")
    return grid * patch_size, "sqrt(block_size - 1) * patch_size (room for at least one spectrum patch)"


def _registry_value(modality: Any, name: str, default: Any) -> Any:
    return getattr(modality, name, default) if modality is not None else default


def spectrum_config_kwargs(
    spectra: Any | None,
    weights: UpstreamWeights,
    num_image_patches: int,
    wavelength_scale: float | None,
    source: str,
    notes: list[str],
) -> dict[str, Any]:
    """`AstroPTConfig` arguments for the spectra: patch length, positions, wavelength scaling, loss weight.

    `spectra` is the registry's spectra ModalityConfig (None if the checkpoint has no registry: the weights
    then give the shapes, and the loss weight is upstream's ModalityConfig default, 1.0).
    """
    modules = weights.spectra
    patch_size = _registry_value(spectra, "patch_size", modules.patch_dim)
    input_size = _registry_value(spectra, "input_size", modules.patch_dim)
    if not patch_size == input_size == modules.patch_dim:
        raise ValueError(
            f"{source}: not supported: spectra with patch_size={patch_size} and input_size={input_size}, whose "
            f"tokeniser reads {modules.patch_dim} values; a spectrum patch must be patch_size samples"
        )
    embed_pos = _registry_value(spectra, "embed_pos", modules.position_encoding == "learned")
    if bool(embed_pos) != (modules.position_encoding == "learned"):
        raise ValueError(
            f"{source}: the spectra ModalityConfig says embed_pos={embed_pos!r} but the weights hold a "
            f"{'position table' if modules.position_encoding == 'learned' else 'wavelength position encoder'}"
        )
    if spectra is None:
        notes.append("no spectra ModalityConfig found: shapes read off the weights, spectra loss_weight 1.0")
    kwargs: dict[str, Any] = {
        "modalities": ["images", SPECTRUM_MODALITY],
        "spectrum_patch_size": patch_size,
        "spectrum_wavelength_offset": UPSTREAM_WAVELENGTH_OFFSET,
        "spectrum_wavelength_scale": UPSTREAM_WAVELENGTH_SCALE if wavelength_scale is None else float(wavelength_scale),
        "spectrum_loss_weight": float(_registry_value(spectra, "loss_weight", 1.0)),
    }
    if modules.position_encoding == "learned":
        # upstream's table has block_size rows, indexed by the patch's place in the spectrum
        kwargs.update(spectrum_position_encoding="learned", spectrum_max_patches=modules.position_table_size)
        notes.append("spectra embed_pos=True: learned positions by patch index within the spectrum")
        return kwargs
    if modules.position_input_size != patch_size:
        raise ValueError(
            f"{source}: not supported: the spectra position encoder reads {modules.position_input_size} values per "
            f"patch; converted models read the patch's {patch_size} wavelengths"
        )
    room = weights.block_size - num_image_patches
    kwargs.update(spectrum_position_encoding="wavelength", spectrum_max_patches=room)
    notes.append(
        f"spectra placed by wavelength as (wavelength - {UPSTREAM_WAVELENGTH_OFFSET:g}) / "
        f"{kwargs['spectrum_wavelength_scale']:g} Angstrom"
        + (" (astropt 2.0.9's dataset scaling)" if wavelength_scale is None else " (given with spectrum_wavelength_scale)")
        + f"; up to {room} spectrum patches of {patch_size} samples after the image"
    )
    return kwargs
