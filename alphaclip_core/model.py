"""The Alpha-CLIP model: an open_clip model whose vision tower reads an alpha map.

Whole models: :class:`AlphaCLIP` (open_clip's ``CLIP``) and :class:`AlphaCustomTextCLIP` (open_clip's
``CustomTextCLIP``: EVA, SigLIP, ... whose text tower lives under ``text.``), both :class:`AlphaModel`.
:func:`add_alpha` converts a plain model in place.

Their vision towers (:class:`AlphaVisionTransformer`, :class:`AlphaTimmModel`: the tower plus one zero-initialised
``conv1_alpha`` whose output is added to the RGB patch embedding) are defined in :mod:`alphaclip_core.towers`
and still import from here, with :data:`WHOLE_IMAGE_ALPHA`, :func:`alpha_tower` and :func:`check_alpha`.

Alpha maps given to the model are already normalised (see :mod:`alphaclip_core.alpha`):
foreground ``+1.9231``, background ``-1.9231``; ``alpha=None`` means "whole image".
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from torch import nn

# the towers lived here before the core was split (issue 16): their old import path keeps working
from .towers import WHOLE_IMAGE_ALPHA, AlphaTimmModel, AlphaVisionTransformer, alpha_tower, check_alpha

__all__ = ["AlphaVisionTransformer", "AlphaTimmModel", "AlphaModel", "AlphaCLIP", "AlphaCustomTextCLIP",
           "WHOLE_IMAGE_ALPHA", "add_alpha", "alpha_tower", "check_alpha"]


def _jsonable(cfg: Any) -> Any:
    if is_dataclass(cfg):
        return asdict(cfg)
    return cfg


class AlphaModel:
    """What every open_clip Alpha-CLIP is (:class:`AlphaCLIP`, :class:`AlphaCustomTextCLIP`): the open_clip
    model's interface plus an ``alpha`` argument for the image tower.

    Protocol: ``encode_image(image [B,3,H,W], alpha [B,1,H,W] | None, normalize)`` and
    ``encode_text(tokens)``; ``forward(image, text, alpha)`` returns open_clip's outputs (with
    ``logit_bias`` for SigLIP-style models). ``model_cfg`` is the open_clip config the model was
    built from (JSON-able, used when saving) or None.
    """

    model_cfg: Optional[Dict[str, Any]]

    def _remember_cfg(self, embed_dim: int, vision_cfg: Any, text_cfg: Any, kwargs: Dict[str, Any],
                      custom_text: bool) -> None:
        alpha_tower(self.visual)
        cfg: Dict[str, Any] = {"embed_dim": embed_dim, "vision_cfg": _jsonable(vision_cfg),
                               "text_cfg": _jsonable(text_cfg)}
        for key in ("quick_gelu", "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale"):
            if key in kwargs and kwargs[key] is not None:
                cfg[key] = float(kwargs[key]) if key.startswith("init_") else kwargs[key]
        if custom_text:
            cfg["custom_text"] = True
        cfg["alpha_clip"] = True
        #: the open_clip model config this model was built from (JSON-able), used when saving.
        self.model_cfg = cfg

    #: dtype of the features ``encode_image`` / ``encode_text`` return; None: the towers' own dtype (as
    #: open_clip). :func:`alphaclip_core.precision.apply_precision` sets float32, so that features of a
    #: bf16/fp16 model compare with float32 ones (normalised after the cast: unit norm in float32).
    feature_dtype: Optional[torch.dtype] = None

    def encode_image(self, image: torch.Tensor, alpha: Optional[torch.Tensor] = None,
                     normalize: bool = False) -> torch.Tensor:
        """``[B, 3, H, W]`` images + ``[B, 1, H, W]`` normalised alpha (None = whole image) -> ``[B, embed_dim]``."""
        features = self.visual(image, alpha)
        if self.feature_dtype is not None:
            features = features.to(self.feature_dtype)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """open_clip's ``encode_text`` (``[B, context]`` tokens -> ``[B, embed_dim]``), in :attr:`feature_dtype`."""
        features = super().encode_text(text)
        if self.feature_dtype is not None:
            features = features.to(self.feature_dtype)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None,
                alpha: Optional[torch.Tensor] = None):
        """Like open_clip's ``forward``, plus ``alpha`` (``[B, 1, H, W]``, None = whole image)."""
        if alpha is not None and image is None:
            raise ValueError("alpha: given without an image")
        image_features = self.encode_image(image, alpha, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features,
                   "logit_scale": self.logit_scale.exp()}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    def forward_intermediates(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None,
                              alpha: Optional[torch.Tensor] = None, **kwargs: Any) -> Dict[str, Any]:
        """open_clip's ``forward_intermediates`` with an alpha map for the image tower."""
        self.visual._pending_alpha = alpha
        try:
            return super().forward_intermediates(image, text, **kwargs)
        finally:
            self.visual._pending_alpha = None


class AlphaCLIP(AlphaModel, CLIP):
    """open_clip's :class:`~open_clip.model.CLIP` whose vision tower reads an alpha map
    (:class:`AlphaVisionTransformer`, or :class:`AlphaTimmModel` for a timm ViT tower).

    Constructed from the same config as ``CLIP`` (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...).
    The text tower is the plain CLIP text tower. ``alpha_clip`` is the marker key that open_clip
    model configs carry so that open_clip's factory builds this class (see
    ``alphaclip_integrations.open_clip``); its value is ignored.
    """

    def __init__(self, embed_dim: int, vision_cfg: Any, text_cfg: Any, alpha_clip: Any = True,
                 **kwargs: Any) -> None:
        super().__init__(embed_dim, vision_cfg, text_cfg, **kwargs)
        self._remember_cfg(embed_dim, vision_cfg, text_cfg, kwargs, custom_text=False)


class AlphaCustomTextCLIP(AlphaModel, CustomTextCLIP):
    """open_clip's :class:`~open_clip.model.CustomTextCLIP` (EVA, SigLIP, MetaCLIP-2, ... configs with
    ``custom_text``: the text tower under ``text.``) whose vision tower reads an alpha map.

    Constructed from the same config as ``CustomTextCLIP``; ``alpha_clip`` as in :class:`AlphaCLIP`.
    """

    def __init__(self, embed_dim: int, vision_cfg: Any, text_cfg: Any, alpha_clip: Any = True,
                 **kwargs: Any) -> None:
        super().__init__(embed_dim, vision_cfg, text_cfg, **kwargs)
        self._remember_cfg(embed_dim, vision_cfg, text_cfg, kwargs, custom_text=True)


def add_alpha(model: nn.Module) -> AlphaModel:
    """Turn a plain open_clip ``CLIP`` / ``CustomTextCLIP`` into an :class:`AlphaCLIP` /
    :class:`AlphaCustomTextCLIP`, in place.

    The new alpha conv is zero, so the model's outputs are unchanged for any alpha.

    Raises:
        TypeError: ``model`` is not one of those classes (e.g. CoCa), or its vision tower is not a ViT
            (see :func:`alpha_tower`).
    """
    if isinstance(model, AlphaModel):
        return model
    classes = {CLIP: AlphaCLIP, CustomTextCLIP: AlphaCustomTextCLIP}
    if type(model) not in classes:
        raise TypeError(f"model: expected an open_clip CLIP or CustomTextCLIP, got {type(model).__name__}")
    alpha_tower(model.visual)
    model.__class__ = classes[type(model)]
    model.model_cfg = None
    return model
