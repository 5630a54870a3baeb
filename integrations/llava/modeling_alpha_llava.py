"""LLaVA-1.5 with an Alpha-CLIP vision tower, on transformers' ``LlavaForConditionalGeneration``.

The only differences to transformers' LLaVA:

- the vision tower is an :class:`~alphaclip_integrations.hf.AlphaCLIPVisionModel` (the config's
  ``vision_config`` is an ``AlphaCLIPVisionConfig``; LLaVA builds it with ``AutoModel``), or for
  SigLIP-based LLaVA variants an :class:`~alphaclip_integrations.hf.AlphaSiglipVisionModel`
  (``AlphaSiglipVisionConfig``); the image features are the hidden state of the layer the config names
  (``vision_feature_layer``), with the config's ``vision_feature_select_strategy``, as in LLaVA;
- ``forward`` (of the model and of the LM head model) and ``get_image_features`` take
  ``alpha_values [N, 1, H, W]``: one normalised alpha map per row of ``pixel_values`` (foreground
  +1.9231, background -1.9231; None = whole image for every image). It reaches the vision tower
  and nothing else;
- ``generate`` carries ``alpha_values`` exactly where it carries ``pixel_values``: to the first
  (prefill) step when a cache is used, to every step without a cache, never to a step without
  images.

With a zero alpha conv the model computes exactly what transformers' LLaVA computes on the same
weights, whatever the alpha; with any alpha conv, ``alpha_values=None`` (or the whole-image alpha,
+1.9231 everywhere) is the whole image.

Config ``model_type``: ``alpha_llava`` (registered with ``AutoConfig``); the LM head model is
registered with ``AutoModelForImageTextToText`` and the base model with ``AutoModel`` by
:mod:`alphaclip_integrations.llava`.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.llava.configuration_llava import LlavaConfig
from transformers.models.llava.modeling_llava import LlavaForConditionalGeneration, LlavaModel

import alphaclip_integrations.hf  # noqa: F401  (registers alpha_clip_vision_model with AutoConfig / AutoModel)
from alphaclip_integrations.hf import (AlphaCLIPVisionConfig, AlphaCLIPVisionModel, AlphaSiglipVisionConfig,
                                      AlphaSiglipVisionModel)

__all__ = ["AlphaLlavaConfig", "AlphaLlavaModel", "AlphaLlavaForConditionalGeneration"]


class AlphaLlavaConfig(LlavaConfig):
    """:class:`~transformers.LlavaConfig` whose ``vision_config`` is an ``AlphaCLIPVisionConfig`` or an
    ``AlphaSiglipVisionConfig`` (``model_type`` ``alpha_llava``). Defaults: LLaVA-1.5's ViT-L/14@336 tower,
    layer -2, patch tokens."""

    model_type = "alpha_llava"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type=AlphaCLIPVisionConfig.model_type,
            init_kwargs={
                "intermediate_size": 4096, "hidden_size": 1024, "patch_size": 14, "image_size": 336,
                "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if not isinstance(self.vision_config, (AlphaCLIPVisionConfig, AlphaSiglipVisionConfig)):
            raise ValueError(f"vision_config: an alpha LLaVA needs an AlphaCLIPVisionConfig or AlphaSiglipVisionConfig "
                             f"(model_type '{AlphaCLIPVisionConfig.model_type}' / "
                             f"'{AlphaSiglipVisionConfig.model_type}'), got {type(self.vision_config).__name__}; "
                             "convert a plain LLaVA with alphaclip_integrations.llava.convert")


def _check_alpha_rows(pixel_values: Optional[torch.Tensor], alpha_values: Optional[torch.Tensor]) -> None:
    if alpha_values is None:
        return
    if pixel_values is None:
        raise ValueError("alpha_values: given without pixel_values (alpha maps belong to images)")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        raise ValueError(f"alpha_values: needs pixel_values as a [N, 3, H, W] tensor, got "
                         f"{getattr(pixel_values, 'shape', type(pixel_values).__name__)}")


class AlphaLlavaModel(LlavaModel):
    """transformers' ``LlavaModel`` whose vision tower reads ``alpha_values`` (see the module docstring)."""

    config_class = AlphaLlavaConfig

    def get_image_features(self, pixel_values: torch.Tensor, alpha_values: Optional[torch.Tensor] = None,
                           vision_feature_layer: Any = None, vision_feature_select_strategy: Optional[str] = None,
                           image_sizes: Optional[torch.Tensor] = None, **kwargs: Any):
        """LLaVA's image features (tower hidden state ``vision_feature_layer``, CLS dropped for the
        ``default`` strategy, projected) of ``pixel_values [N, 3, H, W]`` with ``alpha_values
        [N, 1, H, W]`` (normalised; None = whole image). Returns LLaVA's output object; its
        ``pooler_output`` is a list of N ``[num_patches, text_hidden]`` tensors."""
        _check_alpha_rows(pixel_values, alpha_values)
        if alpha_values is not None:
            kwargs["alpha_values"] = alpha_values
        return super().get_image_features(pixel_values=pixel_values, vision_feature_layer=vision_feature_layer,
                                          vision_feature_select_strategy=vision_feature_select_strategy,
                                          image_sizes=image_sizes, **kwargs)

    def forward(self, input_ids: Optional[torch.LongTensor] = None, pixel_values: Optional[torch.Tensor] = None,
                alpha_values: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, cache: Any = None,
                inputs_embeds: Optional[torch.Tensor] = None, vision_feature_layer: Any = None,
                vision_feature_select_strategy: Optional[str] = None, image_sizes: Optional[torch.Tensor] = None,
                mm_encoder_outputs: Optional[dict] = None, **kwargs: Any):
        """``LlavaModel.forward`` plus ``alpha_values [N, 1, H, W]`` for the N rows of ``pixel_values``.

        The image features are computed here with the alpha and handed to LLaVA as
        ``mm_encoder_outputs``, so the alpha reaches the vision tower and nothing else.
        """
        _check_alpha_rows(pixel_values, alpha_values)
        if pixel_values is not None:
            if mm_encoder_outputs is not None:
                raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")
            image_outputs = self.get_image_features(
                pixel_values=pixel_values, alpha_values=alpha_values, vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy, image_sizes=image_sizes,
                return_dict=True, **kwargs)
            mm_encoder_outputs = {"image": image_outputs}
        return super().forward(input_ids=input_ids, pixel_values=None, attention_mask=attention_mask,
                               position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                               vision_feature_layer=vision_feature_layer,
                               vision_feature_select_strategy=vision_feature_select_strategy,
                               image_sizes=image_sizes, mm_encoder_outputs=mm_encoder_outputs, **kwargs)


class AlphaLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """transformers' ``LlavaForConditionalGeneration`` with an Alpha-CLIP tower and ``alpha_values``.

    ``model(input_ids, pixel_values=..., alpha_values=...)`` and
    ``model.generate(input_ids, pixel_values=..., alpha_values=..., ...)``; ``alpha_values`` is
    ``[N, 1, H, W]`` for the N image rows (:class:`AlphaLlavaProcessor` makes both from images and
    masks/boxes). State-dict keys are LLaVA's plus
    ``model.vision_tower.embeddings.patch_embedding_alpha.weight``.
    """

    config_class = AlphaLlavaConfig

    def __init__(self, config: AlphaLlavaConfig) -> None:
        super(LlavaForConditionalGeneration, self).__init__(config)
        self.model = AlphaLlavaModel(config)
        self.lm_head = torch.nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def vision_tower(self) -> Union[AlphaCLIPVisionModel, AlphaSiglipVisionModel]:
        return self.model.vision_tower

    def get_image_features(self, pixel_values: torch.Tensor, alpha_values: Optional[torch.Tensor] = None,
                           vision_feature_layer: Any = None, vision_feature_select_strategy: Optional[str] = None,
                           **kwargs: Any):
        """See :meth:`AlphaLlavaModel.get_image_features`."""
        return self.model.get_image_features(pixel_values=pixel_values, alpha_values=alpha_values,
                                             vision_feature_layer=vision_feature_layer,
                                             vision_feature_select_strategy=vision_feature_select_strategy, **kwargs)

    def forward(self, input_ids: Optional[torch.LongTensor] = None, pixel_values: Optional[torch.Tensor] = None,
                alpha_values: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, cache: Any = None,
                inputs_embeds: Optional[torch.Tensor] = None, vision_feature_layer: Any = None,
                vision_feature_select_strategy: Optional[str] = None, labels: Optional[torch.LongTensor] = None,
                logits_to_keep: Union[int, torch.Tensor] = 0, image_sizes: Optional[torch.Tensor] = None,
                mm_encoder_outputs: Optional[dict] = None, **kwargs: Any):
        """``LlavaForConditionalGeneration.forward`` (same arguments and outputs) plus ``alpha_values``
        ``[N, 1, H, W]``, the normalised alpha of each of the N ``pixel_values`` rows (None = whole image)."""
        _check_alpha_rows(pixel_values, alpha_values)
        if alpha_values is not None:
            kwargs["alpha_values"] = alpha_values
        return super().forward(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                               position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                               vision_feature_layer=vision_feature_layer,
                               vision_feature_select_strategy=vision_feature_select_strategy, labels=labels,
                               logits_to_keep=logits_to_keep, image_sizes=image_sizes,
                               mm_encoder_outputs=mm_encoder_outputs, **kwargs)

    def generate(self, *args: Any, **kwargs: Any):
        """``GenerationMixin.generate`` with ``alpha_values [N, 1, H, W]`` beside ``pixel_values``.

        transformers 5 encodes the images once before the prefill through :meth:`get_image_features`,
        which takes the alpha; where raw images travel with the steps instead,
        :meth:`prepare_inputs_for_generation` hands the alpha to exactly the steps that get the images.
        """
        if kwargs.get("alpha_values") is not None and kwargs.get("pixel_values") is None:
            raise ValueError("alpha_values: given to generate without pixel_values (alpha maps belong to images)")
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args: Any,
                                      alpha_values: Optional[torch.Tensor] = None, **kwargs: Any) -> dict:
        """transformers' preparation, plus: ``alpha_values`` goes wherever ``pixel_values`` goes (the
        prefill step with a cache, every step without one) and nowhere else."""
        if alpha_values is not None and kwargs.get("pixel_values") is None:
            raise ValueError("alpha_values: given to generate without pixel_values (alpha maps belong to images)")
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        if alpha_values is not None and model_inputs.get("pixel_values") is not None:
            model_inputs["alpha_values"] = alpha_values
        return model_inputs
