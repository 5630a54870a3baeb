"""Alpha-SigLIP in transformers: SigLIP's modules plus ONE new weight, the alpha patch embedding.

``embeddings.patch_embedding_alpha`` is a ``Conv2d(1, hidden_size, kernel=patch, stride=patch,
bias=False)`` over a normalised alpha map ``[B, 1, H, W]``. Its output is added to the RGB patch
embedding before the position embedding; nothing else in SigLIP changes. It is zero-initialised, so
a fresh model (or one loaded from a plain SigLIP checkpoint) computes exactly what SigLIP computes,
whatever the alpha.

Alpha values given to the models are NORMALISED exactly as for Alpha-CLIP: ``(mask - 0.5) / 0.26``,
i.e. foreground ``+1.9231`` and background ``-1.9231`` (SigLIP's IMAGES use mean/std 0.5; the alpha
does not). ``alpha_values=None`` means the whole image (``+1.9231`` everywhere).
``AlphaSiglipProcessor`` produces both from images and masks/boxes.

Self-contained (imports torch, transformers and its sibling ``modeling_alpha_clip`` for the alpha
checks): ``save_pretrained`` copies these files next to the weights, so that
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works without alpha-clip installed.
"""
from typing import Optional

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.models.siglip.modeling_siglip import (
    SiglipEncoder,
    SiglipModel,
    SiglipMultiheadAttentionPoolingHead,
    SiglipOutput,
    SiglipPreTrainedModel,
    SiglipTextModel,
    SiglipVisionEmbeddings,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

try:  # not importable from remote code in every transformers version: then only the legacy-key mapping is lost
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import PrefixChange
except ImportError:  # pragma: no cover
    register_checkpoint_conversion_mapping = None

from .configuration_alpha_siglip import AlphaSiglipConfig, AlphaSiglipVisionConfig
from .modeling_alpha_clip import ALPHA_MEAN, ALPHA_STD, WHOLE_IMAGE_ALPHA, _alpha_conv, _alpha_patch_embeds

__all__ = ["ALPHA_MEAN", "ALPHA_STD", "WHOLE_IMAGE_ALPHA", "AlphaSiglipPreTrainedModel",
           "AlphaSiglipVisionEmbeddings", "AlphaSiglipVisionModel", "AlphaSiglipModel", "siglip_loss"]


def siglip_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss of ``[N, N]`` logits (matching pairs on the diagonal), as
    transformers' ``SiglipModel`` computes it: ``-1/N * sum_ij log sigmoid(label_ij * logit_ij)``."""
    eye = torch.eye(logits_per_text.size(0), device=logits_per_text.device)
    return -torch.nn.functional.logsigmoid((2 * eye - 1) * logits_per_text).sum(dim=-1).mean()


class AlphaSiglipVisionEmbeddings(SiglipVisionEmbeddings):
    """SigLIP's vision embeddings plus ``patch_embedding_alpha`` (``[hidden, 1, patch, patch]``, zero-init).

    Attributes:
        check_alpha: when True (default) each forward checks that ``alpha_values`` lies in the
            normalised range ``[-1.9231, 1.9231]`` (one device sync). Training loops may switch it off.
    """

    def __init__(self, config: AlphaSiglipVisionConfig):
        super().__init__(config)
        self.patch_embedding_alpha = _alpha_conv(self.embed_dim, self.patch_size)
        self.check_alpha = True

    def forward(self, pixel_values: torch.Tensor, alpha_values: Optional[torch.Tensor] = None,
                interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """``pixel_values [B,3,H,W]`` + ``alpha_values [B,1,H,W]`` (normalised; None = whole image)
        -> embeddings ``[B, num_patches, hidden]``."""
        _, _, height, width = pixel_values.shape
        embeddings = _alpha_patch_embeds(self, pixel_values, alpha_values).flatten(2).transpose(1, 2)
        if interpolate_pos_encoding:
            embeddings = embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        else:
            embeddings = embeddings + self.position_embedding(self.position_ids)
        return embeddings


class AlphaSiglipPreTrainedModel(SiglipPreTrainedModel):
    """SigLIP's pre-trained base with the alpha conv zero-initialised (so a missing alpha weight = SigLIP)."""

    config: AlphaSiglipConfig
    base_model_prefix = "alpha_siglip"
    _no_split_modules = ["SiglipTextEmbeddings", "AlphaSiglipVisionEmbeddings", "SiglipEncoderLayer",
                         "SiglipMultiheadAttentionPoolingHead"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AlphaSiglipVisionEmbeddings):
            init.zeros_(module.patch_embedding_alpha.weight)
        elif isinstance(module, AlphaSiglipModel):
            init.zeros_(module.logit_scale)
            init.zeros_(module.logit_bias)


class AlphaSiglipVisionModel(AlphaSiglipPreTrainedModel):
    """The Alpha-SigLIP vision tower: :class:`~transformers.SiglipVisionModel` + alpha.

    Same submodules and state-dict keys as ``SiglipVisionModel`` (``embeddings.*``, ``encoder.layers.*``,
    ``post_layernorm``, ``head.*`` when ``vision_use_head``) plus ``embeddings.patch_embedding_alpha.weight``.
    """

    config: AlphaSiglipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "vision_model"
    _input_embed_layer = "patch_embedding"
    # loading the tower out of a whole AlphaSiglipModel folder skips the rest quietly
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^logit_scale", r"^logit_bias"]

    def __init__(self, config: AlphaSiglipVisionConfig):
        super().__init__(config)
        self.embeddings = AlphaSiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = config.vision_use_head
        if self.use_head:
            self.head = SiglipMultiheadAttentionPoolingHead(config)
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
            pixel_values: ``[B, 3, H, W]`` SigLIP-normalised images (mean/std 0.5).
            alpha_values: ``[B, 1, H, W]`` normalised alpha in ``[-1.9231, 1.9231]`` (foreground
                +1.9231, background -1.9231), or None for the whole image.
            interpolate_pos_encoding: as in SigLIP (then ``alpha_values`` has the images' H, W).
            **kwargs: ``output_hidden_states``, ``output_attentions``, ``return_dict``, as in SigLIP.
        Returns:
            :class:`~transformers.modeling_outputs.BaseModelOutputWithPooling` like
            ``SiglipVisionModel``: ``last_hidden_state [B, num_patches, hidden]`` (after
            ``post_layernorm``), ``pooler_output [B, hidden]`` (the attention-pooling head; None without
            a head), ``hidden_states`` (embeddings + one per layer) when asked.
        """
        if pixel_values is None:
            raise ValueError("pixel_values: required ([B, 3, H, W] SigLIP-normalised images)")
        hidden_states = self.embeddings(pixel_values, alpha_values, interpolate_pos_encoding=interpolate_pos_encoding)
        encoder_outputs: BaseModelOutput = self.encoder(inputs_embeds=hidden_states, **kwargs)
        last_hidden_state = self.post_layernorm(encoder_outputs.last_hidden_state)
        pooler_output = self.head(last_hidden_state) if self.use_head else None
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooler_output)


class AlphaSiglipModel(AlphaSiglipPreTrainedModel):
    """A whole Alpha-SigLIP: SigLIP's text tower, scale and bias; the alpha vision tower.

    State-dict keys are ``SiglipModel``'s plus ``vision_model.embeddings.patch_embedding_alpha.weight``.
    """

    config: AlphaSiglipConfig

    def __init__(self, config: AlphaSiglipConfig):
        super().__init__(config)
        self.text_model = SiglipTextModel._from_config(config.text_config)
        self.vision_model = AlphaSiglipVisionModel._from_config(config.vision_config)
        self.logit_scale = nn.Parameter(torch.randn(1))
        self.logit_bias = nn.Parameter(torch.randn(1))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.token_embedding = value

    # the text side is SigLIP's, unchanged
    get_text_features = SiglipModel.get_text_features

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        alpha_values: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Like ``SiglipModel.get_image_features`` (``pooler_output [B, hidden]``, not normalised) plus
        ``alpha_values [B,1,H,W]`` normalised (None = whole image)."""
        return self.vision_model(pixel_values=pixel_values, alpha_values=alpha_values,
                                 interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)

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
    ) -> SiglipOutput:
        """Like ``SiglipModel.forward`` plus ``alpha_values [B_img,1,H,W]`` (normalised; None = whole image).

        Returns :class:`~transformers.models.siglip.modeling_siglip.SiglipOutput`: ``logits_per_image``
        ``[B_img, B_text]`` = ``exp(logit_scale) * cos + logit_bias`` (``sigmoid`` gives probabilities),
        normalised ``image_embeds`` / ``text_embeds``, and SigLIP's sigmoid loss with ``return_loss``.
        """
        vision_outputs = self.vision_model(pixel_values=pixel_values, alpha_values=alpha_values,
                                           interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        text_outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                       **kwargs)
        image_embeds = vision_outputs.pooler_output
        text_embeds = text_outputs.pooler_output
        image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)

        logits_per_text = torch.matmul(text_embeds, image_embeds.t().to(text_embeds.device))
        logit_scale, logit_bias = self.logit_scale.to(text_embeds.device), self.logit_bias.to(text_embeds.device)
        logits_per_text = logits_per_text * logit_scale.exp() + logit_bias
        logits_per_image = logits_per_text.t()
        loss = siglip_loss(logits_per_text) if return_loss else None
        return SiglipOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


if register_checkpoint_conversion_mapping is not None:
    # transformers 4.x saved SigLIP's vision tower under ``vision_model.``; SiglipVisionModel loads such keys
    # with the same rule (custom classes get it only when registered by name).
    register_checkpoint_conversion_mapping(
        "AlphaSiglipVisionModel", [PrefixChange(prefix_to_remove="vision_model")], overwrite=True)
