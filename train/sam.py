"""Segment Anything, the one place this package builds and runs it: loading SAM safely, a tiny random
SAM for tests and smoke runs, masks for many box prompts at once, and the automatic mask generator.

``segment_anything`` is imported here at module top; the CLI commands import this module only inside
the commands that need SAM (data preparation, ``locate``, REC with masks).
"""
from __future__ import annotations

import logging
import os
from functools import partial
from typing import Optional, Tuple, Union

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from alphaclip_core.checkpoints import load_state_dict_checked, read_state_dict

logger = logging.getLogger("alphaclip.sam")

__all__ = ["SAM_TYPES", "tiny_sam", "load_sam", "predict_boxes", "box_predictor", "automatic_mask_generator"]

#: registry names accepted by :func:`load_sam`: segment-anything's own, plus ``tiny`` (tests, smoke runs)
SAM_TYPES = ("vit_h", "vit_l", "vit_b", "tiny")


def tiny_sam(img_size: int = 128, patch_size: int = 16, embed_dim: int = 32, depth: int = 2, num_heads: int = 2,
             prompt_dim: int = 32, seed: Optional[int] = 0) -> Sam:
    """A small random-init SAM built from segment-anything's own modules (for tests and benchmarks).

    Same architecture family as ``vit_b/l/h`` with the sizes shrunk: the image encoder reads
    ``img_size`` pixels (long side) in ``patch_size`` patches, so its embedding is
    ``img_size // patch_size`` square; the prompt/mask decoder works at ``prompt_dim`` channels.
    Returned in eval mode on CPU. Its masks are meaningless (random weights) but have the right shapes.
    """
    if img_size % patch_size:
        raise ValueError(f"img_size: expected a multiple of patch_size={patch_size}, got {img_size}")
    if seed is not None:
        torch.manual_seed(seed)
    grid = img_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=4, out_chans=prompt_dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, global_attn_indexes=(depth - 1,), window_size=min(14, grid)),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim, num_heads=2),
            transformer_dim=prompt_dim, iou_head_depth=2, iou_head_hidden_dim=prompt_dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(sam_type: str = "vit_h", checkpoint: Optional[Union[str, os.PathLike]] = None,
             device: Union[str, torch.device] = "cpu") -> Sam:
    """Build SAM ``sam_type`` (``vit_h``, ``vit_l``, ``vit_b`` or ``tiny``) and load ``checkpoint`` safely.

    The official ``sam_vit_*.pth`` files (and any state dict saved with ``torch.save``) are read with
    ``torch.load(weights_only=True)``; ``.safetensors`` files with safetensors. A checkpoint is required
    for the registry models (random SAM masks are useless); ``tiny`` may run without one.
    """
    if sam_type not in SAM_TYPES:
        raise ValueError(f"sam_type: expected one of {SAM_TYPES}, got {sam_type!r}")
    if sam_type == "tiny":
        sam = tiny_sam()
        if checkpoint is None:
            logger.warning("SAM 'tiny' with random weights: masks are meaningless (tests/smoke runs only)")
    else:
        if checkpoint is None:
            raise ValueError(f"checkpoint: SAM {sam_type} needs its weights file (e.g. sam_{sam_type}_*.pth)")
        sam = sam_model_registry[sam_type](checkpoint=None)
    if checkpoint is not None:
        # official sam_vit_*.pth files are plain state dicts: read with weights_only=True (or safetensors)
        state = read_state_dict(checkpoint, "checkpoint")
        load_state_dict_checked(sam, state, f"SAM {sam_type} checkpoint {os.fspath(checkpoint)}")
    return sam.to(device).eval()


@torch.no_grad()
def predict_boxes(predictor: SamPredictor, image: np.ndarray, boxes: np.ndarray, *, batch_size: int = 64,
                  one_at_a_time: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """One mask per box prompt, the image embedding computed once.

    Args:
        predictor: a ``SamPredictor`` (its model on any device).
        image: ``[H, W, 3]`` uint8 RGB.
        boxes: ``[N, 4]`` xyxy pixel boxes in the image's frame.
        batch_size: box prompts per decoder call (all of an image's boxes in one call up to this many).
        one_at_a_time: one decoder call per box (only to measure what batching buys).
    Returns:
        ``masks [N, H, W]`` bool and ``scores [N]`` float32 (SAM's predicted IoU), single-mask output.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected [H, W, 3] uint8 RGB, got shape {list(image.shape)} {image.dtype}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    h, w = image.shape[:2]
    if len(boxes) == 0:
        return np.zeros((0, h, w), bool), np.zeros((0,), np.float32)
    predictor.set_image(image)
    step = 1 if one_at_a_time else max(1, batch_size)
    masks, scores = [], []
    for start in range(0, len(boxes), step):
        b = torch.as_tensor(boxes[start:start + step], device=predictor.device)
        b = predictor.transform.apply_boxes_torch(b, (h, w))
        m, iou, _ = predictor.predict_torch(None, None, boxes=b, multimask_output=False)
        masks.append(m[:, 0].cpu().numpy())
        scores.append(iou[:, 0].float().cpu().numpy())
    return np.concatenate(masks), np.concatenate(scores)


def box_predictor(sam: Sam) -> SamPredictor:
    """``SamPredictor(sam)``: computes the image embedding once per ``set_image``, then answers prompts."""
    return SamPredictor(sam)


def automatic_mask_generator(sam: Sam, **kwargs) -> SamAutomaticMaskGenerator:
    """``SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **kwargs)``."""
    return SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **kwargs)
