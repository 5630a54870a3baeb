"""Alpha-CLIP in transformers: CLIP's modules plus ONE new weight, the alpha patch embedding.

``embeddings.patch_embedding_alpha`` is a ``Conv2d(1, hidden_size, kernel=patch, stride=patch,
bias=False)`` over a normalised alpha map ``[B, 1, H, W]``. Its output is added to the RGB patch
embedding before the class token and the position embedding; nothing else in CLIP changes. It is
zero-initialised, so a fresh model (or one loaded from a plain CLIP checkpoint) computes exactly
what CLIP computes, whatever the alpha.

Alpha values given to the models are NORMALISED: ``(mask - 0.5) / 0.26``, i.e. foreground
``+1.9231`` and background ``-1.9231``. ``alpha_values=None`` means the whole image (``+1.9231``
everywhere). The processors (``AlphaCLIPProcessor``) produce them from masks and boxes.

Self-contained (imports torch and transformers only): this file is copied next to the weights by
``save_pretrained`` so that ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works
without alpha-clip installed.
"""
from typing import Optional

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import (
    CLIPEncoder,
    CLIPModel,
    CLIPOutput,
    CLIPPreTrainedModel,
    CLIPTextModel,
    CLIPVisionEmbeddings,
    CLIPVisionModelOutput,
    _get_vector_norm,
    image_text_contrastive_loss,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

try:  # not importable from remote code in every transformers version: then only the legacy-key mapping is lost
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import PrefixChange
except ImportError:  # pragma: no cover
    register_checkpoint_conversion_mapping = None

from .configuration_alpha_clip import AlphaCLIPConfig, AlphaCLIPVisionConfig

__all__ = [
    "ALPHA_MEAN", "ALPHA_STD", "WHOLE_IMAGE_ALPHA",
    "AlphaCLIPPreTrainedModel", "AlphaCLIPVisionEmbeddings", "AlphaCLIPVisionModel",
    "AlphaCLIPVisionModelWithProjection", "AlphaCLIPModel",
]

#: alpha normalisation of the model family: (mask - ALPHA_MEAN) / ALPHA_STD
ALPHA_MEAN = 0.5
ALPHA_STD = 0.26
#: the normalised value of foreground, and of every pixel of a whole-image alpha (+1.9231)
WHOLE_IMAGE_ALPHA = (1.0 - ALPHA_MEAN) / ALPHA_STD
_BACKGROUND_ALPHA = (0.0 - ALPHA_MEAN) / ALPHA_STD
_RANGE_EPS = 1e-3


def _check_alpha(pixel_values: torch.Tensor, alpha_values: torch.Tensor, check_range: bool) -> None:
    """Shape / dtype / range checks of ``alpha_values`` against ``pixel_values`` (clear errors)."""
    if not isinstance(alpha_values, torch.Tensor):
        raise TypeError(f"alpha_values: expected a torch.Tensor [B,1,H,W], got {type(alpha_values).__name__}")
    if not alpha_values.is_floating_point():
        raise TypeError(f"alpha_values: expected a floating point tensor (normalised alpha), got {alpha_values.dtype}")
    expected = (pixel_values.shape[0], 1, pixel_values.shape[2], pixel_values.shape[3])
    if alpha_values.dim() != 4 or tuple(alpha_values.shape) != expected:
        raise ValueError(
            f"alpha_values: expected shape {list(expected)} (one 1-channel map per image, the height and width of "
            f"pixel_values), got {list(alpha_values.shape)}")
    if check_range and alpha_values.numel() and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(alpha_values.detach())
        lo, hi = float(lo), float(hi)
        if not (lo >= _BACKGROUND_ALPHA - _RANGE_EPS and hi <= WHOLE_IMAGE_ALPHA + _RANGE_EPS):  # NaN fails too
            raise ValueError(
                f"alpha_values: values must lie in [{_BACKGROUND_ALPHA:.4f}, {WHOLE_IMAGE_ALPHA:.4f}] (masks "
                f"normalised with mean {ALPHA_MEAN}, std {ALPHA_STD}); got [{lo:.4f}, {hi:.4f}]")


def _alpha_conv(embed_dim: int, patch_size: int) -> nn.Conv2d:
    """The zero-initialised alpha patch embedding ``Conv2d(1, embed_dim, patch, stride=patch, bias=False)``."""
    conv = nn.Conv2d(in_channels=1, out_channels=embed_dim, kernel_size=patch_size, stride=patch_size, bias=False)
    nn.init.zeros_(conv.weight)
    return conv


def _alpha_patch_embeds(embeddings: nn.Module, pixel_values: torch.Tensor,
                        alpha_values: Optional[torch.Tensor]) -> torch.Tensor:
    """``patch_embedding(pixel_values) + patch_embedding_alpha(alpha_values)`` ``[B, hidden, grid, grid]`` of an
    alpha vision embeddings module (Alpha-CLIP's or Alpha-SigLIP's); ``alpha_values=None`` is the whole image."""
    batch_size, _, height, width = pixel_values.shape
    alpha_dtype = embeddings.patch_embedding_alpha.weight.dtype
    if alpha_values is None:
        alpha_values = torch.full((batch_size, 1, height, width), WHOLE_IMAGE_ALPHA, dtype=alpha_dtype,
                                  device=pixel_values.device)
    else:
        _check_alpha(pixel_values, alpha_values, embeddings.check_alpha)
    target_dtype = embeddings.patch_embedding.weight.dtype
    patch_embeds = embeddings.patch_embedding(pixel_values.to(dtype=target_dtype))
    return patch_embeds + embeddings.patch_embedding_alpha(alpha_values.to(dtype=alpha_dtype)).to(target_dtype)


class AlphaCLIPVisionEmbeddings(CLIPVisionEmbeddings):
    """CLIP's vision embeddings plus ``patch_embedding_alpha`` (``[hidden, 1, patch, patch]``, zero-init).

    Attributes:
        check_alpha: when True (default) each forward checks that ``alpha_values`` lies in the
            normalised range ``[-1.9231, 1.9231]`` (one device sync). Training loops may switch it off.
    """

    def __init__(self, config: AlphaCLIPVisionConfig):
        super().__init__(config)
        self.patch_embedding_alpha = _alpha_conv(self.embed_dim, self.patch_size)
        self.check_alpha = True

    def forward(self, pixel_values: torch.Tensor, alpha_values: Optional[torch.Tensor] = None,
                interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """``pixel_values [B,3,H,W]`` + ``alpha_values [B,1,H,W]`` (normalised; None = whole image)
        -> embeddings ``[B, 1 + num_patches, hidden]`` (before ``pre_layrnorm``)."""
        batch_size, _, height, width = pixel_values.shape
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"pixel_values: input image size ({height}*{width}) doesn't match model "
                f"({self.image_size}*{self.image_size}).")
        patch_embeds = _alpha_patch_embeds(self, pixel_values, alpha_values)  # [B, hidden, grid, grid]
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)

        class_embeds = self.class_embedding.expand(batch_size, 1, -1)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        if interpolate_pos_encoding:
            embeddings = embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        else:
            embeddings = embeddings + self.position_embedding(self.position_ids)
        return embeddings


