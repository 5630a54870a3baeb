"""A transformers ``llava-1.5`` folder + an Alpha-CLIP checkpoint -> an alpha LLaVA folder.

Only the vision tower changes: its weights (alpha conv included) come from the Alpha-CLIP
checkpoint; the projector, the language model, the LM head and the tokenizer are the LLaVA
folder's, unchanged. The Alpha-CLIP tower must have the LLaVA tower's architecture
(LLaVA-1.5: ViT-L/14@336, i.e. ``clip_l14@336_grit1m_fultune_8xe.pth`` or
``clip_l14_336_grit_20m_4xe.pth``). This is the paper's swap (SPEC: pretrain the projector with
plain CLIP, then swap in Alpha-CLIP and fine-tune the LLM); fine-tune the converted model before
relying on its region answers. With a plain CLIP as the checkpoint (zero alpha conv) and the LLaVA
tower's own weights, the result computes exactly what the LLaVA folder computes.

LLaVA variants whose tower is SigLIP (``siglip_vision_model``) get an Alpha-SigLIP tower the same way:
from an open_clip Alpha-SigLIP checkpoint (``alpha-ViT-SO400M-14-SigLIP-384`` trained with alpha-clip),
or, with no checkpoint (:func:`alpha_llava_from_llava`), their own tower and a zero alpha conv.

Command line::

    python -m alphaclip_integrations.llava convert LLAVA_FOLDER CHECKPOINT [--base BASE] -o OUT [--mode pad]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, List, Optional, Union

import torch
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

from alphaclip_core.checkpoints import TIMM_PATCH_KEY, CheckpointError, detect_format, read_state_dict, vision_arch
from alphaclip_integrations.hf import (AlphaCLIPImageProcessor, AlphaCLIPVisionConfig, AlphaCLIPVisionModel,
                                      AlphaSiglipVisionConfig, AlphaSiglipVisionModel, siglip_vision_model_from_state_dict,
                                      vision_model_from_state_dict)

from ..cards import Provenance, card_provenance, model_card, tower_from_hf_config, write_model_card
from .modeling_alpha_llava import AlphaLlavaConfig, AlphaLlavaForConditionalGeneration
from .processing_alpha_llava import AlphaLlavaProcessor
from .weights import read_visual

__all__ = ["alpha_llava_config", "alpha_llava_from_llava", "convert_llava", "main"]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


def alpha_llava_config(config: LlavaConfig) -> AlphaLlavaConfig:
    """The :class:`AlphaLlavaConfig` of a LLaVA config: the same fields, the vision config as an
    ``AlphaCLIPVisionConfig`` (a CLIP tower) or an ``AlphaSiglipVisionConfig`` (a SigLIP tower)."""
    if not isinstance(config, LlavaConfig):
        raise TypeError(f"config: expected a LlavaConfig, got {type(config).__name__}")
    d = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        d.pop(key, None)
    vision = dict(d["vision_config"])
    vision_type = vision.get("model_type")
    if vision_type in _SIGLIP_TYPES:
        cls = AlphaSiglipVisionConfig
    elif vision_type in (None, "clip_vision_model", AlphaCLIPVisionConfig.model_type):
        cls = AlphaCLIPVisionConfig
    else:
        raise ValueError(f"config: the LLaVA vision tower is {vision_type!r}; an alpha LLaVA supports CLIP and SigLIP "
                         "towers")
    vision.pop("model_type", None)
    if vision.get("architectures"):
        vision.pop("architectures")
    d["vision_config"] = cls(**vision)
    return AlphaLlavaConfig(**d)


_SIGLIP_TYPES = ("siglip_vision_model", AlphaSiglipVisionConfig.model_type)


def _check_fits(checkpoint: PathLike, want: Any, got: dict) -> None:
    diff = [f"{f}: LLaVA {getattr(want, f)!r} vs checkpoint {v!r}" for f, v in got.items() if getattr(want, f) != v]
    if diff:
        raise CheckpointError(f"checkpoint: {checkpoint} does not fit the LLaVA vision tower ({'; '.join(diff)})")


def _clip_tower(checkpoint: PathLike, base: Optional[PathLike], want: AlphaCLIPVisionConfig) -> torch.nn.Module:
    sd = read_visual(checkpoint, base)
    arch = vision_arch(sd)
    _check_fits(checkpoint, want, {
        "hidden_size": arch.width, "patch_size": arch.patch_size, "num_hidden_layers": arch.layers,
        "image_size": arch.image_size, "intermediate_size": int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])})
    # the LLaVA config supplies what the weights do not store: head count, activation, layer-norm eps
    return vision_model_from_state_dict(sd, want)


def _siglip_tower(checkpoint: PathLike, base: Optional[PathLike], want: AlphaSiglipVisionConfig) -> torch.nn.Module:
    if base is not None:
        raise ValueError("base: not used for a SigLIP tower (the open_clip checkpoint holds the whole tower)")
    sd = read_state_dict(checkpoint, "checkpoint")
    if TIMM_PATCH_KEY not in sd:
        raise CheckpointError(f"checkpoint: {checkpoint} holds no open_clip SigLIP vision tower (no {TIMM_PATCH_KEY}; "
                              f"format '{detect_format(sd)}'); expected an Alpha-SigLIP written by alpha-clip's "
                              "training or alphaclip convert, or a plain open_clip SigLIP")
    proj, pos, fc1 = sd[TIMM_PATCH_KEY], sd.get("visual.trunk.pos_embed"), sd.get("visual.trunk.blocks.0.mlp.fc1.weight")
    if pos is None:
        raise CheckpointError(f"checkpoint: {checkpoint} has no visual.trunk.pos_embed (a SigLIP tower has one)")
    blocks = {k.split(".")[3] for k in sd if k.startswith("visual.trunk.blocks.")}
    _check_fits(checkpoint, want, {
        "hidden_size": int(proj.shape[0]), "patch_size": int(proj.shape[-1]), "num_hidden_layers": len(blocks),
        "image_size": round(pos.shape[-2] ** 0.5) * int(proj.shape[-1]),
        "intermediate_size": int(fc1.shape[0]) if fc1 is not None else "no plain MLP (blocks.0.mlp.fc1)"})
    return siglip_vision_model_from_state_dict(sd, want)


def _own_tower(old: torch.nn.Module, want: Any) -> torch.nn.Module:
    """The alpha version of LLaVA's own tower: its weights and a zero alpha conv."""
    tower = (AlphaSiglipVisionModel if isinstance(want, AlphaSiglipVisionConfig) else AlphaCLIPVisionModel)(want)
    sd = {k: v.detach() for k, v in old.state_dict().items()}
    sd["embeddings.patch_embedding_alpha.weight"] = torch.zeros_like(tower.embeddings.patch_embedding_alpha.weight)
    tower.load_state_dict(sd, strict=True)
    return tower.eval()


