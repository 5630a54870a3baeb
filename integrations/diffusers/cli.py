"""``alphaclip generate``: generation that follows a region (diffusers).

``alphaclip generate variation IMAGE --box x0,y0,x1,y1 | --mask PNG --pipeline FOLDER -o out.png``
    Stable Diffusion image variations of the region (no region: the whole image). ``out.png`` is the
    image, or the grid of images (one row per region, ``--num-images`` per row); ``--sheet`` also
    writes the input with each region drawn over it beside its variations. Progress: diffusers' bar.
``alphaclip generate convert STOCK --checkpoint ALPHA.pth -o FOLDER``
    a stock image-variation (or Shap-E img2img) folder + an Alpha-CLIP checkpoint -> the Alpha-CLIP
    pipeline folder that ``variation`` loads.

diffusers is imported inside the commands only, so ``alphaclip --help`` stays fast and lists
``generate`` where diffusers is not installed (the command then says how to install it).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from alphaclip_core.alpha import open_image
from alphaclip_core.cli import _parse_box, _positive_int, check_device

logger = logging.getLogger("alphaclip")

_INSTALL = "alphaclip generate needs diffusers: pip install 'alpha-clip[diffusers]'"


def _import_generate():
    try:
        from alphaclip_integrations.diffusers import generate
    except ImportError as e:
        raise SystemExit(f"error: {_INSTALL} ({e})") from None
    return generate


def _save_png(image: Any, path: Path) -> None:
    from alphaclip_core.checkpoints import atomic_write

    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    logger.info("wrote %s", path)


def _cmd_variation(args: argparse.Namespace) -> int:
    import numpy as np

    generate = _import_generate()
    check_device(args.device)
    image = open_image(args.image, "IMAGE")
    masks = [np.asarray(open_image(m, "--mask", mode="L")) for m in args.mask]
    region = dict(mask=masks or None, box=args.box or None)
    if not Path(args.pipeline).is_dir():
        raise FileNotFoundError(f"--pipeline: {args.pipeline} is not a folder (an Alpha-CLIP image-variation "
                                "pipeline; make one with `alphaclip generate convert`)")
    pipe = generate.load_pipeline(args.pipeline, device=args.device, dtype=args.dtype)
    extra = {k: v for k, v in dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                    height=args.height, width=args.width).items() if v is not None}
    images = generate.region_variations(pipe, image, num_images=args.num_images, seed=args.seed, mode=args.mode,
                                        **region, **extra)
    rows = len(images) // args.num_images
    from diffusers.utils import make_image_grid

    out = images[0] if len(images) == 1 else make_image_grid(images, rows=rows, cols=args.num_images)
    _save_png(out, Path(args.output))
    if args.sheet:
        _save_png(generate.variation_sheet(image, images, **region), Path(args.sheet))
    print(args.output)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    try:
        import torch

        from alphaclip_integrations.diffusers import convert_pipeline
    except ImportError as e:
        raise SystemExit(f"error: {_INSTALL} ({e})") from None
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, None: None}[args.dtype]
    try:
        out = convert_pipeline(args.stock, args.checkpoint, args.output, mode=args.mode, torch_dtype=dtype,
                               overwrite=args.overwrite)
    except FileExistsError as e:
        raise ValueError(f"{str(e).replace('overwrite=True (CLI: --overwrite)', '--overwrite')}") from None
    print(out)
    return 0


def register(subparsers: Any) -> None:
    """Add ``generate`` (``variation``, ``convert``) to the ``alphaclip`` command."""
    g = subparsers.add_parser("generate", help="generation that follows a region: diffusers pipelines with Alpha-CLIP")
    gsub = g.add_subparsers(dest="generate_task", required=True)

    p = gsub.add_parser("variation", help="Stable Diffusion image variations of a region; writes a PNG")
    p.add_argument("image", help="image file")
    p.add_argument("--box", action="append", default=[], type=_parse_box,
                   help="region box x0,y0,x1,y1 in pixels (repeatable: one set of variations per region)")
    p.add_argument("--mask", action="append", default=[], help="region mask PNG of the image's size (repeatable)")
    p.add_argument("--pipeline", required=True, help="Alpha-CLIP image-variation folder (alphaclip generate convert)")
    p.add_argument("-o", "--output", required=True, help="output PNG: the image, or the grid (rows: regions)")
    p.add_argument("--num-images", type=_positive_int, default=1, help="variations per region (default 1)")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default: the pipeline's, 50)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default: the pipeline's, 7.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (CPU generator: same images on any device)")
    p.add_argument("--mode", choices=("crop", "pad", "squash"),
                   help="paired image+alpha geometry (default: the pipeline's, crop as CLIP)")
    p.add_argument("--height", type=_positive_int, help="output height in pixels (multiple of 8)")
    p.add_argument("--width", type=_positive_int, help="output width in pixels (multiple of 8)")
    p.add_argument("--sheet", help="also write a PNG with the input + region beside its variations")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                   help="weights dtype (default: float16 on CUDA, float32 otherwise)")
    p.set_defaults(func=_cmd_variation)

    p = gsub.add_parser("convert", help="stock image-variation / Shap-E folder + Alpha-CLIP checkpoint -> pipeline")
    p.add_argument("stock", help="diffusers folder of StableDiffusionImageVariationPipeline or ShapEImg2ImgPipeline")
    p.add_argument("--checkpoint", required=True, help="Alpha-CLIP weights (reference .pth or open_clip file) of the "
                                                       "stock encoder's architecture (ViT-L/14)")
    p.add_argument("-o", "--output", required=True, help="output pipeline folder")
    p.add_argument("--mode", choices=("crop", "pad", "squash"), default="crop",
                   help="paired geometry stored in the pipeline (default crop, as CLIP)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="dtype to write (default: as loaded)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_convert)
