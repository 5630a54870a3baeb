"""Alpha-CLIP (and Alpha-SigLIP) as native transformers models.

Importing this module registers, in transformers:

- ``AutoConfig``: ``alpha_clip``, ``alpha_clip_vision_model``, ``alpha_clip_text_model``;
- ``AutoModel`` (``AlphaCLIPModel``, ``AlphaCLIPVisionModel``), ``AutoModelForZeroShotImageClassification``
  (``AlphaCLIPModel``: the stock ``zero-shot-image-classification`` pipeline runs it with whole-image alpha);
- ``AutoImageProcessor`` / ``AutoProcessor``: :class:`AlphaCLIPImageProcessor` / :class:`AlphaCLIPProcessor`;
- the pipeline task ``zero-shot-region-classification``;
- remote-code export: ``save_pretrained`` of a config or model also writes ``configuration_alpha_clip.py``
  and ``modeling_alpha_clip.py`` and an ``auto_map``, so the folder loads with
  ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` where alpha-clip is not installed;
- the same for Alpha-SigLIP (SigLIP / SigLIP2 towers): ``AutoConfig`` ``alpha_siglip``,
  ``alpha_siglip_vision_model``, ``alpha_siglip_text_model``; ``AutoModel`` (:class:`AlphaSiglipModel`,
  :class:`AlphaSiglipVisionModel`); ``AutoImageProcessor`` / ``AutoProcessor``
  (:class:`AlphaSiglipImageProcessor` / :class:`AlphaSiglipProcessor`); remote code
  (``configuration_alpha_siglip.py``, ``modeling_alpha_siglip.py`` and the Alpha-CLIP files they import).
  The stock ``zero-shot-image-classification`` pipeline special-cases SigLIP by its ``model_type``, so
  Alpha-SigLIP is not registered for it; call the model (``sigmoid(logits_per_image)``) instead.

:func:`convert_to_hf` (``alphaclip convert --to hf``) writes either kind from an open_clip model;
:func:`load_open_clip_from_hf` reads either kind back.
"""
from __future__ import annotations

from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForZeroShotImageClassification,
                          AutoProcessor)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_alpha_clip import AlphaCLIPConfig, AlphaCLIPTextConfig, AlphaCLIPVisionConfig
from .configuration_alpha_siglip import AlphaSiglipConfig, AlphaSiglipTextConfig, AlphaSiglipVisionConfig
from .convert import (hf_to_open_clip_state_dict, load_open_clip_from_hf, model_from_open_clip, model_to_open_clip,
                      open_clip_to_hf_state_dict, save_hf, vision_model_from_open_clip,
                      vision_model_from_state_dict)
from .convert_siglip import (hf_to_siglip_state_dict, is_siglip, save_siglip_hf, siglip_model_from_open_clip,
                             siglip_model_to_open_clip, siglip_to_hf_state_dict, siglip_vision_model_from_open_clip,
                             siglip_vision_model_from_state_dict)
from .modeling_alpha_clip import (ALPHA_MEAN, ALPHA_STD, WHOLE_IMAGE_ALPHA, AlphaCLIPModel, AlphaCLIPPreTrainedModel,
                                  AlphaCLIPVisionModel, AlphaCLIPVisionModelWithProjection)
from .modeling_alpha_siglip import AlphaSiglipModel, AlphaSiglipPreTrainedModel, AlphaSiglipVisionModel
from .pipeline import TASK, HFAlphaCLIPAdapter, ZeroShotRegionClassificationPipeline
from .processing_alpha_clip import AlphaCLIPImageProcessor, AlphaCLIPProcessor, clip_tokenizer_from_open_clip
from .processing_alpha_siglip import AlphaSiglipImageProcessor, AlphaSiglipProcessor

