"""A transformers ``llava-1.5`` folder + an Alpha-CLIP checkpoint -> an alpha LLaVA folder.

Only the vision tower changes: its weights (alpha conv included) come from the Alpha-CLIP
checkpoint; the projector, the language model, the LM head and the tokenizer are the LLaVA
folder's, unchanged. The Alpha-CLIP tower must have the LLaVA tower's architecture
(LLaVA-1.5: ViT-L/14@336, i.e. ``clip_l14@336_grit1m_fultune_8xe.pth`` or
``clip_l14_336_grit_20m_4xe.pth``). This is the paper's swap (SPEC: pretrain the projector with
plain CLIP, then swap in Alpha-CLIP and fine-tune the LLM); fine-tune the converted model before
relying on its region answers. With a plain CLIP as the checkpoint (zero alpha conv) and the LLaVA
tower's own weights, the result computes exactly what the LLaVA folder computes.

Command line::

    python -m alphaclip_integrations.llava convert LLAVA_FOLDER CHECKPOINT [--base BASE] -o OUT [--mode pad]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import List, Optional, Union

import torch
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

from alphaclip_core.checkpoints import CheckpointError, vision_arch
from alphaclip_integrations.hf import AlphaCLIPImageProcessor, AlphaCLIPVisionConfig, vision_model_from_state_dict

from .modeling_alpha_llava import AlphaLlavaConfig, AlphaLlavaForConditionalGeneration
from .processing_alpha_llava import AlphaLlavaProcessor
from .weights import read_visual

__all__ = ["alpha_llava_config", "alpha_llava_from_llava", "convert_llava", "main"]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


def alpha_llava_config(config: LlavaConfig) -> AlphaLlavaConfig:
    """The :class:`AlphaLlavaConfig` of a LLaVA config: the same fields, the vision config as an
    ``AlphaCLIPVisionConfig``."""
    if not isinstance(config, LlavaConfig):
        raise TypeError(f"config: expected a LlavaConfig, got {type(config).__name__}")
    d = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        d.pop(key, None)
    vision = dict(d["vision_config"])
    vision.pop("model_type", None)
    if vision.get("architectures"):
        vision.pop("architectures")
    d["vision_config"] = AlphaCLIPVisionConfig(**vision)
    return AlphaLlavaConfig(**d)


def alpha_llava_from_llava(llava: LlavaForConditionalGeneration, checkpoint: PathLike,
                           base: Optional[PathLike] = None) -> AlphaLlavaForConditionalGeneration:
    """An alpha LLaVA sharing ``llava``'s projector, language model and LM head (no copy), with the
    vision tower of an Alpha-CLIP checkpoint.

    Args:
        llava: a transformers ``LlavaForConditionalGeneration`` (CLIP ViT tower).
        checkpoint, base: the Alpha-CLIP weights (see :func:`~alphaclip_integrations.llava.weights.read_visual`:
            a reference ``.pth``, a whole Alpha-CLIP, or a plain CLIP for a zero alpha conv). The head
            count and activation come from ``llava``'s vision config.
    Returns:
        the model in eval mode; the new tower has the dtype of ``llava``'s tower.
    Raises:
        CheckpointError: the checkpoint's tower has another architecture than ``llava``'s.
    """
    config = alpha_llava_config(llava.config)
    sd = read_visual(checkpoint, base)
    arch, want = vision_arch(sd), config.vision_config
    got = {"hidden_size": arch.width, "patch_size": arch.patch_size, "num_hidden_layers": arch.layers,
           "image_size": arch.image_size, "intermediate_size": int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])}
    diff = [f"{f}: LLaVA {getattr(want, f)!r} vs checkpoint {v!r}" for f, v in got.items() if getattr(want, f) != v]
    if diff:
        raise CheckpointError(f"checkpoint: {checkpoint} does not fit the LLaVA vision tower ({'; '.join(diff)})")
    # the LLaVA config supplies what the weights do not store: head count, activation, layer-norm eps
    tower = vision_model_from_state_dict(sd, want)
    old = llava.model.vision_tower
    tower = tower.to(dtype=next(old.parameters()).dtype, device=next(old.parameters()).device)
    with torch.device("meta"):  # every module is replaced below: build the shell without memory
        model = AlphaLlavaForConditionalGeneration(config)
    model.model.vision_tower = tower
    model.model.multi_modal_projector = llava.model.multi_modal_projector
    model.model.language_model = llava.model.language_model
    model.lm_head = llava.lm_head
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"alpha_llava_from_llava: tensors left unset: {left[:5]}")
    model.generation_config = llava.generation_config
    return model.eval()


def convert_llava(llava_folder: PathLike, checkpoint: PathLike, output: PathLike, base: Optional[PathLike] = None,
                  *, mode: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> Path:
    """Write an alpha LLaVA folder (``save_pretrained`` layout, loads with ``AutoModelForImageTextToText``
    after ``import alphaclip_integrations.llava``).

    Args:
        llava_folder: a transformers LLaVA folder (e.g. a download of ``llava-hf/llava-1.5-7b-hf``).
        checkpoint, base: the Alpha-CLIP weights (see :func:`alpha_llava_from_llava`).
        output: the new folder: config, weights and, if ``llava_folder`` has a tokenizer, an
            :class:`AlphaLlavaProcessor` (tokenizer + alpha image processor).
        mode: the image + alpha geometry (``crop``, ``pad``, ``squash``); default: ``pad`` if the LLaVA
            folder's image processor pads to a square (``do_pad``, LLaVA-1.5's own ``pad`` preprocessing),
            else ``crop`` (CLIP's resize + centre crop). Mean/std are taken from that image processor too.
        dtype: load (and write) the LLaVA weights in this dtype (default: as stored).
    Returns:
        ``output`` as a Path.
    """
    llava_folder, output = Path(llava_folder), Path(output)
    if not (llava_folder / "config.json").is_file():
        raise FileNotFoundError(f"llava_folder: {llava_folder} has no config.json (expected a transformers LLaVA folder)")
    llava = LlavaForConditionalGeneration.from_pretrained(llava_folder, dtype=dtype if dtype is not None else "auto")
    model = alpha_llava_from_llava(llava, checkpoint, base)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    try:
        tokenizer = AutoTokenizer.from_pretrained(llava_folder)
    except (OSError, ValueError) as e:
        logger.warning("%s has no loadable tokenizer (%s); writing the model without a processor", llava_folder, e)
        return output
    vc = model.config.vision_config
    source = _image_processor_config(llava_folder)
    if mode is None:
        mode = "pad" if source.get("do_pad") else "crop"
    norm = {k: source[k] for k in ("image_mean", "image_std") if isinstance(source.get(k), list) and len(source[k]) == 3}
    image_processor = AlphaCLIPImageProcessor(size=vc.image_size, mode=mode, **norm)
    chat_template = getattr(tokenizer, "chat_template", None)
    processor = AlphaLlavaProcessor(image_processor, tokenizer, patch_size=vc.patch_size,
                                    vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                                    chat_template=chat_template)
    processor.save_pretrained(output)
    logger.info("wrote %s", output)
    return output


def _image_processor_config(folder: Path) -> dict:
    """The LLaVA folder's image processor settings (``preprocessor_config.json`` or the ``image_processor``
    entry of ``processor_config.json``), or {}."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as e:
                raise ValueError(f"llava_folder: {path} is not valid JSON: {e}") from None
            data = data.get(key, {}) if key else data
            if isinstance(data, dict) and data:
                return data
    return {}


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m alphaclip_integrations.llava convert ...``"""
    p = argparse.ArgumentParser(prog="python -m alphaclip_integrations.llava convert",
                                description="transformers llava-1.5 folder + Alpha-CLIP checkpoint -> alpha LLaVA folder")
    p.add_argument("llava_folder", help="transformers LLaVA folder (config.json + weights [+ tokenizer])")
    p.add_argument("checkpoint", help="Alpha-CLIP weights: reference .pth, whole Alpha-CLIP, or plain CLIP")
    p.add_argument("--base", default=None, help="plain CLIP loaded first (optional)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--mode", default=None, choices=("crop", "pad", "squash"),
                   help="image+alpha geometry (default: pad if the LLaVA image processor pads, else crop)")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = convert_llava(args.llava_folder, args.checkpoint, args.output, args.base, mode=args.mode,
                        dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(out)
    return 0
