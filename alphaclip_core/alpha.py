"""Alpha maps: the normalisation, and regions turned into masks.

Alpha semantics: 1 = region to focus on, 0 = background.  Before the model the
alpha map is resized to the model's input size and normalised with
``(alpha - ALPHA_MEAN) / ALPHA_STD`` so foreground is +1.9231 and background
-1.9231.  "Whole image" means an all-ones mask through that normalisation
(+1.9231 everywhere), not raw ones and not zeros.

The module turns region descriptions (binary masks, xyxy pixel boxes, COCO
polygons, COCO RLE) into float masks ``[K, H, W]`` in ``[0, 1]``.  The rest of a
region's way to the model lives beside it, one idea per module:
:mod:`alphaclip_core.transform` (:class:`PairedTransform`: ONE geometric transform
for an image and its masks, and :func:`prepare`), :mod:`alphaclip_core.rle` (the
COCO RLE codec) and :mod:`alphaclip_core.images` (decoding image files).  Their
names are re-exported here, so ``from alphaclip_core.alpha import PairedTransform,
rle_encode, open_image`` keeps working.
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .images import to_8bit
from .rle import rle_decode

__all__ = [
    "ALPHA_MEAN",
    "ALPHA_STD",
    "normalize_alpha",
    "whole_image_alpha",
    "to_masks",
    "boxes_to_masks",
    "polygons_to_masks",
    "rle_encode",
    "rle_decode",
    "rle_to_masks",
    "region_masks",
    "PairedTransform",
    "prepare",
    "to_8bit",
    "decode_image_bytes",
    "open_image",
    "MAX_PIXELS_ENV",
]

ALPHA_MEAN: float = 0.5
ALPHA_STD: float = 0.26
_TOL = 1e-6
_MASK_DTYPES = "bool, uint8 (0/1, or 0..255 scaled by 1/255), other integers holding only 0/1, float in [0, 1]"


# --------------------------------------------------------------------------- alpha values
def normalize_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """Normalise an alpha map: ``(alpha - 0.5) / 0.26``.

    alpha: floating tensor of any shape with values in [0, 1] (tolerance 1e-6;
    values within tolerance are clamped).  Returns a tensor of the same shape,
    dtype and device: 1 -> +1.9231 (foreground), 0 -> -1.9231 (background).
    Raises TypeError for a non-float tensor and ValueError for values outside [0, 1].
    """
    if not isinstance(alpha, torch.Tensor) or not alpha.is_floating_point():
        got = alpha.dtype if isinstance(alpha, torch.Tensor) else type(alpha).__name__
        raise TypeError(f"alpha must be a floating torch.Tensor with values in [0, 1], got {got}")
    if alpha.numel():
        lo, hi = alpha.min().item(), alpha.max().item()
        if not (lo >= -_TOL and hi <= 1 + _TOL):  # also catches NaN
            raise ValueError(f"alpha values must lie in [0, 1], got range [{lo}, {hi}]")
    return (alpha.clamp(0, 1) - ALPHA_MEAN) / ALPHA_STD


def whole_image_alpha(
    batch: int, size: int | tuple[int, int], device: Any = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised whole-image alpha ``[batch, 1, H, W]`` filled with ``(1 - 0.5) / 0.26`` (+1.9231).

    size: S (square) or (H, W).
    """
    h, w = (size, size) if isinstance(size, int) else size
    return torch.full((batch, 1, h, w), (1.0 - ALPHA_MEAN) / ALPHA_STD, device=device, dtype=dtype)


