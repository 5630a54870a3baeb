"""Images + one region each -> paired, normalised (image, alpha) batches; shared by both LLaVA paths.

Framework-free (only :mod:`alphaclip_core`), so the original-LLaVA image processor and the
transformers-native processor turn regions into alpha maps the same way.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from alphaclip_core.alpha import ALPHA_MEAN, ALPHA_STD, PairedTransform, normalize_alpha, region_masks

__all__ = ["as_list", "paired_batch", "rgba_alpha", "DEMO_ALPHA_THRESHOLD", "alpha_threshold_value",
           "binarize_alpha"]

#: The reference LLaVA demo (``demo/with_llm/app.py``) and its VQA loader
#: (``llava/eval/model_vqa_loader_alpha_clip.py``) send the region as a white-on-black picture through
#: CLIP's image processor and call a pixel foreground when the sum of its three normalised channels
#: exceeds 6, i.e. when the resized mask value exceeds ``(6 + sum(mean / std)) / sum(1 / std)``
#: = 0.98648 (nearly white); the alpha is then +-1.9231, with no soft edge.
DEMO_ALPHA_THRESHOLD: float = (6 + sum(m / s for m, s in zip(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))) / sum(
    1 / s for s in OPENAI_DATASET_STD)


def alpha_threshold_value(threshold: Any) -> Optional[float]:
    """``None`` (soft edges), ``"demo"`` (:data:`DEMO_ALPHA_THRESHOLD`) or a float in ``(0, 1)`` -> the float or None."""
    if threshold is None:
        return None
    if threshold == "demo":
        return DEMO_ALPHA_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"alpha_threshold: expected None (soft edges), 'demo' or a float in (0, 1), got {threshold!r}")
    return float(threshold)


def binarize_alpha(alpha: torch.Tensor, threshold: Any) -> torch.Tensor:
    """Hard alpha after the resize: normalised ``alpha`` (any shape) -> +1.9231 where its ``[0, 1]`` value
    exceeds ``threshold`` (see :func:`alpha_threshold_value`), else -1.9231. ``None`` returns ``alpha``."""
    t = alpha_threshold_value(threshold)
    if t is None:
        return alpha
    return normalize_alpha(((alpha * ALPHA_STD + ALPHA_MEAN) > t).to(alpha.dtype))


def as_list(value: Any, n: int, name: str) -> List[Any]:
    """``value`` per image: None -> ``[None] * n``; a list/tuple of length ``n`` -> itself."""
    if value is None:
        return [None] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        got = f"a list of {len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
        raise ValueError(f"{name}: expected a list with one entry (or None) per image, {n} in all; got {got}")
    return list(value)


def rgba_alpha(image: Image.Image, index: int) -> Tuple[Image.Image, Optional[np.ndarray]]:
    """Split an RGBA/LA PIL image into its RGB part and its alpha channel (uint8 [H, W]) as the mask."""
    if image.mode not in ("RGBA", "LA", "PA"):
        return image, None
    a = np.array(image.getchannel("A"))
    if not a.any():
        raise ValueError(f"images[{index}]: the alpha channel of this {image.mode} image is all zero (fully "
                         "transparent), i.e. an empty region; use an RGB image for whole-image alpha")
    return image.convert("RGB"), a


def paired_batch(images: Any, transform: PairedTransform, masks: Optional[Sequence[Any]] = None,
                 boxes: Optional[Sequence[Any]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Transform B images and one region per image with ONE geometry each.

    Args:
        images: one image (then ``masks``/``boxes`` are its region, not lists) or a list of B images: PIL (an RGBA/LA image's alpha channel is its region
            mask, 255 = region), numpy ``HxWx3`` or torch ``[3, H, W]`` (uint8 or float in [0, 1]).
        transform: the paired transform (size, crop/pad/squash, mean/std).
        masks: None or a list of B entries, each None or one mask ``[H, W]`` (or ``[1, H, W]``) in the
            image's pixel frame (bool, 0/1, 0..255 uint8, float in [0, 1]).
        boxes: None or a list of B entries, each None or one xyxy pixel box ``[4]``.
            An image with neither mask, box nor alpha channel gets the whole-image alpha.
    Returns:
        ``(pixels [B, 3, S, S], alpha [B, 1, S, S])``: CLIP-normalised RGB and normalised alpha
        (foreground +1.9231, background -1.9231), float32.
    Raises:
        ValueError: list lengths differ from B, an image has more than one region (mask + box, or an
            RGBA image with a mask/box), a region is empty, or a mask does not match its image's size.
    """
    single = not isinstance(images, (list, tuple))
    images = [images] if single else list(images)
    if not images:
        raise ValueError("images: expected at least one image")
    if single:  # one image: masks / boxes are its one region, not lists
        masks = None if masks is None else [masks]
        boxes = None if boxes is None else [boxes]
    masks = as_list(masks, len(images), "masks")
    boxes = as_list(boxes, len(images), "boxes")
    pix, alpha = [], []
    for i, (image, mask, box) in enumerate(zip(images, masks, boxes)):
        if isinstance(image, Image.Image):
            image, rgba_mask = rgba_alpha(image, i)
            if rgba_mask is not None:
                if mask is not None or box is not None:
                    raise ValueError(f"images[{i}]: an RGBA image carries its region in its alpha channel; "
                                     "do not pass a mask or box for it too (convert it to RGB first)")
                mask = rgba_mask
            w, h = image.size
        elif isinstance(image, np.ndarray):
            h, w = image.shape[:2]
        elif isinstance(image, torch.Tensor):
            h, w = image.shape[-2:]
        else:
            raise TypeError(f"images[{i}]: expected a PIL image, numpy HxWx3 array or torch [3, H, W] tensor, "
                            f"got {type(image).__name__}")
        if mask is not None and box is not None:
            raise ValueError(f"images[{i}]: got both a mask and a box; give one region per image")
        try:
            m = region_masks(h, w, mask=mask, box=box)
        except ValueError as e:
            raise ValueError(f"images[{i}]: {e}") from None
        if m.shape[0] != 1:
            raise ValueError(f"images[{i}]: got {m.shape[0]} regions; one region per image (repeat the image "
                             "to ask about several regions)")
        p, a = transform(image, m)
        pix.append(p)
        alpha.append(a)
    return torch.cat(pix), torch.cat(alpha)
