"""The Alpha-CLIP model: open_clip's ViT with one extra layer, ``conv1_alpha``.

``conv1_alpha`` is a ``Conv2d(1, width, kernel=patch, stride=patch, bias=False)`` over a normalised
alpha map ``[B, 1, H, W]``. Its output is added to the RGB patch embedding (``conv1``) before the
class token and the positional embedding; nothing else in the tower changes. It starts at zero, so
a freshly converted Alpha-CLIP computes exactly what the plain CLIP computes, whatever the alpha.

Alpha maps given to the model are already normalised (see :mod:`alphaclip_core.alpha`):
foreground ``+1.9231``, background ``-1.9231``; ``alpha=None`` means "whole image"
(``+1.9231`` everywhere).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, is_dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer
from torch import nn

from .alpha import ALPHA_MEAN, ALPHA_STD

__all__ = ["AlphaVisionTransformer", "AlphaCLIP", "WHOLE_IMAGE_ALPHA", "add_alpha"]

logger = logging.getLogger(__name__)

#: The normalised value of "foreground" (and of every pixel of a whole-image alpha): (1 - 0.5) / 0.26.
WHOLE_IMAGE_ALPHA: float = (1.0 - ALPHA_MEAN) / ALPHA_STD
_BACKGROUND_ALPHA: float = (0.0 - ALPHA_MEAN) / ALPHA_STD
_RANGE_EPS = 1e-3


class AlphaVisionTransformer(VisionTransformer):
    """open_clip's :class:`~open_clip.transformer.VisionTransformer` that also reads an alpha map.

    Takes the same constructor arguments as ``VisionTransformer``. The extra parameter
    ``conv1_alpha.weight`` has shape ``[width, 1, patch, patch]`` and is zero-initialised.

    Attributes:
        check_alpha: when True (default) every forward checks that ``alpha`` lies in the normalised
            range ``[-1.9231, 1.9231]`` (one device sync). Training loops may switch it off.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_alpha_conv()

    def _add_alpha_conv(self) -> None:
        width = self.conv1.out_channels
        conv1_alpha = nn.Conv2d(
            1, width, kernel_size=self.conv1.kernel_size, stride=self.conv1.stride, bias=False,
            device=self.conv1.weight.device, dtype=self.conv1.weight.dtype,
        )
        nn.init.zeros_(conv1_alpha.weight)
        self.conv1_alpha = conv1_alpha
        self.check_alpha = True
        self._pending_alpha: Optional[torch.Tensor] = None

    @classmethod
    def from_plain(cls, visual: VisionTransformer) -> "AlphaVisionTransformer":
        """Turn a plain open_clip ``VisionTransformer`` into an alpha tower, in place.

        The existing weights are kept and a zero ``conv1_alpha`` is added, so outputs are unchanged.
        """
        if isinstance(visual, cls):
            return visual
        if type(visual) is not VisionTransformer:
            raise TypeError(
                f"visual: expected open_clip's VisionTransformer, got {type(visual).__name__}; "
                "Alpha-CLIP is defined for ViT towers only")
        visual.__class__ = cls
        visual._add_alpha_conv()
        return visual

    # --- alpha handling -------------------------------------------------------------------------
    def _validate_alpha(self, x: torch.Tensor, alpha: torch.Tensor) -> None:
        if not isinstance(alpha, torch.Tensor):
            raise TypeError(f"alpha: expected a torch.Tensor [B,1,H,W], got {type(alpha).__name__}")
        if not alpha.is_floating_point():
            raise TypeError(f"alpha: expected a floating point tensor (normalised alpha), got {alpha.dtype}")
        expected = (x.shape[0], 1, x.shape[2], x.shape[3])
        if alpha.dim() != 4 or tuple(alpha.shape) != expected:
            raise ValueError(
                f"alpha: expected shape {list(expected)} (one 1-channel map per image, the image's "
                f"height and width), got {list(alpha.shape)}")
        if self.check_alpha and alpha.numel() and not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            lo, hi = torch.aminmax(alpha.detach())
            lo, hi = float(lo), float(hi)
            if lo < _BACKGROUND_ALPHA - _RANGE_EPS or hi > WHOLE_IMAGE_ALPHA + _RANGE_EPS:
                raise ValueError(
                    f"alpha: values must lie in [{_BACKGROUND_ALPHA:.4f}, {WHOLE_IMAGE_ALPHA:.4f}] "
                    f"(normalised with mean {ALPHA_MEAN}, std {ALPHA_STD}); got [{lo:.4f}, {hi:.4f}]")
            if lo >= 0.0 and hi <= 1.0:
                warnings.warn(
                    "alpha: all values lie in [0, 1]; this looks like a raw mask. Normalise it with "
                    "alphaclip_core.normalize_alpha (foreground +1.9231, background -1.9231).",
                    stacklevel=4)

    def embed_alpha(self, x: torch.Tensor, alpha: Optional[torch.Tensor]) -> torch.Tensor:
        """``conv1_alpha`` applied to ``alpha`` (``None`` = whole image): ``[B, width, gh, gw]``."""
        if alpha is None:
            # the same computation as an explicit all-foreground map, so the two agree bit for bit
            alpha = x.new_full((x.shape[0], 1, x.shape[2], x.shape[3]), WHOLE_IMAGE_ALPHA)
        else:
            self._validate_alpha(x, alpha)
        return self.conv1_alpha(alpha.to(dtype=self.conv1_alpha.weight.dtype))

    def _embeds(self, x: torch.Tensor, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        if alpha is None:
            alpha = self._pending_alpha
        x = x.to(dtype=self.conv1.weight.dtype)
        # the alpha conv's output is added to the RGB patch embedding, before cls token + pos embed
        x = self.conv1(x) + self.embed_alpha(x, alpha)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid**2, width]
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.patch_dropout(x)
        return self.ln_pre(x)

    # --- forwards -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, alpha: Optional[torch.Tensor] = None):
        """Encode images.

        Args:
            x: ``[B, 3, H, W]`` CLIP-normalised images (any float dtype; cast to the tower's dtype).
            alpha: ``[B, 1, H, W]`` normalised alpha in ``[-1.9231, 1.9231]``, or ``None`` for the
                whole image.
        Returns:
            ``[B, output_dim]`` pooled features (and ``[B, grid**2, width]`` tokens when
            ``output_tokens`` is set), like open_clip's tower.
        """
        x = self._embeds(x, alpha)
        x = self.transformer(x)
        pooled, tokens = self._pool(x)
        if self.proj is not None:
            pooled = pooled @ self.proj
        if self.output_tokens:
            return pooled, tokens
        return pooled

    def forward_intermediates(self, x: torch.Tensor, alpha: Optional[torch.Tensor] = None, **kwargs: Any
                              ) -> Dict[str, Any]:
        """open_clip's ``forward_intermediates`` (same keyword arguments) with an alpha map.

        ``alpha`` is ``[B, 1, H, W]`` normalised, or ``None`` for the whole image.
        """
        previous = self._pending_alpha
        if alpha is not None:
            self._pending_alpha = alpha
        try:
            return super().forward_intermediates(x, **kwargs)
        finally:
            self._pending_alpha = previous