# --------------------------------------------------------------------------- masks
def _mask_array_to_tensor(m: Any) -> torch.Tensor:
    """One mask-like object -> float32 tensor [k, h, w] in [0, 1] (torch inputs keep their device)."""
    if isinstance(m, Image.Image):
        if m.mode not in ("1", "L", "P", "I", "I;16", "F"):
            raise ValueError(
                f"mask: a PIL mask must be single-channel (mode '1', 'L', 'P', 'I' or 'F'), got mode "
                f"{m.mode!r}; convert it with .convert('L')"
            )
        m = np.array(to_8bit(m, "L") if m.mode.startswith("I") else m)  # 16-bit masks: 65535 -> 255, not clipped
    if not isinstance(m, torch.Tensor):
        a = np.asarray(m)
        if a.dtype.kind in "iu" and a.dtype != np.uint8:
            if a.size and not np.isin(a, (0, 1)).all():
                raise TypeError(f"mask has dtype {a.dtype} with values other than 0/1; accepted dtypes: {_MASK_DTYPES}")
            a = a.astype(np.float32)
        elif a.dtype.kind == "f":
            a = a.astype(np.float32)
        elif a.dtype.kind != "b" and a.dtype != np.uint8:
            raise TypeError(f"mask has unsupported dtype {a.dtype}; accepted dtypes: {_MASK_DTYPES}")
        m = torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a))
    if m.dtype == torch.bool:
        t = m.float()
    elif m.dtype == torch.uint8:
        t = m.float()
        if t.numel() and t.max() > 1:
            t = t / 255.0
    elif m.is_floating_point():
        t = m.float()
        if t.numel():
            lo, hi = t.min().item(), t.max().item()
            if not (lo >= -_TOL and hi <= 1 + _TOL):
                raise ValueError(f"mask: float masks must lie in [0, 1], got range [{lo}, {hi}]")
        t = t.clamp(0, 1)
    elif m.is_complex():
        raise TypeError(f"mask has unsupported dtype {m.dtype}; accepted dtypes: {_MASK_DTYPES}")
    else:  # other integer tensors
        if m.numel() and not ((m == 0) | (m == 1)).all():
            raise TypeError(f"mask has dtype {m.dtype} with values other than 0/1; accepted dtypes: {_MASK_DTYPES}")
        t = m.float()
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"mask must have shape [H, W] or [K, H, W], got shape {tuple(t.shape)}")
    return t


