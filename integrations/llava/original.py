"""Alpha-CLIP in the original LLaVA code base (``pip install --no-deps llava-torch==1.2.2.post1``).

- :class:`AlphaCLIPVisionTower` has the interface of LLaVA's ``CLIPVisionTower`` (``load_model``,
  ``forward``, ``feature_select``, ``hidden_size``, ``num_patches``, ``num_patches_per_side``,
  ``image_processor``, ``dummy_feature``, ``dtype``, ``device``, ``config``) and reads 4-channel
  image tensors ``[B, 4, H, W]``: channels 0-2 the CLIP-normalised RGB, channel 3 the normalised
  alpha (foreground +1.9231, background -1.9231). The alpha rides inside LLaVA's ``images`` tensor,
  so LLaVA's data flow is untouched. A 3-channel tensor means "whole image".
- :class:`RGBAImageProcessor` is the tower's ``image_processor``: the calls LLaVA makes on a
  ``CLIPImageProcessor`` (``preprocess(image, return_tensors='pt')['pixel_values']``,
  ``processor(images, ...)``, ``image_mean``, ``crop_size``, ``size``), returning 4-channel tensors.
  A region comes as an RGBA image's alpha channel or as ``masks=`` / ``boxes=``.
- :func:`install` makes LLaVA's ``build_vision_tower`` (in ``llava.model.multimodal_encoder.builder``
  and in ``llava.model.llava_arch``, which imported it by name) accept
  ``alpha-clip:<checkpoint>[@<base>]``; everything else goes to LLaVA's own builder.

The tower name and the checkpoint formats: see :mod:`alphaclip_integrations.llava.weights`.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import llava.mm_utils
import llava.model.llava_arch
import llava.model.multimodal_encoder.builder
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig

from alphaclip_core.alpha import PairedTransform
from alphaclip_core.checkpoints import CheckpointError, vision_arch

from .inputs import alpha_threshold_value, binarize_alpha, paired_batch
from .weights import HEAD_WIDTH, PREFIX, load_alpha_visual, parse_tower_name, read_visual

__all__ = ["PREFIX", "parse_tower_name", "load_alpha_visual", "AlphaCLIPVisionTower",
           "RGBAImageProcessor", "install", "uninstall", "installed"]

logger = logging.getLogger(__name__)


def _config_from_state_dict(sd: Dict[str, torch.Tensor]) -> CLIPVisionConfig:
    """A ``CLIPVisionConfig`` (``num_channels=4``) for a vision tower in open_clip names."""
    arch = vision_arch(sd)
    fc = sd.get("transformer.resblocks.0.mlp.c_fc.weight")
    if fc is None:
        raise CheckpointError("checkpoint: no transformer.resblocks.0.mlp.c_fc.weight (not a CLIP ViT)")
    proj = sd.get("proj")
    return CLIPVisionConfig(hidden_size=arch.width, intermediate_size=int(fc.shape[0]), num_hidden_layers=arch.layers,
                            num_attention_heads=arch.width // HEAD_WIDTH, image_size=arch.image_size,
                            patch_size=arch.patch_size, projection_dim=int(proj.shape[1]) if proj is not None
                            else arch.width, num_channels=4, hidden_act="quick_gelu")


def _device_of(device_map: Any) -> Optional[torch.device]:
    """Where LLaVA's ``load_model(device_map=...)`` wants the tower: 'auto' = CUDA when available."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        device_map = device_map.get("", None)
        if device_map is None:
            raise ValueError("device_map: only a single device ({'': device}) is supported for the alpha tower")
    if device_map == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return torch.device(device_map)