class AlphaCLIPPreTrainedModel(CLIPPreTrainedModel):
    """CLIP's pre-trained base with the alpha conv zero-initialised (so a missing alpha weight = CLIP)."""

    config: AlphaCLIPConfig
    base_model_prefix = "alpha_clip"
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "AlphaCLIPVisionEmbeddings"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AlphaCLIPVisionEmbeddings):
            init.zeros_(module.patch_embedding_alpha.weight)
        elif isinstance(module, AlphaCLIPModel):
            factor = self.config.initializer_factor
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5 * factor)
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5 * factor)
        elif isinstance(module, AlphaCLIPVisionModelWithProjection):
            init.normal_(module.visual_projection.weight, std=self.config.hidden_size**-0.5 * self.config.initializer_factor)


class AlphaCLIPVisionModel(AlphaCLIPPreTrainedModel):
    """The Alpha-CLIP vision tower without projection: :class:`~transformers.CLIPVisionModel` + alpha.

    Same submodules and state-dict keys as ``CLIPVisionModel`` (``embeddings.*``, ``pre_layrnorm``,
    ``encoder.layers.*``, ``post_layernorm``) plus ``embeddings.patch_embedding_alpha.weight``.
    Checkpoints with the legacy ``vision_model.`` prefix (transformers 4.x) load too.
    """

    config: AlphaCLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _input_embed_layer = "patch_embedding"
    base_model_prefix = "vision_model"
    # loading the tower out of a whole AlphaCLIPModel folder (as LLaVA does with CLIP repos) skips the rest quietly
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^visual_projection\.",
                                          r"^logit_scale"]

    def __init__(self, config: AlphaCLIPVisionConfig):
        super().__init__(config)
        embed_dim = config.hidden_size
        self.embeddings = AlphaCLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(embed_dim, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(embed_dim, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        alpha_values: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: Optional[bool] = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Encode images with an alpha map.

        Args:
            pixel_values: ``[B, 3, H, W]`` CLIP-normalised images.
            alpha_values: ``[B, 1, H, W]`` normalised alpha in ``[-1.9231, 1.9231]`` (foreground
                +1.9231, background -1.9231), or None for the whole image.
            interpolate_pos_encoding: as in CLIP (then ``alpha_values`` has the images' H, W).
            **kwargs: ``output_hidden_states``, ``output_attentions``, ``return_dict``, as in CLIP.
        Returns:
            :class:`~transformers.modeling_outputs.BaseModelOutputWithPooling` like
            ``CLIPVisionModel``: ``last_hidden_state [B, 1 + num_patches, hidden]`` (before
            ``post_layernorm``), ``pooler_output [B, hidden]`` (CLS after ``post_layernorm``),
            ``hidden_states`` (embeddings after ``pre_layrnorm`` + one per layer) when asked.
        """
        if pixel_values is None:
            raise ValueError("pixel_values: required ([B, 3, H, W] CLIP-normalised images)")
        hidden_states = self.embeddings(pixel_values, alpha_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(hidden_states)

        encoder_outputs: BaseModelOutput = self.encoder(inputs_embeds=hidden_states, **kwargs)

        last_hidden_state = encoder_outputs.last_hidden_state
        pooled_output = self.post_layernorm(last_hidden_state[:, 0, :])
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


class AlphaCLIPVisionModelWithProjection(AlphaCLIPPreTrainedModel):
    """The Alpha-CLIP vision tower with CLIP's ``visual_projection`` (image embeddings)."""

    config: AlphaCLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "vision_model"
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^logit_scale"]

    def __init__(self, config: AlphaCLIPVisionConfig):
        super().__init__(config)
        self.vision_model = AlphaCLIPVisionModel._from_config(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    @can_return_tuple
    def forward(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        alpha_values: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> CLIPVisionModelOutput:
        """Like ``CLIPVisionModelWithProjection.forward`` plus ``alpha_values [B,1,H,W]`` (None = whole
        image); ``image_embeds`` is ``[B, projection_dim]`` (not normalised)."""
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, alpha_values=alpha_values,
            interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        image_embeds = self.visual_projection(vision_outputs.pooler_output)
        return CLIPVisionModelOutput(
            image_embeds=image_embeds,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )


class AlphaCLIPModel(AlphaCLIPPreTrainedModel):
    """A whole Alpha-CLIP: CLIP's text tower and projections, the alpha vision tower.

    State-dict keys are ``CLIPModel``'s plus ``vision_model.embeddings.patch_embedding_alpha.weight``.
    """

    config: AlphaCLIPConfig

    def __init__(self, config: AlphaCLIPConfig):
        super().__init__(config)
        text_config = config.text_config
        vision_config = config.vision_config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = text_config.hidden_size
        self.vision_embed_dim = vision_config.hidden_size

        self.text_model = CLIPTextModel._from_config(text_config)
        self.vision_model = AlphaCLIPVisionModel._from_config(vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(self.config.logit_scale_init_value))
        self.post_init()

    # the text side is CLIP's, unchanged
    get_text_features = CLIPModel.get_text_features

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        alpha_values: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Like ``CLIPModel.get_image_features`` (transformers 5: an output whose ``pooler_output`` is
        the projected ``[B, projection_dim]`` image embedding, not normalised) plus ``alpha_values``
        ``[B,1,H,W]`` normalised (None = whole image)."""
        vision_outputs: BaseModelOutputWithPooling = self.vision_model(
            pixel_values=pixel_values, alpha_values=alpha_values,
            interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs)
        vision_outputs.pooler_output = self.visual_projection(vision_outputs.pooler_output)
        return vision_outputs

    @can_return_tuple
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        alpha_values: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        return_loss: Optional[bool] = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> CLIPOutput:
        """Like ``CLIPModel.forward`` plus ``alpha_values [B_img,1,H,W]`` (normalised; None = whole image).

        Returns :class:`~transformers.models.clip.modeling_clip.CLIPOutput`: ``logits_per_image``
        ``[B_img, B_text]`` (scaled cosine), normalised ``image_embeds`` / ``text_embeds``.
        """
        vision_outputs = self.get_image_features(
            pixel_values=pixel_values, alpha_values=alpha_values,
            interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

        image_embeds = vision_outputs.pooler_output
        text_embeds = text_outputs.pooler_output
        image_embeds = image_embeds / _get_vector_norm(image_embeds)
        text_embeds = text_embeds / _get_vector_norm(text_embeds)

        logits_per_text = torch.matmul(text_embeds, image_embeds.t().to(text_embeds.device))
        logits_per_text = logits_per_text * self.logit_scale.exp().to(text_embeds.device)
        logits_per_image = logits_per_text.t()

        loss = image_text_contrastive_loss(logits_per_text) if return_loss else None
        return CLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


if register_checkpoint_conversion_mapping is not None:
    # transformers 4.x saved the vision tower under ``vision_model.``; CLIPVisionModel loads such keys with
    # the same rule (custom classes get it only when registered by name).
    register_checkpoint_conversion_mapping(
        "AlphaCLIPVisionModel", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True)
