"""Box geometry for region classification: xyxy pixel boxes ``[K, 4]`` scaled for context
(:func:`expand_boxes`), compared (:func:`box_iou`) and snapped to whole pixels (:func:`snap_boxes`),
as :class:`~alphaclip_core.region_classifier.AlphaCLIPRegionClassifier`, the pseudo-labeller and the
REC evaluation use them."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

__all__ = ["expand_boxes", "box_iou", "snap_boxes"]

logger = logging.getLogger("alphaclip_core.region_classifier")  # the logger these functions always used


def expand_boxes(boxes: torch.Tensor, ratio: float, height: int, width: int, min_size: float = 0.0
                 ) -> torch.Tensor:
    """Scale xyxy boxes about their centres by ``ratio`` and clip them to the image.

    Args:
        boxes: ``[K, 4]`` xyxy pixels.
        ratio: >= 1 (1 = unchanged before clipping).
        min_size: each side is at least this many pixels after scaling (before clipping).
    Returns:
        ``[K, 4]`` float xyxy boxes inside ``[0, width] x [0, height]``.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected [K, 4] xyxy pixels, got {list(boxes.shape)}")
    if not ratio >= 1.0:
        raise ValueError(f"ratio: expected a context expansion ratio >= 1, got {ratio}")
    b = boxes.float()
    c = (b[:, :2] + b[:, 2:]) / 2
    half = ((b[:, 2:] - b[:, :2]) * ratio).clamp(min=min_size) / 2
    lo = torch.stack([(c[:, 0] - half[:, 0]).clamp(0, width), (c[:, 1] - half[:, 1]).clamp(0, height)], 1)
    hi = torch.stack([(c[:, 0] + half[:, 0]).clamp(0, width), (c[:, 1] + half[:, 1]).clamp(0, height)], 1)
    return torch.cat([lo, hi], dim=1)


def box_iou(a: Any, b: Any) -> np.ndarray:
    """IoU of xyxy boxes: ``a`` [N, 4], ``b`` [M, 4] (arrays, tensors or lists) -> [N, M] float64 in [0, 1].

    Degenerate boxes have zero area; a pair with zero union has IoU 0.
    """
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def snap_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Round xyxy boxes outwards to whole pixels inside the image, at least 1 pixel wide and high.

    Detector proposals can be thinner than a pixel (and rasterise to an empty alpha); snapped boxes
    always cover at least one pixel centre. ``[K, 4]`` float -> ``[K, 4]`` float.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected [K, 4] xyxy pixels, got {list(boxes.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"height / width: expected a non-empty image, got {height}x{width}")
    b = boxes.float()
    x0 = b[:, 0].floor().clamp(0, width - 1)
    y0 = b[:, 1].floor().clamp(0, height - 1)
    x1 = torch.maximum(b[:, 2].ceil().clamp(0, width), x0 + 1)
    y1 = torch.maximum(b[:, 3].ceil().clamp(0, height), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def _snap_thin_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes that touch the image but cover no pixel centre (thinner than a pixel, zero-area, or lying
    on the border, as raw detector proposals can) are :func:`snap_boxes`-ed to whole pixels; other
    boxes are returned as they are (rasterised by pixel centre). Inverted, non-finite and outside boxes
    are left for :func:`boxes_to_masks` to reject."""
    b = boxes.float()
    x0, y0, x1, y1 = b.unbind(1)
    # pixels i with centre i + 0.5 in [x0, x1), inside the image: ceil(x0 - 0.5) <= i < ceil(x1 - 0.5)
    xs_in = torch.ceil(x0 - 0.5).clamp(min=0) < torch.ceil(x1 - 0.5).clamp(max=width)
    ys_in = torch.ceil(y0 - 0.5).clamp(min=0) < torch.ceil(y1 - 0.5).clamp(max=height)
    touches = (x0 <= x1) & (y0 <= y1) & (x1 >= 0) & (y1 >= 0) & (x0 <= width) & (y0 <= height)
    thin = touches & torch.isfinite(b).all(1) & ~(xs_in & ys_in)
    if not thin.any():
        return boxes
    logger.debug("snapping %d box(es) thinner than a pixel to whole pixels", int(thin.sum()))
    out = b.clone()
    out[thin] = snap_boxes(b[thin], height, width)
    return out


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes ``[K, 4]`` (pixel edges) of non-empty ``[K, H, W]`` masks."""
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m > 0, as_tuple=True)
        out.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
    return torch.stack(out)