# ------------------------------------------------------------------------------------------------
# image processor
class RGBAImageProcessor:
    """The image processor of :class:`AlphaCLIPVisionTower`: images (+ regions) -> ``[B, 4, S, S]``.

    Speaks the part of ``CLIPImageProcessor`` that LLaVA uses. Channels 0-2 of the output are the
    CLIP-normalised RGB, channel 3 the normalised alpha; image and alpha go through ONE geometry
    (:class:`alphaclip_core.PairedTransform`: ``mode='crop'`` is CLIP's resize + centre crop).

    Args:
        size: the tower's input size S.
        mode: ``'crop'`` (CLIP's), ``'pad'`` (pad to square, padding is background) or ``'squash'``.
        image_mean, image_std: RGB normalisation (OpenAI CLIP's by default).
        alpha_threshold: ``None`` (default): soft alpha edges after the resize, as the reference's
            training data and its ImageNet-S evaluation prepare masks; ``"demo"``: the reference LLaVA
            demo's and VQA loader's hard threshold (foreground only where the resized mask exceeds
            :data:`~alphaclip_integrations.llava.inputs.DEMO_ALPHA_THRESHOLD` = 0.98648); or a float.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, size: int = 336, mode: str = "crop", image_mean: Sequence[float] = OPENAI_DATASET_MEAN,
                 image_std: Sequence[float] = OPENAI_DATASET_STD, alpha_threshold: Any = None) -> None:
        alpha_threshold_value(alpha_threshold)
        self.alpha_threshold = alpha_threshold
        self.transform = PairedTransform(size, mode, image_mean, image_std, "bicubic")
        self.image_mean: List[float] = list(self.transform.mean)
        self.image_std: List[float] = list(self.transform.std)
        self.size: Dict[str, int] = {"shortest_edge": size}
        self.crop_size: Dict[str, int] = {"height": size, "width": size}

    def __repr__(self) -> str:
        return f"RGBAImageProcessor({self.transform!r})"

    def preprocess(self, images: Any, masks: Optional[Sequence[Any]] = None, boxes: Optional[Sequence[Any]] = None,
                   return_tensors: Optional[str] = "pt", **kwargs: Any) -> Dict[str, torch.Tensor]:
        """Images with one region each -> ``{'pixel_values': [B, 4, S, S] float32}``.

        Args:
            images: a PIL image / numpy ``HxWx3`` / torch ``[3, H, W]``, or a list of them. An RGBA
                PIL image's alpha channel is its region (255 = region); an RGB image without mask or
                box gets the whole-image alpha (+1.9231 everywhere).
            masks: with a list of images, None or a list with one mask ``[H, W]`` (or None) per image;
                with one image, its mask.
            boxes: like ``masks``, xyxy pixel boxes.
            return_tensors: ``'pt'`` or None (both give torch tensors).
            kwargs: other ``CLIPImageProcessor`` options are not supported and raise ValueError.
        """
        if kwargs:
            raise ValueError(f"RGBAImageProcessor.preprocess: unsupported options {sorted(kwargs)}; the "
                             "geometry is fixed by size/mode at construction")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors: only 'pt' is supported, got {return_tensors!r}")
        pixels, alpha = paired_batch(images, self.transform, masks, boxes)
        return {"pixel_values": torch.cat([pixels, binarize_alpha(alpha, self.alpha_threshold)], dim=1)}

    __call__ = preprocess


# ------------------------------------------------------------------------------------------------
# the tower
class AlphaCLIPVisionTower(nn.Module):
    """LLaVA's ``CLIPVisionTower`` with an Alpha-CLIP inside; reads ``[B, 4, H, W]`` RGBA tensors.

    Args:
        vision_tower: ``alpha-clip:<checkpoint>[@<base>]``.
        args: LLaVA's config / model args: ``mm_vision_select_layer`` (LLaVA-1.5: -2),
            ``mm_vision_select_feature`` (``'patch'`` drops the class token, ``'cls_patch'`` keeps it),
            optional ``mm_vision_alpha_mode`` (the image processor's ``'crop'``/``'pad'``/``'squash'``),
            optional ``mm_vision_alpha_threshold`` (its ``alpha_threshold``: None, ``'demo'`` or a float).
        delay_load: as in LLaVA: build without weights; ``load_model`` loads them later (the
            ``config`` is then read off the checkpoint on first use).
    """

    def __init__(self, vision_tower: str, args: Any, delay_load: bool = False) -> None:
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.checkpoint, self.base = parse_tower_name(vision_tower)
        self.select_layer = int(args.mm_vision_select_layer)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature: expected 'patch' or 'cls_patch', got {self.select_feature!r}")
        self.processor_mode = getattr(args, "mm_vision_alpha_mode", None) or "crop"
        self.alpha_threshold = getattr(args, "mm_vision_alpha_threshold", None)
        alpha_threshold_value(self.alpha_threshold)
        self._cfg_only: Optional[CLIPVisionConfig] = None
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()

    # --- loading --------------------------------------------------------------------------------
    def load_model(self, device_map: Any = None) -> None:
        """Read the weights, build the tower (frozen) and its image processor."""
        if self.is_loaded:
            logger.info("%s is already loaded, `load_model` called again, skipping.", self.vision_tower_name)
            return
        visual = load_alpha_visual(self.checkpoint, self.base)
        n = len(visual.transformer.resblocks)
        if not (-n - 1 <= self.select_layer <= n):
            raise ValueError(f"mm_vision_select_layer: {self.select_layer} is out of range for a tower with {n} "
                             f"blocks (hidden states -{n + 1}..{n})")
        visual.requires_grad_(False)
        device = _device_of(device_map)
        if device is not None:
            visual.to(device)
        self._config = _config_from_state_dict(visual.state_dict())
        self.vision_tower = visual
        self._cfg_only = None
        self.image_processor = RGBAImageProcessor(self._config.image_size, self.processor_mode,
                                                  alpha_threshold=self.alpha_threshold)
        self.is_loaded = True

    # --- features -------------------------------------------------------------------------------
    def _hidden_state(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden state ``select_layer`` (numbered like HF's ``hidden_states``: 0 = embeddings after
        ``ln_pre``, i = after block i, -2 = after the penultimate block): ``[B, 1 + N, width]``."""
        v = self.vision_tower
        if x.shape[1] == 4:
            rgb, alpha = x[:, :3], x[:, 3:]
        elif x.shape[1] == 3:
            rgb, alpha = x, None  # whole image
        else:
            raise ValueError(f"images: expected [B, 4, H, W] (RGB + alpha) or [B, 3, H, W] tensors, got "
                             f"{list(x.shape)}")
        size = self._config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"images: expected {size}x{size} images (the tower's input size), got "
                             f"{list(x.shape)}")
        h = v._embeds(rgb, alpha)
        blocks = v.transformer.resblocks
        upto = self.select_layer if self.select_layer >= 0 else len(blocks) + 1 + self.select_layer
        if not v.transformer.batch_first:
            h = h.transpose(0, 1)
        for blk in blocks[:upto]:
            h = blk(h)
        if not v.transformer.batch_first:
            h = h.transpose(0, 1)
        return h

    def feature_select(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, width]`` -> ``[B, N, width]`` (``'patch'``) or unchanged (``'cls_patch'``)."""
        if self.select_feature == "patch":
            return hidden_state[:, 1:]
        return hidden_state

    @torch.no_grad()
    def forward(self, images: Union[torch.Tensor, List[torch.Tensor]]) -> Union[torch.Tensor, List[torch.Tensor]]:
        """``[B, 4, S, S]`` RGBA (or ``[B, 3, S, S]`` = whole image), or a list of ``[4, S, S]`` ->
        ``[B, N, width]`` features (a list for a list), in the input's dtype, like LLaVA's tower."""
        if not self.is_loaded:
            raise RuntimeError(f"{self.vision_tower_name}: call load_model() first (built with delay_load=True)")
        if isinstance(images, list):
            return [self.feature_select(self._hidden_state(
                img.to(device=self.device, dtype=self.dtype).unsqueeze(0))).to(img.dtype) for img in images]
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images: expected a [B, 4, H, W] tensor or a list of [4, H, W] tensors, got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        out = self._hidden_state(images.to(device=self.device, dtype=self.dtype))
        return self.feature_select(out).to(images.dtype)

    # --- properties LLaVA reads -----------------------------------------------------------------
    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.conv1.weight.device

    @property
    def config(self) -> CLIPVisionConfig:
        """A ``CLIPVisionConfig`` describing the tower (``num_channels=4``); before ``load_model`` it is
        read off the checkpoint file."""
        if self.is_loaded:
            return self._config
        if self._cfg_only is None:
            self._cfg_only = _config_from_state_dict(read_visual(self.checkpoint, self.base))
        return self._cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2


# ------------------------------------------------------------------------------------------------
# the hook
_ORIGINAL: Dict[str, Callable] = {}


def _alpha_aware(original: Callable) -> Callable:
    def build_vision_tower(vision_tower_cfg: Any, **kwargs: Any) -> nn.Module:
        name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
        if isinstance(name, str) and name.startswith(PREFIX):
            return AlphaCLIPVisionTower(name, args=vision_tower_cfg, **kwargs)
        return original(vision_tower_cfg, **kwargs)

    build_vision_tower.__doc__ = (original.__doc__ or "") + f"\n(alpha-clip: names starting with '{PREFIX}' build " \
                                                            "an AlphaCLIPVisionTower)"
    build_vision_tower._alphaclip_original = original  # type: ignore[attr-defined]
    return build_vision_tower


def _expand2square(original: Callable) -> Callable:
    def expand2square(pil_img: Image.Image, background_color: Any) -> Image.Image:
        # LLaVA pads with the mean colour; an RGBA image's padding must be transparent (background alpha)
        if pil_img.mode == "RGBA" and isinstance(background_color, tuple) and len(background_color) == 3:
            background_color = background_color + (0,)
        return original(pil_img, background_color)

    expand2square._alphaclip_original = original  # type: ignore[attr-defined]
    return expand2square


_TARGETS = (
    (llava.model.multimodal_encoder.builder, "build_vision_tower", _alpha_aware),
    (llava.model.llava_arch, "build_vision_tower", _alpha_aware),
    (llava.mm_utils, "expand2square", _expand2square),
)


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return all(hasattr(getattr(mod, attr), "_alphaclip_original") for mod, attr, _ in _TARGETS)


def install(compat: bool = True) -> None:
    """Make LLaVA's builder accept ``alpha-clip:<checkpoint>[@<base>]`` (idempotent).

    Patches ``build_vision_tower`` in ``llava.model.multimodal_encoder.builder`` and in
    ``llava.model.llava_arch`` (which imported it by name), and ``llava.mm_utils.expand2square`` so
    that padding an RGBA image (``image_aspect_ratio='pad'``) pads its alpha with background.
    With ``compat`` (default) also applies :func:`alphaclip_integrations.llava.compat.install`,
    which lets LLaVA's ``LlavaLlamaForCausalLM`` generate under transformers 5.x.
    """
    for mod, attr, wrap in _TARGETS:
        current = getattr(mod, attr)
        if not hasattr(current, "_alphaclip_original"):
            setattr(mod, attr, wrap(current))
    if compat:
        from . import compat as _compat
        _compat.install()


def uninstall() -> None:
    """Undo :func:`install` (and the transformers-5 compatibility shim)."""
    for mod, attr, _ in _TARGETS:
        current = getattr(mod, attr)
        original = getattr(current, "_alphaclip_original", None)
        if original is not None:
            setattr(mod, attr, original)
    from . import compat as _compat
    _compat.uninstall()
