"""Image + region -> variations: the one function the CLI and the app call, and a sheet to look at.

>>> pipe = load_pipeline("sd-variations-alpha", device="cuda")
>>> images = region_variations(pipe, image, box=[40, 30, 200, 220], num_images=4, seed=0)
>>> variation_sheet(image, images, box=[40, 30, 200, 220]).save("sheet.png")
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import make_image_grid

from alphaclip_core.alpha import region_masks
from alphaclip_core.viz import overlay_regions

from .convert import pipeline_class_of
from .pipelines import AlphaCLIPImageVariationPipeline

__all__ = ["load_pipeline", "region_variations", "variation_sheet"]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_pipeline(folder: PathLike, *, device: Union[str, torch.device] = "cpu",
                  dtype: Union[str, torch.dtype, None] = None, progress: bool = True, arg: str = "pipeline"
                  ) -> AlphaCLIPImageVariationPipeline:
    """Load an Alpha-CLIP image-variation folder (written by :func:`convert_pipeline`).

    Args:
        folder: the pipeline folder; a stock folder raises ValueError naming ``arg`` (convert it first).
        device: torch device.
        dtype: ``float32`` / ``float16`` / ``bfloat16`` (or a torch dtype); default float16 on CUDA, else float32.
        progress: show diffusers' progress bar while generating.
        arg: how errors name ``folder`` (a command line says ``--pipeline``).
    """
    pipeline_class_of(folder, arg, allowed={"AlphaCLIPImageVariationPipeline": None})
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    pipe = AlphaCLIPImageVariationPipeline.from_pretrained(str(folder), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def region_variations(pipeline: AlphaCLIPImageVariationPipeline, image: Any, *, mask: Any = None, box: Any = None,
                      num_images: int = 4, seed: Optional[int] = 0, mode: Optional[str] = None,
                      **kwargs: Any) -> List[PIL.Image.Image]:
    """Variations of the region(s) of one image: ``K * num_images`` PIL images, region-major.

    Args:
        pipeline: an :class:`AlphaCLIPImageVariationPipeline` (see :func:`load_pipeline`).
        image: a PIL image or numpy ``HxWx3`` array.
        mask, box: the region(s) in the image's pixel frame (``[H, W]`` / ``[K, H, W]`` masks, ``[4]`` /
            ``[K, 4]`` xyxy boxes, both allowed: masks first); neither = the whole image.
        num_images: variations per region.
        seed: seeds a CPU ``torch.Generator`` (same seed -> same images on any device); None = random.
        mode: the paired geometry (crop / pad / squash); default the pipeline's.
        **kwargs: further stock arguments (``num_inference_steps``, ``guidance_scale``, ``height``,
            ``width``, ``eta``, ``callback``...).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images: expected a positive int, got {num_images!r}")
    if isinstance(image, (list, tuple)):
        raise TypeError("image: region_variations takes one image (PIL or numpy HxWx3); call the pipeline for batches")
    generator = None if seed is None else torch.Generator("cpu").manual_seed(int(seed))
    out = pipeline(image, mask=mask, box=box, mode=mode, num_images_per_prompt=num_images, generator=generator,
                   output_type="pil", **kwargs)
    return list(out.images)


def variation_sheet(image: Any, variations: List[PIL.Image.Image], *, mask: Any = None, box: Any = None
                    ) -> PIL.Image.Image:
    """One row per region: the input with that region drawn over it, then its variations.

    ``variations`` is :func:`region_variations`' output (``K * n`` images, region-major, all one size).
    """
    if not isinstance(image, PIL.Image.Image):
        array = np.asarray(image)
        image = PIL.Image.fromarray(array if array.dtype == np.uint8 else (array.clip(0, 1) * 255).round().astype(np.uint8))
    base = image.convert("RGB")
    masks = region_masks(base.height, base.width, mask=mask, box=box)
    k = masks.shape[0]
    if not variations or len(variations) % k:
        raise ValueError(f"variations: expected a positive multiple of {k} images (one set per region), "
                         f"got {len(variations)}")
    n = len(variations) // k
    w, h = variations[0].size
    if any(v.size != (w, h) for v in variations):
        raise ValueError("variations: expected images of one size")
    thumb = (max(1, round(base.width * h / base.height)), h)
    overlays = [overlay_regions(base, masks[i:i + 1]).resize(thumb, PIL.Image.BICUBIC) for i in range(k)]
    sheet = PIL.Image.new("RGB", (thumb[0] + n * w, k * h), "white")
    sheet.paste(make_image_grid(overlays, rows=k, cols=1), (0, 0))
    sheet.paste(make_image_grid(list(variations), rows=k, cols=n), (thumb[0], 0))
    return sheet
