"""Plain-CLIP region baselines: show CLIP a region without an alpha channel.

Each function takes the original PIL image and one region and returns a new PIL image of the same
size (``crop_region`` returns the crop). The result is then preprocessed like any whole image, e.g.
``alphaclip_core.prepare(view)[0]``. These are the baselines of the Alpha-CLIP paper's ImageNet-S
table (crop, red circle, background masked) plus a background-blurred copy (ReCLIP's isolation).
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np
from open_clip.constants import OPENAI_DATASET_MEAN
from PIL import Image, ImageDraw, ImageFilter

from alphaclip_core.alpha import to_masks

__all__ = ["mask_bbox", "crop_region", "red_circle", "mask_background", "blur_background", "BASELINE_VIEWS"]

#: the plain-CLIP baseline views, by name
BASELINE_VIEWS = ("whole", "crop", "red_circle", "masked", "blurred")

#: CLIP's mean colour as 0..255 RGB: a masked-out background normalises to 0
MEAN_RGB: Tuple[int, int, int] = tuple(int(round(255 * m)) for m in OPENAI_DATASET_MEAN)  # type: ignore[assignment]


def _one_mask(mask: Any, image: Image.Image) -> np.ndarray:
    """Any single mask :func:`alphaclip_core.alpha.to_masks` accepts -> float32 [H, W] in [0, 1]."""
    m = to_masks(mask, image.height, image.width)
    if m.shape[0] != 1:
        raise ValueError(f"mask: expected one mask [H, W], got {m.shape[0]} masks")
    m = m[0].cpu().numpy()
    if not (m > 0).any():
        raise ValueError("mask is empty (all zeros)")
    return m


def mask_bbox(mask: Any) -> Tuple[int, int, int, int]:
    """Tight xyxy pixel box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the non-zero pixels of an [H, W] mask.

    Raises ValueError for an empty mask.
    """
    m = to_masks(mask)
    if m.shape[0] != 1:
        raise ValueError(f"mask: expected one mask [H, W], got {m.shape[0]} masks")
    ys, xs = np.nonzero(m[0].cpu().numpy() > 0)
    if len(xs) == 0:
        raise ValueError("mask is empty (all zeros); it has no bounding box")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _check_box(box: Sequence[float], image: Image.Image) -> Tuple[float, float, float, float]:
    b = [float(v) for v in box]
    if len(b) != 4 or not (b[0] < b[2] and b[1] < b[3]) or not np.isfinite(b).all():
        raise ValueError(f"box: expected xyxy pixels with x0 < x1 and y0 < y1, got {list(box)}")
    if b[2] <= 0 or b[3] <= 0 or b[0] >= image.width or b[1] >= image.height:
        raise ValueError(f"box {b} lies entirely outside the {image.width}x{image.height} (WxH) image")
    return b[0], b[1], b[2], b[3]


def crop_region(image: Image.Image, box: Sequence[float], margin: float = 0.0) -> Image.Image:
    """The crop of ``image`` inside ``box`` (xyxy pixels), grown by ``margin`` x its size on each side.

    The grown box is clipped to the image.
    """
    if margin < 0:
        raise ValueError(f"margin: expected >= 0, got {margin}")
    x0, y0, x1, y1 = _check_box(box, image)
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    x0, y0 = max(0, int(np.floor(x0 - dx))), max(0, int(np.floor(y0 - dy)))
    x1, y1 = min(image.width, int(np.ceil(x1 + dx))), min(image.height, int(np.ceil(y1 + dy)))
    return image.convert("RGB").crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))


def red_circle(image: Image.Image, box: Sequence[float], color: Tuple[int, int, int] = (255, 0, 0),
               width: int | None = None) -> Image.Image:
    """``image`` with a red ellipse drawn around ``box`` (xyxy pixels): the Red Circle baseline.

    width: outline thickness in pixels (default: 1/100 of the longer image side, at least 1).
    """
    x0, y0, x1, y1 = _check_box(box, image)
    out = image.convert("RGB").copy()
    w = width if width is not None else max(1, round(max(image.size) / 100))
    ImageDraw.Draw(out).ellipse([x0, y0, x1 - 1, y1 - 1], outline=tuple(color), width=w)
    return out


def mask_background(image: Image.Image, mask: Any, fill: Tuple[int, int, int] = MEAN_RGB) -> Image.Image:
    """``image`` with everything outside ``mask`` ([H, W], 1 = keep) replaced by ``fill`` (default: CLIP's mean
    colour, which normalises to 0). Soft masks blend."""
    m = _one_mask(mask, image)[..., None]
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = rgb * m + np.asarray(fill, dtype=np.float32) * (1 - m)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def blur_background(image: Image.Image, mask: Any, radius: float | None = None) -> Image.Image:
    """``image`` with everything outside ``mask`` Gaussian-blurred (radius default: 4% of the longer side)."""
    m = _one_mask(mask, image)[..., None]
    rgb = image.convert("RGB")
    r = radius if radius is not None else max(1.0, 0.04 * max(image.size))
    blurred = np.asarray(rgb.filter(ImageFilter.GaussianBlur(r)), dtype=np.float32)
    out = np.asarray(rgb, dtype=np.float32) * m + blurred * (1 - m)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def baseline_view(name: str, image: Image.Image, mask: Any) -> Image.Image:
    """The plain-CLIP view ``name`` (one of :data:`BASELINE_VIEWS`) of ``image`` for one region ``mask``."""
    if name == "whole":
        return image.convert("RGB")
    if name == "crop":
        return crop_region(image, mask_bbox(mask))
    if name == "red_circle":
        return red_circle(image, mask_bbox(mask))
    if name == "masked":
        return mask_background(image, mask)
    if name == "blurred":
        return blur_background(image, mask)
    raise ValueError(f"view: expected one of {BASELINE_VIEWS}, got {name!r}")
