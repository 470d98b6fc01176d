"""AstroPTProcessor: the image processor and the spectrum feature extractor behind one call, so that one
`AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)` prepares images, spectra or both.

This is one of the "remote code" files copied next to a checkpoint: it imports only transformers and its two
siblings.
"""

from __future__ import annotations

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .feature_extraction_astropt import AstroPTSpectrumFeatureExtractor
from .image_processing_astropt import AstroPTImageProcessor


class AstroPTProcessor(ProcessorMixin):
    r"""Galaxy images and spectra -> astroPT inputs: `pixel_values` from `AstroPTImageProcessor` and
    `spectrum_values`, `spectrum_wavelengths`, `spectrum_mask` (and `spectrum_scale`) from
    `AstroPTSpectrumFeatureExtractor`, ready for `model(**inputs)` (which ignores `spectrum_scale`, the
    flux scale each spectrum was divided by, kept for undoing it).

    Args:
        image_processor (`AstroPTImageProcessor`, *optional*): default settings if omitted.
        feature_extractor (`AstroPTSpectrumFeatureExtractor`, *optional*): default settings if omitted.
    """

    def __init__(self, image_processor=None, feature_extractor=None, **kwargs):
        image_processor = image_processor if image_processor is not None else AstroPTImageProcessor()
        feature_extractor = feature_extractor if feature_extractor is not None else AstroPTSpectrumFeatureExtractor()
        super().__init__(image_processor, feature_extractor, **kwargs)

    def __call__(self, images=None, spectra=None, wavelengths=None, ivar=None, mask=None,
                 return_tensors: str | None = "pt", images_kwargs: dict | None = None,
                 spectra_kwargs: dict | None = None, **kwargs) -> BatchFeature:
        """`images` as `AstroPTImageProcessor` takes them; `spectra` (flux), `wavelengths` (Angstrom), `ivar`
        and `mask` (nonzero = bad) as `AstroPTSpectrumFeatureExtractor` takes them. Either or both; with both,
        image i and spectrum i are one galaxy. `images_kwargs` / `spectra_kwargs` go to the one processor."""
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}; pass images_kwargs or spectra_kwargs")
        if images is None and spectra is None:
            raise ValueError("pass images, spectra (flux with wavelengths), or both")
        if spectra is None and any(v is not None for v in (wavelengths, ivar, mask)):
            raise ValueError("wavelengths, ivar and mask describe spectra: pass the flux as spectra")
        data = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=None, **(images_kwargs or {})))
        if spectra is not None:
            data.update(self.feature_extractor(spectra, wavelengths, ivar=ivar, mask=mask, return_tensors=None,
                                               **(spectra_kwargs or {})))
        if images is not None and spectra is not None and len(data["pixel_values"]) != len(data["spectrum_values"]):
            raise ValueError(f"{len(data['pixel_values'])} images but {len(data['spectrum_values'])} spectra; "
                             "each galaxy needs one of each")
        return BatchFeature(data, tensor_type=return_tensors)


__all__ = ["AstroPTProcessor"]