def alpha_llava_from_llava(llava: LlavaForConditionalGeneration, checkpoint: Optional[PathLike] = None,
                           base: Optional[PathLike] = None) -> AlphaLlavaForConditionalGeneration:
    """An alpha LLaVA sharing ``llava``'s projector, language model and LM head (no copy), with an alpha
    vision tower of the same architecture as ``llava``'s (CLIP or SigLIP).

    Args:
        llava: a transformers ``LlavaForConditionalGeneration`` with a CLIP ViT tower (LLaVA-1.5) or a SigLIP
            tower (``siglip_vision_model``, e.g. LLaVA variants built on SigLIP-SO400M).
        checkpoint: the tower's weights. None: ``llava``'s own tower with a zero alpha conv (the model then
            computes exactly what ``llava`` computes: the start of fine-tuning). For a CLIP tower: an
            Alpha-CLIP (see :func:`~alphaclip_integrations.llava.weights.read_visual`: a reference ``.pth``, a
            whole Alpha-CLIP, or a plain CLIP for a zero alpha conv). For a SigLIP tower: an open_clip
            Alpha-SigLIP file (``visual.trunk.*``, as training and ``alphaclip convert`` write it); its
            attention-pooling head is dropped when the LLaVA tower has none.
        base: CLIP only, see ``read_visual``. The head count, activation and layer-norm eps come from
            ``llava``'s vision config.
    Returns:
        the model in eval mode; the new tower has the dtype of ``llava``'s tower.
    Raises:
        CheckpointError: the checkpoint's tower has another architecture than ``llava``'s.
    """
    config = alpha_llava_config(llava.config)
    want = config.vision_config
    old = llava.model.vision_tower
    if checkpoint is None:
        if base is not None:
            raise ValueError("base: given without a checkpoint")
        tower = _own_tower(old, want)
    elif isinstance(want, AlphaSiglipVisionConfig):
        tower = _siglip_tower(checkpoint, base, want)
    else:
        tower = _clip_tower(checkpoint, base, want)
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
                  *, mode: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                  card: Union[bool, Provenance] = True, overwrite_card: bool = False) -> Path:
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
        card: write a model card (``README.md``) naming ``checkpoint``, ``base`` and ``llava_folder`` (``True``),
            one with a :class:`~alphaclip_integrations.cards.Provenance` you give (e.g. with ``base_model``,
            the hub id of the LLaVA), or none (``False``).
        overwrite_card: replace a ``README.md`` already in ``output`` (default: keep it).
    Returns:
        ``output`` as a Path.
    """
    llava_folder, output = Path(llava_folder), Path(output)
    if not (llava_folder / "config.json").is_file():
        raise FileNotFoundError(f"llava_folder: {llava_folder} has no config.json (expected a transformers LLaVA folder)")
    provenance = card_provenance(card)
    if provenance is not None and provenance.checkpoint is None and provenance.llava is None:
        provenance = dataclasses.replace(provenance, checkpoint=checkpoint, base=base, llava=llava_folder)
    llava = LlavaForConditionalGeneration.from_pretrained(llava_folder, dtype=dtype if dtype is not None else "auto")
    model = alpha_llava_from_llava(llava, checkpoint, base)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    try:
        tokenizer = AutoTokenizer.from_pretrained(llava_folder)
    except (OSError, ValueError) as e:
        logger.warning("%s has no loadable tokenizer (%s); writing the model without a processor", llava_folder, e)
        _write_card(model, output, provenance, False, overwrite_card)
        return output
    vc = model.config.vision_config
    siglip = isinstance(vc, AlphaSiglipVisionConfig)
    source = _image_processor_config(llava_folder)
    if mode is None:  # SigLIP's image processors resize without keeping the aspect ratio
        mode = "pad" if source.get("do_pad") else ("squash" if siglip else "crop")
    norm = {k: source[k] for k in ("image_mean", "image_std") if isinstance(source.get(k), list) and len(source[k]) == 3}
    image_processor = AlphaCLIPImageProcessor(size=vc.image_size, mode=mode, **norm)
    chat_template = getattr(tokenizer, "chat_template", None)
    processor = AlphaLlavaProcessor(image_processor, tokenizer, patch_size=vc.patch_size,
                                    vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                                    chat_template=chat_template,
                                    num_additional_image_tokens=0 if siglip else 1)  # SigLIP: no CLS token
    processor.save_pretrained(output)
    _write_card(model, output, provenance, True, overwrite_card)
    logger.info("wrote %s", output)
    return output


def _write_card(model: AlphaLlavaForConditionalGeneration, output: Path, provenance: Optional[Provenance],
                text_processor: bool, overwrite: bool) -> None:
    if provenance is None:
        return
    vc = model.config.vision_config
    family = "SigLIP" if isinstance(vc, AlphaSiglipVisionConfig) else "CLIP"
    write_model_card(output, model_card("llava", tower_from_hf_config(vc, family), provenance, folder=output.name,
                                        text_processor=text_processor), overwrite=overwrite)


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


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m alphaclip_integrations.llava convert`` (also read by the CLI reference, docs/cli.md)."""
    p = argparse.ArgumentParser(prog="python -m alphaclip_integrations.llava convert",
                                description="transformers llava-1.5 folder + Alpha-CLIP checkpoint -> alpha LLaVA folder")
    p.add_argument("llava_folder", help="transformers LLaVA folder (config.json + weights [+ tokenizer])")
    p.add_argument("checkpoint", help="Alpha-CLIP weights: reference .pth, whole Alpha-CLIP, or plain CLIP")
    p.add_argument("--base", default=None, help="plain CLIP loaded first (optional)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--mode", default=None, choices=("crop", "pad", "squash"),
                   help="image+alpha geometry (default: pad if the LLaVA image processor pads, else crop)")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    p.add_argument("--card", default="write", choices=("write", "overwrite", "none"),
                   help="model card README.md: write (keeps an existing one), overwrite, none")
    p.add_argument("--base-model", action="append", default=None,
                   help="hub id of the LLaVA (and CLIP) the folder derives from, for the card's base_model (repeatable)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m alphaclip_integrations.llava convert ...``"""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    card = False if args.card == "none" else Provenance(args.checkpoint, args.base, llava=args.llava_folder,
                                                         base_model=args.base_model)
    out = convert_llava(args.llava_folder, args.checkpoint, args.output, args.base, mode=args.mode,
                        dtype=getattr(torch, args.dtype) if args.dtype else None, card=card,
                        overwrite_card=args.card == "overwrite")
    print(out)
    return 0
