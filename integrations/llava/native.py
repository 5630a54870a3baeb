"""The transformers-native alpha LLaVA (transformers 5): imports and Auto* registration."""
from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from alphaclip_integrations.hf import AlphaCLIPImageProcessor

from .convert import convert_llava
from .modeling_alpha_llava import AlphaLlavaConfig, AlphaLlavaForConditionalGeneration, AlphaLlavaModel
from .processing_alpha_llava import AlphaLlavaProcessor

__all__ = ["AlphaLlavaConfig", "AlphaLlavaModel", "AlphaLlavaForConditionalGeneration", "AlphaLlavaProcessor",
           "convert_llava", "register"]

_registered = False


def register() -> None:
    """Register the alpha LLaVA with transformers' Auto classes (idempotent; runs on import)."""
    global _registered
    if _registered:
        return
    AutoConfig.register(AlphaLlavaConfig.model_type, AlphaLlavaConfig, exist_ok=True)
    AutoModel.register(AlphaLlavaConfig, AlphaLlavaModel, exist_ok=True)
    AutoModelForImageTextToText.register(AlphaLlavaConfig, AlphaLlavaForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(AlphaLlavaConfig, image_processor_classes={"torchvision": AlphaCLIPImageProcessor},
                                exist_ok=True)
    AutoProcessor.register(AlphaLlavaConfig, AlphaLlavaProcessor, exist_ok=True)
    # folders in transformers 4.x's LLaVA key layout (language_model.model.*, vision_tower.vision_model.*)
    # load like transformers' own LLaVA does
    llava_rules = get_checkpoint_conversion_mapping("llava")
    if llava_rules:
        register_checkpoint_conversion_mapping(AlphaLlavaConfig.model_type, llava_rules, overwrite=True)
    _registered = True

