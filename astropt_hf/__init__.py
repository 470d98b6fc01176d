"""astroPT as a HuggingFace Transformers model.

Importing this package registers the astroPT classes with the Auto classes locally, and marks them so
that `save_pretrained` copies the remote-code files next to each checkpoint and writes `auto_map` entries:
the checkpoint then loads anywhere with `trust_remote_code=True`, no `astropt_hf` needed. (A model brings
the configuration and modeling files; `AstroPTProcessor` the image, spectrum and processor files.)
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoProcessor,
)

from .configuration_astropt import ASTROPT_PRESETS, DEFAULT_AUTO_MAP, AstroPTConfig, AstroPTConfigTypeError
from .feature_extraction_astropt import AstroPTSpectrumFeatureExtractor
from .image_processing_astropt import AstroPTImageProcessor
from .modeling_astropt import (
    AstroPTForImageClassification,
    AstroPTForPreTraining,
    AstroPTForPreTrainingOutput,
    AstroPTModel,
    AstroPTPreTrainedModel,
    AstroPTSpectrumPatches,
    patches_to_spectrum,
    spectrum_to_patches,
    spiral_order,
)
from .processing_astropt import AstroPTProcessor

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register("astropt", AstroPTConfig, exist_ok=True)
    AutoModel.register(AstroPTConfig, AstroPTModel, exist_ok=True)
    AutoModelForPreTraining.register(AstroPTConfig, AstroPTForPreTraining, exist_ok=True)
    AutoModelForImageClassification.register(AstroPTConfig, AstroPTForImageClassification, exist_ok=True)
    AutoImageProcessor.register(AstroPTConfig, slow_image_processor_class=AstroPTImageProcessor, exist_ok=True)
    AstroPTConfig.register_for_auto_class()
    AstroPTModel.register_for_auto_class("AutoModel")
    AstroPTForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    AstroPTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    AstroPTImageProcessor.register_for_auto_class("AutoImageProcessor")
    AutoFeatureExtractor.register(AstroPTConfig, AstroPTSpectrumFeatureExtractor, exist_ok=True)
    AutoProcessor.register(AstroPTConfig, AstroPTProcessor, exist_ok=True)
    AstroPTSpectrumFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    AstroPTProcessor.register_for_auto_class("AutoProcessor")


_register()

__all__ = [
    "ASTROPT_PRESETS",
    "DEFAULT_AUTO_MAP",
    "AstroPTConfig",
    "AstroPTConfigTypeError",
    "AstroPTForImageClassification",
    "AstroPTForPreTraining",
    "AstroPTForPreTrainingOutput",
    "AstroPTImageProcessor",
    "AstroPTModel",
    "AstroPTPreTrainedModel",
    "AstroPTProcessor",
    "AstroPTSpectrumFeatureExtractor",
    "AstroPTSpectrumPatches",
    "patches_to_spectrum",
    "spectrum_to_patches",
    "spiral_order",
]