__all__ = [
    "AlphaCLIPConfig", "AlphaCLIPVisionConfig", "AlphaCLIPTextConfig", "AlphaCLIPPreTrainedModel", "AlphaCLIPModel",
    "AlphaCLIPVisionModel", "AlphaCLIPVisionModelWithProjection", "AlphaCLIPImageProcessor", "AlphaCLIPProcessor",
    "ZeroShotRegionClassificationPipeline", "HFAlphaCLIPAdapter", "TASK", "ALPHA_MEAN", "ALPHA_STD",
    "WHOLE_IMAGE_ALPHA", "clip_tokenizer_from_open_clip", "model_from_open_clip", "model_to_open_clip",
    "vision_model_from_open_clip", "vision_model_from_state_dict", "open_clip_to_hf_state_dict",
    "hf_to_open_clip_state_dict", "save_hf",
    "load_open_clip_from_hf", "convert_to_hf", "register",
    "AlphaSiglipConfig", "AlphaSiglipVisionConfig", "AlphaSiglipTextConfig", "AlphaSiglipPreTrainedModel",
    "AlphaSiglipModel", "AlphaSiglipVisionModel", "AlphaSiglipImageProcessor", "AlphaSiglipProcessor", "is_siglip",
    "siglip_to_hf_state_dict", "hf_to_siglip_state_dict", "siglip_model_from_open_clip", "siglip_model_to_open_clip",
    "siglip_vision_model_from_open_clip", "siglip_vision_model_from_state_dict", "save_siglip_hf",
]

_registered = False


def _register_family(config, vision_config, text_config, model, vision_model, image_processor, processor) -> None:
    """One model family (Alpha-CLIP, Alpha-SigLIP) with AutoConfig / AutoModel / AutoImageProcessor / AutoProcessor,
    and its config + modeling files for remote-code export (the processors use alpha-clip, so they are NOT
    exported: a remote-code folder gives the model, the processor needs `pip install alpha-clip`)."""
    for cfg in (config, vision_config, text_config):
        AutoConfig.register(cfg.model_type, cfg, exist_ok=True)
    AutoModel.register(config, model, exist_ok=True)
    AutoModel.register(vision_config, vision_model, exist_ok=True)
    for cfg in (config, vision_config):
        AutoImageProcessor.register(cfg, image_processor_classes={"torchvision": image_processor}, exist_ok=True)
    AutoProcessor.register(config, processor, exist_ok=True)
    config.register_for_auto_class()
    vision_config.register_for_auto_class()
    model.register_for_auto_class("AutoModel")
    vision_model.register_for_auto_class("AutoModel")


def register() -> None:
    """Register the configs, models, processors and pipeline with transformers (idempotent; runs on import)."""
    global _registered
    if _registered:
        return
    _register_family(AlphaCLIPConfig, AlphaCLIPVisionConfig, AlphaCLIPTextConfig, AlphaCLIPModel, AlphaCLIPVisionModel,
                     AlphaCLIPImageProcessor, AlphaCLIPProcessor)
    AutoModelForZeroShotImageClassification.register(AlphaCLIPConfig, AlphaCLIPModel, exist_ok=True)
    AlphaCLIPVisionModelWithProjection.register_for_auto_class("AutoModel")
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ZeroShotRegionClassificationPipeline,
                                        pt_model=AutoModel, type="multimodal")
    _register_family(AlphaSiglipConfig, AlphaSiglipVisionConfig, AlphaSiglipTextConfig, AlphaSiglipModel,
                     AlphaSiglipVisionModel, AlphaSiglipImageProcessor, AlphaSiglipProcessor)
    _registered = True


def convert_to_hf(model, output, mode: str = "crop", tokenizer=None, *, card=True, overwrite_card: bool = False):
    """``alphaclip convert --to hf``: write an open_clip Alpha-CLIP as a transformers folder (see :func:`save_hf`);
    a SigLIP model (timm tower with attention pooling) as an Alpha-SigLIP folder (see :func:`save_siglip_hf`;
    ``tokenizer`` adds the text processor). ``card`` / ``overwrite_card``: the model card, as in :func:`save_hf`."""
    if is_siglip(model):
        return save_siglip_hf(model, output, tokenizer=tokenizer, mode=mode, card=card, overwrite_card=overwrite_card)
    return save_hf(model, output, mode=mode, card=card, overwrite_card=overwrite_card)


register()
