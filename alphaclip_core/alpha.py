"""Alpha-channel (region) helpers for Alpha-CLIP.

Alpha semantics: 1 = region to focus on, 0 = background.  Before the model the
alpha map is resized to the model's input size and normalised with
``(alpha - ALPHA_MEAN) / ALPHA_STD`` so foreground is +1.9231 and background
-1.9231.  "Whole image" means an all-ones mask through that normalisation
(+1.9231 everywhere), not raw ones and not zeros.

The module turns region descriptions (binary masks, xyxy pixel boxes, COCO
polygons, COCO RLE) into float masks ``[K, H, W]`` in ``[0, 1]``, and
:class:`PairedTransform` applies ONE geometric transform to an image and its
masks, so that they stay aligned (the reference implementation squashes the
mask but centre-crops the image, which misaligns them on non-square images).
"""
from __future__ import annotations

import io
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image, ImageDraw, UnidentifiedImageError
from torchvision.transforms import InterpolationMode

from .errors import InputError

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
_INTERP = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


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


# --------------------------------------------------------------------------- COCO RLE
def rle_encode(mask: Any) -> dict:
    """Encode an [H, W] binary mask (numpy/torch, bool or 0/1) as COCO compressed RLE.

    Returns ``{"size": [H, W], "counts": str}``; ``counts`` is byte-identical to
    ``pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()``
    (column-major runs starting with zeros, 5-bit LEB128-like ascii with delta
    coding of counts[i] - counts[i-2] for i > 2, chars offset by 48).
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask for rle_encode must be [H, W], got shape {m.shape}")
    flat = (m != 0).ravel(order="F")
    if flat.size == 0:
        counts = [0]
    else:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        if flat[0]:
            counts = [0] + counts
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            chars.append(chr((c | 0x20 if more else c) + 48))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": "".join(chars)}


def _rle_string_to_counts(s: str | bytes) -> list[int]:
    if isinstance(s, str):
        try:
            s = s.encode("ascii")
        except UnicodeEncodeError as e:
            raise ValueError(f"rle counts string has a non-ascii character at position {e.start}") from None
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("rle counts string is truncated (last character has the continuation bit)")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"rle counts string has invalid character {chr(s[p])!r} at position {p} "
                                 "(valid: '0'..'o')")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """Decode a COCO RLE dict to a uint8 [H, W] array of 0/1.

    rle: ``{"size": [H, W], "counts": ...}`` with counts a compressed string
    (str or bytes) or an uncompressed list of run lengths (column-major,
    starting with zeros).  Corrupt input (missing keys, bad size, invalid
    characters, negative runs, runs not summing to H*W) raises ValueError.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        got = sorted(rle) if isinstance(rle, dict) else type(rle).__name__
        raise ValueError(f"rle must be a dict with keys 'size' and 'counts', got {got}")
    size = rle["size"]
    try:
        h, w = (int(v) for v in size)
        assert h >= 0 and w >= 0 and all(float(v) == int(v) for v in size)
    except Exception:
        raise ValueError(f"rle 'size' must be [H, W] with non-negative integers, got {size!r}") from None
    raw = rle["counts"]
    if isinstance(raw, (str, bytes)):
        counts = _rle_string_to_counts(raw)
    else:
        try:
            arr = np.asarray(raw)
            assert arr.ndim == 1 and (arr.size == 0 or arr.dtype.kind in "iu")
            counts = arr.astype(np.int64).tolist()
        except Exception:
            raise ValueError("rle 'counts' must be a compressed string/bytes or a list of integer run lengths, "
                             f"got {type(raw).__name__}") from None
    if any(c < 0 for c in counts):
        raise ValueError("rle counts contain a negative run length")
    if sum(counts) != h * w:
        raise ValueError(f"rle counts sum to {sum(counts)} but size {h}x{w} needs {h * w} pixels")
    flat = np.repeat(np.arange(len(counts), dtype=np.uint8) % 2, counts)
    return np.ascontiguousarray(flat.reshape(w, h).T)


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


