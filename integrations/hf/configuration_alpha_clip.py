"""Configurations of Alpha-CLIP in transformers: CLIP's configs with their own ``model_type``.

Self-contained (imports transformers only): this file is copied next to the weights by
``save_pretrained`` so that ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works
without alpha-clip installed.

Alpha-CLIP adds no hyper-parameter to CLIP: the alpha conv has the patch embedding's shape with one
input channel. The alpha normalisation (mean 0.5, std 0.26) is a constant of the model family,
kept in the modeling file.
"""
from transformers.models.clip.configuration_clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

__all__ = ["AlphaCLIPVisionConfig", "AlphaCLIPTextConfig", "AlphaCLIPConfig"]


class AlphaCLIPVisionConfig(CLIPVisionConfig):
    """:class:`~transformers.CLIPVisionConfig` of an Alpha-CLIP vision tower (``model_type``
    ``alpha_clip_vision_model``).

    Same fields as CLIP's. For OpenAI-derived weights use ``hidden_act="quick_gelu"`` and
    ``layer_norm_eps=1e-5`` (CLIP's defaults), which is what the converters write.
    """

    model_type = "alpha_clip_vision_model"
    base_config_key = "vision_config"


class AlphaCLIPTextConfig(CLIPTextConfig):
    """:class:`~transformers.CLIPTextConfig` of Alpha-CLIP's (unchanged, frozen) text tower
    (``model_type`` ``alpha_clip_text_model``)."""

    model_type = "alpha_clip_text_model"
    base_config_key = "text_config"


class AlphaCLIPConfig(CLIPConfig):
    """:class:`~transformers.CLIPConfig` of a whole Alpha-CLIP (``model_type`` ``alpha_clip``).

    ``vision_config`` is an :class:`AlphaCLIPVisionConfig`, ``text_config`` an
    :class:`AlphaCLIPTextConfig`; ``projection_dim`` and ``logit_scale_init_value`` as in CLIP.
    """

    model_type = "alpha_clip"
    sub_configs_defaults = {
        "vision_config": AlphaCLIPVisionConfig,
        "text_config": AlphaCLIPTextConfig,
    }
