"""LLaVA-1.5 with an Alpha-CLIP vision tower: transformers-native and the original LLaVA code.

Importing this module (transformers only; llava-torch is not needed) registers, in transformers:

- ``AutoConfig``: ``alpha_llava`` -> :class:`AlphaLlavaConfig`;
- ``AutoModelForImageTextToText`` -> :class:`AlphaLlavaForConditionalGeneration`,
  ``AutoModel`` -> :class:`AlphaLlavaModel`;
- ``AutoProcessor`` -> :class:`AlphaLlavaProcessor`, ``AutoImageProcessor`` -> alpha-clip's
  ``AlphaCLIPImageProcessor``.

:func:`convert_llava` turns a transformers ``llava-1.5`` folder + an Alpha-CLIP checkpoint into an
alpha LLaVA folder. The original LLaVA code base (``llava-torch``) lives in
:mod:`alphaclip_integrations.llava.original` (imported on demand: it imports ``llava``);
``python -m alphaclip_integrations.llava`` runs LLaVA's entry points with the alpha tower.
"""
from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from alphaclip_integrations.hf import AlphaCLIPImageProcessor

from .convert import convert_llava
from .inputs import paired_batch
from .modeling_alpha_llava import AlphaLlavaConfig, AlphaLlavaForConditionalGeneration, AlphaLlavaModel
from .processing_alpha_llava import AlphaLlavaProcessor
from .weights import PREFIX, load_alpha_visual, parse_tower_name

__all__ = ["AlphaLlavaConfig", "AlphaLlavaModel", "AlphaLlavaForConditionalGeneration", "AlphaLlavaProcessor",
           "convert_llava", "load_alpha_visual", "parse_tower_name", "paired_batch", "PREFIX", "register"]

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


register()
