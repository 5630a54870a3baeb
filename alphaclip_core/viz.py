"""Pictures a person would rather look at: regions drawn over their image, with captions."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "overlay_regions", "heatmap_overlay"]

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _as_numpy_masks(masks) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().float().cpu().numpy()
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks: expected [K,H,W], got shape {list(masks.shape)}")
    return masks


def overlay_regions(image: Image.Image, masks, captions: Optional[Sequence[str]] = None,
                    opacity: float = 0.45) -> Image.Image:
    """Draw K regions over ``image``: a tinted fill, an outline box and a caption per region.

    Args:
        image: the original PIL image (H x W).
        masks: ``[K, H, W]`` (or ``[H, W]``) values in ``[0, 1]``; tensor or array.
        captions: K strings drawn at each region's top-left corner.
        opacity: fill opacity in ``[0, 1]``.
    Returns:
        a new RGB image of the same size.
    """
    base = image.convert("RGB")
    masks = _as_numpy_masks(masks)
    if masks.shape[1:] != (base.height, base.width):
        raise ValueError(f"masks: expected [K,{base.height},{base.width}] to match the image, got {list(masks.shape)}")
    if captions is not None and len(captions) != masks.shape[0]:
        raise ValueError(f"captions: expected {masks.shape[0]} (one per region), got {len(captions)}")
    out = np.asarray(base, dtype=np.float32).copy()
    for k, m in enumerate(masks):
        color = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        a = (np.clip(m, 0, 1) * opacity)[..., None]
        out = out * (1 - a) + color * a
    result = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    font = _font(max(10, min(base.width, base.height) // 28))
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m > 0.5)
        if len(xs) == 0:
            continue
        color = PALETTE[k % len(PALETTE)]
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        draw.rectangle([x0, y0, x1, y1], outline=color, width=max(1, min(base.width, base.height) // 150))
        if captions is not None:
            text = str(captions[k])
            tb = draw.textbbox((x0, y0), text, font=font)
            ty = max(0, y0 - (tb[3] - tb[1]) - 4)
            tb = draw.textbbox((x0 + 2, ty), text, font=font)
            draw.rectangle([tb[0] - 2, tb[1] - 2, tb[2] + 2, tb[3] + 2], fill=color)
            draw.text((x0 + 2, ty), text, fill=(255, 255, 255), font=font)
    return result


def heatmap_overlay(image: Image.Image, heat, opacity: float = 0.55) -> Image.Image:
    """Blend a score map ``heat`` (``[H, W]``, any range; min-max scaled) over ``image`` (blue low, red high)."""
    base = image.convert("RGB")
    h = _as_numpy_masks(heat)[0]
    if h.shape != (base.height, base.width):
        raise ValueError(f"heat: expected [{base.height},{base.width}], got {list(h.shape)}")
    lo, hi = float(h.min()), float(h.max())
    t = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    color = np.stack([255 * t, 255 * (1 - np.abs(2 * t - 1)), 255 * (1 - t)], axis=-1)
    out = np.asarray(base, dtype=np.float32) * (1 - opacity) + color * opacity
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))