def add_alpha(model: CLIP) -> "AlphaCLIP":
    """Turn a plain open_clip :class:`~open_clip.model.CLIP` into an :class:`AlphaCLIP`, in place.

    The new ``visual.conv1_alpha`` is zero, so the model's outputs are unchanged for any alpha.
    """
    if isinstance(model, AlphaCLIP):
        return model
    if type(model) is not CLIP:
        raise TypeError(f"model: expected an open_clip CLIP, got {type(model).__name__}")
    AlphaVisionTransformer.from_plain(model.visual)
    model.__class__ = AlphaCLIP
    model.model_cfg = None
    return model


def _jsonable(cfg: Any) -> Any:
    if is_dataclass(cfg):
        return asdict(cfg)
    return cfg


class AlphaCLIP(CLIP):
    """open_clip's :class:`~open_clip.model.CLIP` whose vision tower is an :class:`AlphaVisionTransformer`.

    Constructed from the same config as ``CLIP`` (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...).
    The text tower is the plain CLIP text tower. ``alpha_clip`` is the marker key that open_clip
    model configs carry so that open_clip's factory builds this class (see
    ``alphaclip_integrations.open_clip``); its value is ignored.
    """

    def __init__(self, embed_dim: int, vision_cfg: Any, text_cfg: Any, alpha_clip: Any = True,
                 **kwargs: Any) -> None:
        super().__init__(embed_dim, vision_cfg, text_cfg, **kwargs)
        AlphaVisionTransformer.from_plain(self.visual)
        cfg = {"embed_dim": embed_dim, "vision_cfg": _jsonable(vision_cfg), "text_cfg": _jsonable(text_cfg)}
        for key in ("quick_gelu", "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale"):
            if key in kwargs and kwargs[key] is not None:
                cfg[key] = float(kwargs[key]) if key.startswith("init_") else kwargs[key]
        cfg["alpha_clip"] = True
        #: the open_clip model config this model was built from (JSON-able), used when saving.
        self.model_cfg: Optional[Dict[str, Any]] = cfg

    def encode_image(self, image: torch.Tensor, alpha: Optional[torch.Tensor] = None,
                     normalize: bool = False) -> torch.Tensor:
        """``[B, 3, H, W]`` images + ``[B, 1, H, W]`` normalised alpha (None = whole image) -> ``[B, embed_dim]``."""
        features = self.visual(image, alpha)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None,
                alpha: Optional[torch.Tensor] = None):
        """Like open_clip's ``CLIP.forward``, plus ``alpha`` (``[B, 1, H, W]``, None = whole image)."""
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
        """open_clip's ``CLIP.forward_intermediates`` with an alpha map for the image tower."""
        self.visual._pending_alpha = alpha
        try:
            return super().forward_intermediates(image, text, **kwargs)
        finally:
            self.visual._pending_alpha = None
