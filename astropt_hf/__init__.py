"""astroPT as a HuggingFace Transformers model.

Importing this package registers the astroPT classes with the Auto classes locally, and marks them so
that `save_pretrained` copies the three remote-code files next to each checkpoint and writes `auto_map`
entries: the checkpoint then loads anywhere with `trust_remote_code=True`, no `astropt_hf` needed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_astropt import ASTROPT_PRESETS, DEFAULT_AUTO_MAP, AstroPTConfig
from .image_processing_astropt import AstroPTImageProcessor
from .modeling_astropt import (
    AstroPTForImageClassification,
    AstroPTForPreTraining,
    AstroPTForPreTrainingOutput,
    AstroPTModel,
    AstroPTPreTrainedModel,
    spiral_order,
)

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


_register()

__all__ = [
    "ASTROPT_PRESETS",
    "DEFAULT_AUTO_MAP",
    "AstroPTConfig",
    "AstroPTForImageClassification",
    "AstroPTForPreTraining",
    "AstroPTForPreTrainingOutput",
    "AstroPTImageProcessor",
    "AstroPTModel",
    "AstroPTPreTrainedModel",
    "spiral_order",
]
