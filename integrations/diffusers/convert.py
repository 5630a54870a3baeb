"""A stock diffusers folder + an Alpha-CLIP checkpoint -> an Alpha-CLIP pipeline folder.

``convert_pipeline("sd-image-variations", "clip_l14_grit20m_fultune_2xe.pth", "sd-variations-alpha")``
loads the stock pipeline with diffusers (``StableDiffusionImageVariationPipeline`` or
``ShapEImg2ImgPipeline``, read off the folder's ``model_index.json``), replaces its CLIP image
encoder by the Alpha-CLIP tower of the checkpoint (same architecture: the stock encoder's config
gives head count, activation and epsilon, which the weights do not store) and its
``CLIPImageProcessor`` by the paired image + alpha processor with the same size, mean and std, and
writes the result with diffusers' ``save_pretrained``. The written folder loads with
``AlphaCLIPImageVariationPipeline.from_pretrained(folder)`` (or the Shap-E class).

The checkpoint's key names go through the one key map of the transformers integration
(:func:`alphaclip_integrations.hf.vision_model_from_state_dict`); files are read with
:func:`alphaclip_core.read_state_dict` (safetensors or ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from diffusers import ShapEImg2ImgPipeline, StableDiffusionImageVariationPipeline
from transformers import CLIPVisionConfig

from alphaclip_core.checkpoints import CheckpointError, detect_format, read_state_dict
from alphaclip_integrations.hf import (AlphaCLIPVisionConfig, AlphaCLIPVisionModel, AlphaCLIPVisionModelWithProjection,
                                       vision_model_from_state_dict)

from .pipelines import AlphaCLIPImageVariationPipeline, AlphaCLIPShapEImg2ImgPipeline

__all__ = ["convert_pipeline", "alpha_encoder_from_checkpoint", "pipeline_class_of"]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

#: model_index.json ``_class_name`` -> (class that loads the folder, Alpha-CLIP class it converts to)
_CONVERTIBLE = {
    "StableDiffusionImageVariationPipeline": (StableDiffusionImageVariationPipeline, AlphaCLIPImageVariationPipeline),
    "AlphaCLIPImageVariationPipeline": (AlphaCLIPImageVariationPipeline, AlphaCLIPImageVariationPipeline),
    "ShapEImg2ImgPipeline": (ShapEImg2ImgPipeline, AlphaCLIPShapEImg2ImgPipeline),
    "AlphaCLIPShapEImg2ImgPipeline": (AlphaCLIPShapEImg2ImgPipeline, AlphaCLIPShapEImg2ImgPipeline),
}
_ALPHA_FORMATS = ("alpha-reference", "open_clip-alpha")
_PLAIN_FORMATS = ("clip", "clip-visual")


def pipeline_class_of(folder: PathLike, arg: str = "folder", allowed: Optional[Mapping[str, Any]] = None) -> str:
    """The ``_class_name`` in ``folder/model_index.json``, checked against ``allowed`` (default: the
    convertible pipelines). Raises FileNotFoundError / ValueError naming ``arg``."""
    folder = Path(folder)
    allowed = _CONVERTIBLE if allowed is None else allowed
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"{arg}: {folder} is not a folder (expected a diffusers pipeline folder)")
    if not index.is_file():
        raise ValueError(f"{arg}: {folder} has no model_index.json, so it is not a diffusers pipeline folder; expected "
                         f"one of {', '.join(allowed)}")
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{arg}: {index} is not a JSON object ({e})") from None
    if name not in allowed:
        raise ValueError(f"{arg}: {folder} holds a {name} pipeline; expected one of {', '.join(allowed)}")
    return name


def _vision_config(config: CLIPVisionConfig) -> AlphaCLIPVisionConfig:
    """The Alpha-CLIP vision config with the same fields as a stock CLIP vision config."""
    fields = {k: v for k, v in config.to_dict().items()
              if k not in ("model_type", "architectures", "transformers_version", "_name_or_path")}
    return AlphaCLIPVisionConfig(**fields)


def alpha_encoder_from_checkpoint(checkpoint: PathLike, config: CLIPVisionConfig, *, with_projection: bool = True
                                  ) -> Union[AlphaCLIPVisionModelWithProjection, AlphaCLIPVisionModel]:
    """An Alpha-CLIP image encoder shaped like a stock CLIP encoder, with a checkpoint's weights.

    Args:
        checkpoint: the reference release's visual-only ``.pth`` (``conv1_alpha.weight``, ...) or an
            open_clip Alpha-CLIP file (``visual.*``, safetensors or ``.pt``). A plain CLIP checkpoint is
            accepted with a warning (zero alpha conv: the encoder then ignores the region).
        config: the stock encoder's ``CLIPVisionConfig`` (architecture, activation, epsilon, projection_dim).
        with_projection: build :class:`AlphaCLIPVisionModelWithProjection` (Stable Diffusion image
            variations: needs the checkpoint's ``proj``) or :class:`AlphaCLIPVisionModel` (Shap-E).
    Returns:
        the encoder in eval mode, float32, on the CPU.
    Raises:
        CheckpointError (a ValueError) naming ``checkpoint`` when the file is not an (Alpha-)CLIP vision
        tower or does not fit ``config``.
    """
    sd = read_state_dict(checkpoint, "checkpoint")
    fmt = detect_format(sd)
    if fmt in _PLAIN_FORMATS:
        logger.warning("checkpoint: %s is a plain CLIP (no alpha conv): the encoder gets a zero alpha conv and "
                       "ignores regions", checkpoint)
    elif fmt not in _ALPHA_FORMATS:
        raise CheckpointError(f"checkpoint: {checkpoint} is in format '{fmt}'; expected an Alpha-CLIP vision tower "
                              "(reference .pth or open_clip file)")
    vcfg = _vision_config(config)
    shape = (f"width {vcfg.hidden_size}, {vcfg.num_hidden_layers} layers, patch {vcfg.patch_size}, "
             f"image {vcfg.image_size}")
    try:
        tower = vision_model_from_state_dict(sd, vcfg)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint: {checkpoint} does not fit the pipeline's image encoder ({shape}): "
                              f"{e}") from None
    if not with_projection:
        return tower
    proj = sd.get("proj", sd.get("visual.proj"))
    want = (vcfg.hidden_size, vcfg.projection_dim)
    if proj is None or tuple(proj.shape) != want:
        got = "none" if proj is None else list(proj.shape)
        raise CheckpointError(f"checkpoint: {checkpoint} needs an output projection 'proj' of shape {list(want)} for "
                              f"the pipeline's image encoder ({shape}), got {got}")
    encoder = AlphaCLIPVisionModelWithProjection(vcfg).eval()
    encoder.vision_model.load_state_dict(tower.state_dict(), strict=True)
    with torch.no_grad():
        encoder.visual_projection.weight.copy_(proj.t())
    return encoder


def convert_pipeline(stock: PathLike, checkpoint: PathLike, output: PathLike, *, mode: str = "crop",
                     torch_dtype: Optional[torch.dtype] = None, overwrite: bool = False) -> Path:
    """Write an Alpha-CLIP pipeline folder from a stock one and an Alpha-CLIP checkpoint.

    Args:
        stock: a diffusers folder of ``StableDiffusionImageVariationPipeline`` (e.g. a local copy of
            ``lambdalabs/sd-image-variations-diffusers``) or ``ShapEImg2ImgPipeline`` (``openai/shap-e-img2img``);
            an Alpha-CLIP folder of either is accepted too (swap the checkpoint).
        checkpoint: Alpha-CLIP weights of the stock encoder's architecture (ViT-L/14 at 224 px for both
            pipelines), see :func:`alpha_encoder_from_checkpoint`.
        output: the folder to write (written next to it under a temporary name, then moved into place).
        mode: the paired geometry stored in the processor: ``crop`` (CLIP's, as stock), ``pad`` or ``squash``.
        torch_dtype: load (and so write) the stock components in this dtype; default diffusers' default.
        overwrite: replace an existing ``output``.
    Returns:
        ``output`` as a Path.
    Raises:
        ValueError naming ``stock`` for a folder that is not one of these pipelines; CheckpointError
        naming ``checkpoint``; FileExistsError naming ``output``.
    """
    name = pipeline_class_of(stock, "stock")
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"output: {output} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    load_class, alpha_class = _CONVERTIBLE[name]
    pipe = load_class.from_pretrained(str(stock), dtype=torch_dtype)
    encoder = alpha_encoder_from_checkpoint(checkpoint, pipe.image_encoder.config,
                                            with_projection=alpha_class._encoder_class is AlphaCLIPVisionModelWithProjection)
    encoder = encoder.to(pipe.image_encoder.dtype)
    alpha = alpha_class.from_stock(pipe, encoder, mode=mode)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
        alpha.save_pretrained(str(tmp))
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%s with the Alpha-CLIP encoder of %s)", output, alpha_class.__name__, checkpoint)
    return output