# --------------------------------------------------------------------------- transform
def _image_to_tensor(image: Any) -> torch.Tensor:
    """PIL / numpy HxWx3 / torch [3,H,W] or [B,3,H,W] (uint8 or float in [0,1]) -> float32 [B,3,H,W] in [0,1]."""
    if isinstance(image, Image.Image):
        t = TF.pil_to_tensor(to_8bit(image))  # 16-bit images scaled to 8 bits (PIL's convert would clip them)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: a numpy image must be HxWx3, got shape {image.shape}")
        if image.dtype != np.uint8 and image.dtype.kind != "f":
            raise TypeError(f"image: a numpy image must be uint8 (0..255) or float in [0, 1], got {image.dtype}")
        t = torch.from_numpy(image if image.flags.writeable and image.flags.c_contiguous else np.array(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        t = image
        if t.ndim not in (3, 4) or t.shape[-3] != 3:
            raise ValueError(f"image: a tensor image must be [3, H, W] or [B, 3, H, W], got shape {tuple(t.shape)}")
    else:
        raise TypeError(f"image must be a PIL image, numpy HxWx3 array or torch tensor, got {type(image).__name__}")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"image: has no pixels (height {t.shape[-2]}, width {t.shape[-1]}); expected an image of "
                         "at least 1x1")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if not t.is_floating_point():
        raise TypeError(f"image must be uint8 (0..255) or float in [0, 1], got dtype {t.dtype}")
    t = t.float()
    if t.numel():
        lo, hi = t.min().item(), t.max().item()
        if not (lo >= -_TOL and hi <= 1 + _TOL):
            raise ValueError(f"image: float images must lie in [0, 1], got range [{lo}, {hi}] "
                             "(divide 0..255 images by 255 or pass uint8)")
    return t


class PairedTransform:
    """ONE geometric transform applied identically to an image and its K alpha masks.

    Modes:
      * ``'crop'``: CLIP's preprocessing -- resize the shortest side to ``size``
        then centre crop ``size x size`` (same geometry as torchvision
        ``Resize(size) + CenterCrop(size)``).  Content outside the crop is lost.
      * ``'pad'``: pad to a centred square (image padded with the ``mean``
        colour, so it normalises to 0; alpha padded with 0 = background), then
        resize to ``size x size``.  Nothing is lost.
      * ``'squash'``: resize to ``size x size`` ignoring the aspect ratio.
      * ``'reference'``: the reference release's ImageNet-S evaluation geometry, to reproduce its
        numbers exactly: centre-crop the largest square first (offset ``n // 2 - side // 2``), then
        resize to ``size x size`` WITHOUT antialias (paper-era torchvision on tensors) and without
        clamping the bicubic overshoot; a mask outside the crop gives an all-background alpha
        instead of an error.

    The image is resized with ``interpolation`` (+ antialias), clamped to
    [0, 1] and normalised with mean/std; masks are resized bilinearly
    (+ antialias, soft edges in [0, 1]) and normalised with
    :func:`normalize_alpha`.
    """

    def __init__(self, size: int = 224, mode: str = "crop", mean: Sequence[float] = OPENAI_DATASET_MEAN,
                 std: Sequence[float] = OPENAI_DATASET_STD, interpolation: str = "bicubic") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if mode not in ("crop", "pad", "squash", "reference"):
            raise ValueError(f"mode must be 'crop', 'pad', 'squash' or 'reference', got {mode!r}")
        if interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}")
        if len(mean) != 3:
            raise ValueError(f"mean must have 3 values (RGB), got {mean!r}")
        if len(std) != 3 or min(std) <= 0:
            raise ValueError(f"std must have 3 positive values (RGB), got {std!r}")
        self.size, self.mode, self.interpolation = size, mode, interpolation
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def __repr__(self) -> str:
        return (f"PairedTransform(size={self.size}, mode={self.mode!r}, mean={self.mean}, std={self.std}, "
                f"interpolation={self.interpolation!r})")

    def _geometry(self, x: torch.Tensor, interp: InterpolationMode, fill: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] float -> [N, C, S, S] with this transform's geometry."""
        s = self.size
        if self.mode == "crop":
            return TF.center_crop(TF.resize(x, [s], interpolation=interp, antialias=True), [s, s])
        if self.mode == "reference":
            h, w = x.shape[-2:]
            side = min(h, w)
            top, left = h // 2 - side // 2, w // 2 - side // 2
            return TF.resize(x[..., top:top + side, left:left + side], [s, s], interpolation=interp, antialias=False)
        if self.mode == "pad":
            h, w = x.shape[-2:]
            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            padded = fill.to(x).view(1, -1, 1, 1).expand(x.shape[0], x.shape[1], side, side).clone()
            padded[..., top:top + h, left:left + w] = x
            x = padded
        return TF.resize(x, [s, s], interpolation=interp, antialias=True)

    def _crop_window(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean rows [H] / cols [W] of source pixels whose centres land inside the centre crop."""
        s = self.size
        rh, rw = TF.resize(torch.empty(1, 1, h, w, device="meta"), [s], antialias=True).shape[-2:]
        def keep(n: int, rn: int) -> torch.Tensor:
            start = int(round((rn - s) / 2.0))
            pos = (torch.arange(n, device=device) + 0.5) * (rn / n)
            return (pos >= start) & (pos < start + s)
        return keep(h, rh), keep(w, rw)

    def __call__(self, image: Any, masks: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform an image and its masks with the same geometry.

        image: PIL image (converted to RGB), numpy HxWx3 uint8 (or float in [0, 1]),
        torch [3, H, W] or [B, 3, H, W], uint8 (0..255) or float in [0, 1].
        masks: [K, H, W] in [0, 1] (anything :func:`to_masks` accepts) with the
        image's H, W; None = whole image (ones, one per image).  For B > 1
        images K must equal B.
        Returns ``(pixels [B, 3, S, S] float32 normalised with mean/std,
        alpha [K, 1, S, S] float32 normalised with normalize_alpha)`` on the
        image's device.
        """
        img = _image_to_tensor(image)
        b, _, h, w = img.shape
        if b == 0:
            raise ValueError("image batch is empty")
        m = torch.ones(b, h, w, device=img.device) if masks is None else to_masks(masks, h, w).to(img.device)
        k = m.shape[0]
        if k == 0 or (b > 1 and k != b):
            raise ValueError(f"masks: got K={k} masks for B={b} images; need K >= 1 for one image, K == B for B > 1")
        nonempty = m.flatten(1).amax(1) > 0
        if not nonempty.all():
            i = int((~nonempty).nonzero()[0])
            raise ValueError(f"masks {i} is empty (all zeros); pass masks=None for whole-image alpha")
        if self.mode == "crop":
            rows, cols = self._crop_window(h, w, m.device)
            r, c = rows.nonzero().flatten(), cols.nonzero().flatten()   # the window is one contiguous block
            if r.numel() and c.numel():
                kept = m[:, int(r[0]):int(r[-1]) + 1, int(c[0]):int(c[-1]) + 1].amax(dim=(1, 2)) > 0
            else:
                kept = torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
            if not kept.all():
                i = int((~kept).nonzero()[0])
                raise ValueError(f"mask {i} lies entirely outside the centre crop of the {w}x{h} (WxH) image; "
                                 "use mode='pad' to keep the whole image")
        mean = torch.tensor(self.mean, device=img.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=img.device).view(1, 3, 1, 1)
        pix = self._geometry(img, _INTERP[self.interpolation], mean.flatten())
        if self.mode != "reference":  # the reference normalises the bicubic overshoot as it is
            pix = pix.clamp_(0, 1)
        alpha = self._geometry(m.unsqueeze(1), InterpolationMode.BILINEAR, torch.zeros(1, device=img.device))
        return (pix - mean) / std, normalize_alpha(alpha.clamp_(0, 1))


def prepare(image: Any, mask: Any = None, box: Any = None, polygon: Any = None, rle: Any = None, *,
            size: int = 224, mode: str = "crop", mean: Sequence[float] = OPENAI_DATASET_MEAN,
            std: Sequence[float] = OPENAI_DATASET_STD, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One call: one image + any regions -> ``(image [1, 3, S, S], alpha [K, 1, S, S])``, float32.

    image: PIL image, numpy HxWx3 or torch [3, H, W] / [1, 3, H, W] (see
    :class:`PairedTransform`).  Regions as in :func:`region_masks` (mask, box
    xyxy pixels, COCO polygon, COCO RLE), all in the image's pixel frame.  No
    region = whole image: K = 1 and alpha is +1.9231 everywhere in 'crop' and
    'squash' mode; in 'pad' mode the padding is background (-1.9231) while
    the image area is +1.9231.  Outputs are on ``device`` (default: the
    image's device, CPU for PIL/numpy).
    """
    img = _image_to_tensor(image)
    if img.shape[0] != 1:
        raise ValueError(f"image: prepare takes one image ([3, H, W] or [1, 3, H, W]), got shape {tuple(img.shape)}")
    if device is not None:
        img = img.to(device)
    h, w = img.shape[-2:]
    masks = region_masks(h, w, mask=mask, box=box, polygon=polygon, rle=rle)
    return PairedTransform(size, mode, mean, std)(img, masks.to(img.device))


# --------------------------------------------------------------------------- image files
#: environment variable: the most pixels an image file may have (PIL's decompression-bomb guard);
#: ``0`` lifts the limit. Unset: PIL's default (about 179 million pixels fail, 89 million warn).
MAX_PIXELS_ENV = "ALPHACLIP_MAX_IMAGE_PIXELS"


def _apply_pixel_limit() -> None:
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None or not value.strip():
        return
    try:
        limit = int(value)
    except ValueError:
        raise InputError(f"{MAX_PIXELS_ENV}: expected a whole number of pixels (0 = no limit), got {value!r}") from None
    # PIL fails above twice this value and warns above it; the user's number is where it should fail
    Image.MAX_IMAGE_PIXELS = None if limit <= 0 else max(1, limit // 2)


def to_8bit(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """An 8-bit ``RGB`` (or ``L``) copy of any PIL image, with the full range of deeper images kept.

    PIL's own ``convert`` clips 16-bit grey (``I;16``, ``I``) to 255, which turns a 16-bit PNG
    all white; here 16-bit images are scaled (65535 -> 255), 32-bit integer images likewise when
    their values exceed 255, and float (``F``) images in [0, 1] are scaled by 255 (others clipped
    to [0, 255]).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode: expected 'RGB' or 'L', got {mode!r}")
    if image.mode.startswith("I") or image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        if image.mode.startswith("I;16") or (image.mode == "I" and hi > 255):
            a = a / 257.0 if hi <= 65535 else a * (255.0 / hi)
        elif image.mode == "F" and hi <= 1.0:
            a = a * 255.0
        grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return grey if mode == "L" else grey.convert("RGB")
    return image.convert(mode)


def decode_image_bytes(data: bytes, what: str = "image", mode: str = "RGB") -> Image.Image:
    """Decode an image file's bytes fully (a truncated file fails here, not later) to 8-bit ``mode``.

    ``what`` names the input in errors (e.g. ``"--mask: a.png"``). Raises :class:`InputError` (a
    ValueError) for empty bytes, bytes PIL cannot identify or decode (truncated, corrupt), images with
    no pixels, and images above the decompression-bomb limit (``ALPHACLIP_MAX_IMAGE_PIXELS`` raises it).
    """
    if not data:
        raise InputError(f"{what}: the file is empty (0 bytes); expected an image")
    _apply_pixel_limit()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width == 0 or im.height == 0:
                raise InputError(f"{what}: the image has no pixels ({im.width}x{im.height})")
            im.load()
            return to_8bit(im, mode)
    except Image.DecompressionBombError as e:
        raise InputError(f"{what}: {e}; if you trust the file set {MAX_PIXELS_ENV} to a larger pixel count "
                         "(0 = no limit)") from None
    except UnidentifiedImageError:
        raise InputError(f"{what}: not an image PIL can read (an unknown format, or a broken header such as a "
                         "0x0 size)") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for bad data
        raise InputError(f"{what}: the image does not decode (truncated or corrupt?): {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None


def open_image(path: Any, arg: str = "image", mode: str = "RGB") -> Image.Image:
    """Read and fully decode an image file to 8-bit ``RGB`` (or ``L`` for masks), see :func:`decode_image_bytes`.

    Raises FileNotFoundError or :class:`InputError` naming ``arg`` and the file.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{arg}: {path} is a folder; expected an image file")
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no such file: {path}")
    return decode_image_bytes(path.read_bytes(), f"{arg}: {path}", mode)