def to_masks(mask: Any, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Convert mask(s) to a float32 tensor ``[K, H, W]`` with values in [0, 1].

    mask: numpy array, torch tensor or single-channel PIL image of shape [H, W]
    or [K, H, W], or a list of such objects (concatenated).  Accepted dtypes:
    bool; uint8 (divided by 255 if its max > 1, else taken as 0/1); other
    integer dtypes holding only 0/1; float in [0, 1].  Other dtypes raise
    TypeError.  If height/width are given every mask must be exactly that size
    (ValueError otherwise; masks are never resized silently).  Torch inputs
    keep their device.
    """
    items = list(mask) if isinstance(mask, (list, tuple)) and mask and all(
        isinstance(x, (np.ndarray, torch.Tensor, Image.Image)) for x in mask) else [mask]
    if isinstance(mask, (list, tuple)) and not mask:
        if height is None or width is None:
            raise ValueError("mask: got an empty list and no height/width to size an empty [0, H, W] result")
        return torch.zeros(0, height, width)
    out, start = [], 0
    for item in items:
        t = _mask_array_to_tensor(item)
        got = tuple(t.shape[-2:])
        want = (height if height is not None else (out[0].shape[-2] if out else got[0]),
                width if width is not None else (out[0].shape[-1] if out else got[1]))
        if got != want:
            raise ValueError(f"mask {start} has size (H, W)={got} but the expected size is {want}; "
                             "masks are not resized, pass masks matching the image")
        out.append(t.to(out[0].device) if out else t)
        start += t.shape[0]
    return out[0] if len(out) == 1 else torch.cat(out)


def boxes_to_masks(boxes: Any, height: int, width: int) -> torch.Tensor:
    """Rasterise xyxy pixel boxes to a float32 tensor ``[K, H, W]`` of 0/1.

    boxes: [4] or [K, 4] (list/tuple, numpy or tensor), (x0, y0, x1, y1) in
    pixels.  Pixel (y, x) is 1 when its centre (x + 0.5, y + 0.5) satisfies
    x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1; boxes partly outside the image
    are clipped.  A degenerate box (x0 >= x1 or y0 >= y1, non-finite) or one
    entirely outside the image raises ValueError naming the box index.
    """
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"box must have shape [4] or [K, 4] (xyxy pixels), got shape {b.shape}")
    for i, (x0, y0, x1, y1) in enumerate(b):
        if not np.isfinite(b[i]).all() or not (x0 < x1 and y0 < y1):
            raise ValueError(f"box {i} {b[i].tolist()} is degenerate: need x0 < x1 and y0 < y1 (xyxy pixels)")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise ValueError(f"box {i} {b[i].tolist()} lies entirely outside the {width}x{height} (WxH) image")
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    inx = (xs[None] >= b[:, 0:1]) & (xs[None] < b[:, 2:3])  # [K, W]
    iny = (ys[None] >= b[:, 1:2]) & (ys[None] < b[:, 3:4])  # [K, H]
    return torch.from_numpy(iny[:, :, None] & inx[:, None, :]).float()


def _is_num(x: Any) -> bool:
    return isinstance(x, numbers.Real) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 0)


def polygons_to_masks(polygons: Any, height: int, width: int) -> torch.Tensor:
    """Rasterise COCO polygons to a float32 tensor ``[K, H, W]`` of 0/1.

    A region is a list of parts, each a flat [x0, y0, x1, y1, ...] list in
    pixel coordinates; its mask is the union of its parts.  polygons is a list
    of regions, or a single region, or a single flat part.  Rasterised with
    PIL ``ImageDraw.polygon`` (outline pixels included).  A part with fewer
    than 3 points or an odd number of coordinates raises ValueError.
    """
    polys = list(polygons)
    if polys and _is_num(polys[0]):
        regions = [[polys]]
    elif polys and len(polys[0]) and _is_num(polys[0][0]):
        regions = [polys]
    else:
        regions = polys
    out = torch.zeros(len(regions), height, width)
    for i, region in enumerate(regions):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for j, part in enumerate(region):
            xy = np.asarray(part, dtype=np.float64).ravel()
            if xy.size % 2 or xy.size < 6 or not np.isfinite(xy).all():
                raise ValueError(f"polygon {i} part {j} needs >= 3 finite (x, y) points as a flat "
                                 f"[x0, y0, x1, y1, ...] list, got {xy.size} numbers")
            draw.polygon(xy.tolist(), fill=1)
        out[i] = torch.from_numpy(np.array(canvas, dtype=np.float32))
    return out


def rle_to_masks(rles: dict | Sequence[dict], height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Decode one COCO RLE dict or a list of them to a float32 tensor ``[K, H, W]`` of 0/1.

    If height/width are given (or between list entries) sizes must match, else ValueError.
    """
    rles = [rles] if isinstance(rles, dict) else list(rles)
    return to_masks([rle_decode(r) for r in rles], height, width) if rles else to_masks([], height, width)


def region_masks(height: int, width: int, *, mask: Any = None, box: Any = None, polygon: Any = None,
                 rle: Any = None) -> torch.Tensor:
    """Build float32 region masks ``[K, H, W]`` in [0, 1] from any mix of region kinds.

    Kinds are concatenated in the order masks, boxes, polygons, rles (each may
    hold several regions).  With no region at all the result is the whole
    image, ``ones [1, H, W]``.  An all-zero region raises ValueError naming its
    kind and index (omit it to get whole-image alpha).
    """
    kinds = [("mask", mask, lambda v: to_masks(v, height, width)),
             ("box", box, lambda v: boxes_to_masks(v, height, width)),
             ("polygon", polygon, lambda v: polygons_to_masks(v, height, width)),
             ("rle", rle, lambda v: rle_to_masks(v, height, width))]
    given = [(name, fn(v)) for name, v, fn in kinds if v is not None]
    if not given:
        return torch.ones(1, height, width)
    for name, m in given:
        for i in range(m.shape[0]):
            if not m[i].any():
                raise ValueError(f"{name} {i} is empty (all zeros); omit it (pass no region) to get whole-image alpha")
    out = torch.cat([m.to(given[0][1].device) for _, m in given])
    if out.shape[0] == 0:
        raise ValueError(f"no regions in the given {[n for n, _ in given]}; pass None for whole-image alpha")
    return out


# Re-exports: the names that lived in this module before it was split (issue 16). At the bottom because
# .transform imports this module's names; the package imports this module first, so the cycle resolves.
from .images import MAX_PIXELS_ENV, decode_image_bytes, open_image  # noqa: E402
from .rle import rle_encode  # noqa: E402
from .transform import (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, PairedTransform,  # noqa: E402,F401
                        _image_to_tensor, prepare)  # the defaults of prepare; _image_to_tensor: region_classifier
