"""Configurations of Alpha-SigLIP in transformers: SigLIP's configs with their own ``model_type``.

Self-contained (imports transformers only): this file is copied next to the weights by
``save_pretrained`` so that ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works
without alpha-clip installed.

Alpha-SigLIP adds no hyper-parameter to SigLIP: the alpha conv has the patch embedding's shape with
one input channel. The alpha normalisation (mean 0.5, std 0.26) is the model family's constant, the
same as Alpha-CLIP's, although SigLIP normalises its images with mean/std 0.5.
"""
from transformers.models.siglip.configuration_siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

__all__ = ["AlphaSiglipVisionConfig", "AlphaSiglipTextConfig", "AlphaSiglipConfig"]


class AlphaSiglipVisionConfig(SiglipVisionConfig):
    """:class:`~transformers.SiglipVisionConfig` of an Alpha-SigLIP vision tower (``model_type``
    ``alpha_siglip_vision_model``). Same fields as SigLIP's; the converters from open_clip write the
    activation the timm tower uses (``gelu`` or ``gelu_pytorch_tanh``)."""

    model_type = "alpha_siglip_vision_model"
    base_config_key = "vision_config"


class AlphaSiglipTextConfig(SiglipTextConfig):
    """:class:`~transformers.SiglipTextConfig` of Alpha-SigLIP's (unchanged, frozen) text tower
    (``model_type`` ``alpha_siglip_text_model``)."""

    model_type = "alpha_siglip_text_model"
    base_config_key = "text_config"


class AlphaSiglipConfig(SiglipConfig):
    """:class:`~transformers.SiglipConfig` of a whole Alpha-SigLIP (``model_type`` ``alpha_siglip``).

    ``vision_config`` is an :class:`AlphaSiglipVisionConfig`, ``text_config`` an
    :class:`AlphaSiglipTextConfig`. A model converted from open_clip also carries ``open_clip_cfg``
    (the open_clip model config it came from), so it converts back exactly.
    """

    model_type = "alpha_siglip"
    sub_configs_defaults = {
        "vision_config": AlphaSiglipVisionConfig,
        "text_config": AlphaSiglipTextConfig,
    }
