"""Segment Anything, loaded safely and only when asked for (``segment_anything`` is imported lazily)."""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["build_sam", "automatic_mask_generator", "box_predictor"]


def build_sam(sam_type: str = "vit_h", checkpoint: Optional[str] = None, device: str = "cpu") -> Any:
    """A SAM model of ``sam_type`` (``vit_h``, ``vit_l``, ``vit_b``) with weights from ``checkpoint``.

    The weights are read with ``torch.load(weights_only=True)`` (or safetensors), never unpickled unsafely.
    """
    from segment_anything import sam_model_registry

    from alphaclip_core.checkpoints import load_state_dict_checked, read_state_dict

    if sam_type not in sam_model_registry:
        raise ValueError(f"sam_type: expected one of {sorted(sam_model_registry)}, got {sam_type!r}")
    if checkpoint is None:
        raise ValueError("checkpoint: SAM needs its weights file (e.g. sam_vit_h_4b8939.pth)")
    sd = read_state_dict(checkpoint, "sam checkpoint")
    sam = sam_model_registry[sam_type]()
    load_state_dict_checked(sam, sd, f"sam checkpoint {checkpoint}")
    return sam.to(device).eval()


def automatic_mask_generator(sam: Any, **kwargs: Any) -> Any:
    """``segment_anything.SamAutomaticMaskGenerator(sam, **kwargs)`` (binary masks)."""
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **kwargs)


def box_predictor(sam: Any) -> Any:
    """``segment_anything.SamPredictor(sam)`` for box prompts."""
    from segment_anything import SamPredictor

    return SamPredictor(sam)
