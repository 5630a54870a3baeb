"""The alpha vision towers: an open_clip vision tower with one extra layer, ``conv1_alpha``.

``conv1_alpha`` is a ``Conv2d(1, width, kernel=patch, stride=patch, bias=False)`` over a normalised
alpha map ``[B, 1, H, W]``. Its output is added to the RGB patch embedding before anything else
(class token, positional embedding, norms); nothing else in the tower changes. It starts at zero,
so a freshly converted Alpha-CLIP computes exactly what the plain CLIP computes, whatever the alpha.

Two kinds of open_clip vision tower get it:

- open_clip's own :class:`~open_clip.transformer.VisionTransformer` (OpenAI, LAION, MetaCLIP, DFN,
  ViT-H/14, ViT-bigG/14, ...) -> :class:`AlphaVisionTransformer`; the conv is ``visual.conv1_alpha``,
  beside the RGB ``visual.conv1``;
- open_clip's :class:`~open_clip.timm_model.TimmModel` whose timm trunk is a ViT with timm's patch
  embedding (EVA/EVA02, SigLIP/SigLIP2, PE-Core, timm ViTs) -> :class:`AlphaTimmModel`; the conv is
  ``visual.trunk.patch_embed.conv1_alpha``, beside timm's RGB ``visual.trunk.patch_embed.proj``.

:func:`alpha_tower` converts a plain tower in place. ResNet / ConvNeXt / conv-stem towers are refused
with a clear error: they have no patch embedding to add the alpha embedding to. The whole models
that hold these towers are in :mod:`alphaclip_core.model`.

Alpha maps given to a tower are already normalised (see :mod:`alphaclip_core.alpha`):
foreground ``+1.9231``, background ``-1.9231``; ``alpha=None`` means "whole image"
(``+1.9231`` everywhere). The normalisation is the same for every backbone, also where the image
normalisation differs (SigLIP's images use mean/std 0.5; its alpha still uses 0.5/0.26).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from .alpha import ALPHA_MEAN, ALPHA_STD

try:  # open_clip imports timm lazily too; without timm there are simply no timm towers
    from open_clip.timm_model import TimmModel
except ImportError:  # pragma: no cover
    TimmModel = None  # type: ignore[assignment,misc]

__all__ = ["AlphaVisionTransformer", "AlphaTimmModel", "WHOLE_IMAGE_ALPHA", "alpha_tower", "check_alpha"]

logger = logging.getLogger("alphaclip_core.model")  # the logger these towers always used

#: The normalised value of "foreground" (and of every pixel of a whole-image alpha): (1 - 0.5) / 0.26.
WHOLE_IMAGE_ALPHA: float = (1.0 - ALPHA_MEAN) / ALPHA_STD
_BACKGROUND_ALPHA: float = (0.0 - ALPHA_MEAN) / ALPHA_STD
_RANGE_EPS = 1e-3


def check_alpha(x: torch.Tensor, alpha: Any, check_range: bool = True) -> None:
    """Check ``alpha`` against the images ``x [B, 3, H, W]``: a float ``[B, 1, H, W]`` tensor and, with
    ``check_range``, values in ``[-1.9231, 1.9231]`` (one device sync). Raises TypeError / ValueError
    naming ``alpha``; warns when every value lies in [0, 1] (a raw, un-normalised mask)."""
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha: expected a torch.Tensor [B,1,H,W], got {type(alpha).__name__}")
    if not alpha.is_floating_point():
        raise TypeError(f"alpha: expected a floating point tensor (normalised alpha), got {alpha.dtype}")
    expected = (x.shape[0], 1, x.shape[2], x.shape[3])
    if alpha.dim() != 4 or tuple(alpha.shape) != expected:
        raise ValueError(
            f"alpha: expected shape {list(expected)} (one 1-channel map per image, the image's "
            f"height and width), got {list(alpha.shape)}")
    if check_range and alpha.numel() and not torch.jit.is_scripting() and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(alpha.detach())
        lo, hi = float(lo), float(hi)
        if lo != lo or hi != hi:  # aminmax returns NaN when any value is NaN
            raise ValueError("alpha: holds NaN values; expected a normalised alpha in "
                             f"[{_BACKGROUND_ALPHA:.4f}, {WHOLE_IMAGE_ALPHA:.4f}]")
        if lo < _BACKGROUND_ALPHA - _RANGE_EPS or hi > WHOLE_IMAGE_ALPHA + _RANGE_EPS:
            raise ValueError(
                f"alpha: values must lie in [{_BACKGROUND_ALPHA:.4f}, {WHOLE_IMAGE_ALPHA:.4f}] "
                f"(normalised with mean {ALPHA_MEAN}, std {ALPHA_STD}); got [{lo:.4f}, {hi:.4f}]")
        if lo >= 0.0 and hi <= 1.0:
            warnings.warn(
                "alpha: all values lie in [0, 1]; this looks like a raw mask. Normalise it with "
                "alphaclip_core.normalize_alpha (foreground +1.9231, background -1.9231).",
                stacklevel=5)


def _zero_alpha_conv_for_plain(state_dict: Dict[str, Any], prefix: str, rgb_key: str, alpha_key: str) -> None:
    """A state dict of a plain tower (RGB patch conv, no alpha conv) loads as a zero alpha conv."""
    rgb, alpha = prefix + rgb_key, prefix + alpha_key
    if rgb in state_dict and alpha not in state_dict:
        w = state_dict[rgb]
        state_dict[alpha] = torch.zeros((w.shape[0], 1) + tuple(w.shape[2:]), dtype=w.dtype, device=w.device)
        logger.debug("%s: no %s in the state dict (a plain CLIP): the alpha conv is set to zero", prefix, alpha)


class AlphaVisionTransformer(VisionTransformer):
    """open_clip's :class:`~open_clip.transformer.VisionTransformer` that also reads an alpha map.

    Takes the same constructor arguments as ``VisionTransformer``. The extra parameter
    ``conv1_alpha.weight`` has shape ``[width, 1, patch, patch]`` and is zero-initialised. A state
    dict of the plain tower (``conv1.weight`` but no ``conv1_alpha.weight``) loads with a zero alpha
    conv, also with ``strict=True``.

    Attributes:
        check_alpha: when True (default) every forward checks that ``alpha`` lies in the normalised
            range ``[-1.9231, 1.9231]`` (one device sync). Training loops may switch it off.
    """

    #: the tower's transformer blocks and its layers after them (parameter-name prefixes, for training)
    BLOCKS = "transformer.resblocks"
    HEAD = ("ln_post", "proj", "attn_pool", "attn_pool_contrastive")

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

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        _zero_alpha_conv_for_plain(state_dict, prefix, "conv1.weight", "conv1_alpha.weight")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- alpha handling -------------------------------------------------------------------------
    def embed_alpha(self, x: torch.Tensor, alpha: Optional[torch.Tensor]) -> torch.Tensor:
        """``conv1_alpha`` applied to ``alpha`` (``None`` = whole image): ``[B, width, gh, gw]``."""
        if alpha is None:
            # the same computation as an explicit all-foreground map, so the two agree bit for bit
            alpha = x.new_full((x.shape[0], 1, x.shape[2], x.shape[3]), WHOLE_IMAGE_ALPHA)
        else:
            check_alpha(x, alpha, self.check_alpha)
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


def _timm_patch_embed(trunk: nn.Module) -> nn.Module:
    """The trunk's timm patch embedding, if it is a ViT's: ``patch_embed.proj`` a patchifying Conv2d
    (kernel == stride, 3 input channels). Raises TypeError naming what the trunk is otherwise."""
    pe = getattr(trunk, "patch_embed", None)
    proj = getattr(pe, "proj", None)
    if not isinstance(proj, nn.Conv2d) or proj.in_channels != 3 or tuple(proj.kernel_size) != tuple(proj.stride) \
            or proj.padding not in ((0, 0), "valid") or proj.groups != 1:
        what = (f"its patch embedding is {type(pe).__name__} (a conv stem, not a patchifying conv)"
                if pe is not None else "it has no patch embedding (a CNN)")
        raise TypeError(
            f"visual: the timm trunk {type(trunk).__name__} is not a ViT with a patch embedding conv "
            f"(patch_embed.proj, kernel == stride): {what}. Alpha-CLIP adds its alpha conv beside a ViT's "
            "patch embedding; ResNet, ConvNeXt and hybrid conv-stem towers are not supported")
    return pe


class AlphaTimmModel(TimmModel if TimmModel is not None else nn.Module):  # type: ignore[misc]
    """open_clip's :class:`~open_clip.timm_model.TimmModel` with a timm ViT trunk that also reads an alpha map.

    Takes the same constructor arguments as ``TimmModel``. The alpha conv lives beside timm's RGB
    patch embedding conv (``trunk.patch_embed.proj``) as ``trunk.patch_embed.conv1_alpha``
    (``[width, 1, patch, patch]``, no bias, zero-initialised); a forward hook on ``proj`` adds its
    output to the RGB patch embedding, so every timm forward (``forward``, ``forward_features``,
    ``forward_intermediates``, dynamic image size / padding) sees it, before timm's class token,
    positional embedding (or RoPE) and norms. ``conv1_alpha`` is also reachable as
    ``visual.conv1_alpha``. A state dict of the plain tower loads with a zero alpha conv.

    Attributes:
        check_alpha: as in :class:`AlphaVisionTransformer`.
    """

    BLOCKS = "trunk.blocks"
    HEAD = ("trunk.norm", "trunk.fc_norm", "trunk.attn_pool", "trunk.head", "head")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_alpha_conv()

    def _add_alpha_conv(self) -> None:
        pe = _timm_patch_embed(self.trunk)
        proj = pe.proj
        conv1_alpha = nn.Conv2d(1, proj.out_channels, kernel_size=proj.kernel_size, stride=proj.stride, bias=False,
                                device=proj.weight.device, dtype=proj.weight.dtype)
        nn.init.zeros_(conv1_alpha.weight)
        pe.conv1_alpha = conv1_alpha
        proj.register_forward_hook(self._add_alpha_embedding)
        self.check_alpha = True
        self._pending_alpha: Optional[torch.Tensor] = None

    @classmethod
    def from_plain(cls, visual: nn.Module) -> "AlphaTimmModel":
        """Turn a plain open_clip ``TimmModel`` with a ViT trunk into an alpha tower, in place
        (weights kept, zero ``conv1_alpha`` added: outputs unchanged)."""
        if isinstance(visual, cls):
            return visual
        if TimmModel is None or type(visual) is not TimmModel:
            raise TypeError(f"visual: expected open_clip's TimmModel, got {type(visual).__name__}")
        _timm_patch_embed(visual.trunk)  # refuse before changing anything
        visual.__class__ = cls
        visual._add_alpha_conv()
        return visual

    @property
    def conv1_alpha(self) -> nn.Conv2d:
        """The alpha conv (``trunk.patch_embed.conv1_alpha``)."""
        return self.trunk.patch_embed.conv1_alpha

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        _zero_alpha_conv_for_plain(state_dict, prefix, "trunk.patch_embed.proj.weight",
                                   "trunk.patch_embed.conv1_alpha.weight")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _add_alpha_embedding(self, proj: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor
                             ) -> torch.Tensor:
        """Forward hook of ``patch_embed.proj``: RGB patch embedding + ``conv1_alpha(alpha)``."""
        x = inputs[0]
        alpha = self._pending_alpha
        if alpha is None:
            alpha = torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), WHOLE_IMAGE_ALPHA, dtype=x.dtype,
                               device=x.device)
        elif alpha.shape[-2:] != x.shape[-2:]:
            # timm padded the image to a multiple of the patch (dynamic_img_pad): the padding is background
            pad_h, pad_w = x.shape[-2] - alpha.shape[-2], x.shape[-1] - alpha.shape[-1]
            alpha = F.pad(alpha, (0, pad_w, 0, pad_h), value=_BACKGROUND_ALPHA)
        weight = self.trunk.patch_embed.conv1_alpha.weight
        return output + self.trunk.patch_embed.conv1_alpha(alpha.to(dtype=weight.dtype)).to(output.dtype)

    def _with_alpha(self, x: torch.Tensor, alpha: Optional[torch.Tensor], run):
        previous = self._pending_alpha
        if alpha is not None:
            self._pending_alpha = alpha
        if self._pending_alpha is not None:  # given here or by the whole model's forward_intermediates
            check_alpha(x, self._pending_alpha, self.check_alpha)
        try:
            return run(x.to(dtype=self.trunk.patch_embed.proj.weight.dtype))
        finally:
            self._pending_alpha = previous

    def forward(self, x: torch.Tensor, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode images: ``x [B, 3, H, W]`` normalised images (cast to the tower's dtype), ``alpha``
        ``[B, 1, H, W]`` normalised alpha in ``[-1.9231, 1.9231]`` or ``None`` (whole image) ->
        ``[B, embed_dim]`` features, like open_clip's ``TimmModel``."""
        return self._with_alpha(x, alpha, super().forward)

    def forward_intermediates(self, x: torch.Tensor, alpha: Optional[torch.Tensor] = None, **kwargs: Any
                              ) -> Dict[str, Any]:
        """open_clip's ``TimmModel.forward_intermediates`` (same keyword arguments) with an alpha map."""
        return self._with_alpha(x, alpha, lambda image: super(AlphaTimmModel, self).forward_intermediates(
            image, **kwargs))


def alpha_tower(visual: nn.Module) -> nn.Module:
    """Give an open_clip vision tower its alpha conv, in place (zero: outputs unchanged).

    ``VisionTransformer`` -> :class:`AlphaVisionTransformer`; ``TimmModel`` with a ViT trunk ->
    :class:`AlphaTimmModel`; an alpha tower is returned as is.

    Raises:
        TypeError: a ResNet (``ModifiedResNet``), a timm CNN / conv-stem trunk (ConvNeXt, FastViT,
            ViTamin, ...) or anything else, naming what it is.
    """
    if isinstance(visual, (AlphaVisionTransformer, AlphaTimmModel)):
        return visual
    if type(visual) is VisionTransformer:
        return AlphaVisionTransformer.from_plain(visual)
    if TimmModel is not None and type(visual) is TimmModel:
        return AlphaTimmModel.from_plain(visual)
    if type(visual).__name__ == "ModifiedResNet":
        raise TypeError("visual: a ResNet tower (open_clip ModifiedResNet); Alpha-CLIP is supported for ViT towers "
                        "only (the reference's ResNet stem variant was never released)")
    raise TypeError(f"visual: expected an open_clip VisionTransformer or a TimmModel with a ViT trunk, got "
                    f"{type(visual).__name__}")
