"""The paired transform: ONE geometric transform applied to an image and its alpha masks.

Image and masks get the same resize / crop / pad, so they stay aligned (the reference implementation
squashes the mask but centre-crops the image, which misaligns them on non-square images).
:func:`prepare` is the one-call form: an image and any regions (masks, boxes, polygons, RLE) to the
model's ``(pixels, alpha)``. Every integration calls these; none has its own copy.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision.transforms import InterpolationMode

from .alpha import _TOL, normalize_alpha, region_masks, to_masks
from .images import to_8bit

__all__ = ["PairedTransform", "prepare"]

_INTERP = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


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
