"""open_clip SigLIP (Alpha-SigLIP) <-> transformers Alpha-SigLIP: the ONE key map, configs, folder conversion.

open_clip builds SigLIP / SigLIP2 as a ``CustomTextCLIP``: a ``TimmModel`` vision tower (timm's
``VisionTransformer`` without class token, attention-pooling ``map`` head, ``timm_proj: none``) and
open_clip's ``TextTransformer`` (no causal mask, last-token pooling, a biased projection). The alpha
conv sits beside timm's patch embedding (see :class:`alphaclip_core.model.AlphaTimmModel`).

Key map (open_clip names -> transformers ``AlphaSiglipModel`` names)::

    visual.trunk.patch_embed.proj.{weight,bias}        vision_model.embeddings.patch_embedding.{weight,bias}
    visual.trunk.patch_embed.conv1_alpha.weight        vision_model.embeddings.patch_embedding_alpha.weight
    visual.trunk.pos_embed [1, N, D]                   vision_model.embeddings.position_embedding.weight [N, D]
    visual.trunk.blocks.{i}.norm1.* / norm2.*          vision_model.encoder.layers.{i}.layer_norm1.* / layer_norm2.*
      .attn.qkv.{weight,bias} [3D, ...]                .self_attn.{q,k,v}_proj.{weight,bias} (split in 3 along dim 0)
      .attn.proj.* / .mlp.fc1.* / .mlp.fc2.*           .self_attn.out_proj.* / .mlp.fc1.* / .mlp.fc2.*
    visual.trunk.norm.*                                vision_model.post_layernorm.*
    visual.trunk.attn_pool.latent [1, 1, D]            vision_model.head.probe
    visual.trunk.attn_pool.{q,kv}.{weight,bias}        vision_model.head.attention.in_proj_{weight,bias} (q; k, v)
    visual.trunk.attn_pool.proj.* / norm.* / mlp.*     vision_model.head.attention.out_proj.* / layernorm.* / mlp.*
    text.token_embedding.weight                        text_model.embeddings.token_embedding.weight
    text.positional_embedding                          text_model.embeddings.position_embedding.weight
    text.transformer.resblocks.{i}.*                   text_model.encoder.layers.{i}.* (as in Alpha-CLIP's map)
    text.ln_final.* / text.text_projection.*           text_model.final_layer_norm.* / text_model.head.*
    logit_scale, logit_bias (scalars)                  logit_scale, logit_bias ([1])

The activation of each tower is read off the modules (timm's SigLIP towers use exact GELU, open_clip's
SigLIP2 text tower tanh GELU), so the transformers model computes what the open_clip one computes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from alphaclip_core.checkpoints import CheckpointError
from alphaclip_core.model import AlphaCustomTextCLIP, AlphaModel, AlphaTimmModel, add_alpha

from ..cards import Provenance, card_provenance, model_card, tower_from_hf_config, write_model_card
from .configuration_alpha_siglip import AlphaSiglipConfig, AlphaSiglipTextConfig, AlphaSiglipVisionConfig
from .convert import Layout, _load_checked, _tower_from_hf, _tower_to_hf
from .modeling_alpha_siglip import AlphaSiglipModel, AlphaSiglipVisionModel

__all__ = ["is_siglip", "siglip_to_hf_state_dict", "hf_to_siglip_state_dict", "siglip_vision_config_from_open_clip",
           "siglip_config_from_open_clip", "siglip_model_from_open_clip", "siglip_vision_model_from_open_clip",
           "siglip_vision_model_from_state_dict", "siglip_model_to_open_clip", "save_siglip_hf"]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

_VISION = {"patch_embed.proj.weight": "embeddings.patch_embedding.weight",
           "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
           "patch_embed.conv1_alpha.weight": "embeddings.patch_embedding_alpha.weight",
           "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias",
           "attn_pool.latent": "head.probe",
           "attn_pool.proj.weight": "head.attention.out_proj.weight",
           "attn_pool.proj.bias": "head.attention.out_proj.bias",
           "attn_pool.norm.weight": "head.layernorm.weight", "attn_pool.norm.bias": "head.layernorm.bias",
           "attn_pool.mlp.fc1.weight": "head.mlp.fc1.weight", "attn_pool.mlp.fc1.bias": "head.mlp.fc1.bias",
           "attn_pool.mlp.fc2.weight": "head.mlp.fc2.weight", "attn_pool.mlp.fc2.bias": "head.mlp.fc2.bias"}
#: timm's ViT blocks
TIMM_LAYOUT = Layout("blocks", "attn.qkv.{}", (("norm1.", "layer_norm1."), ("norm2.", "layer_norm2."),
                                               ("attn.proj.", "self_attn.out_proj."), ("mlp.fc1.", "mlp.fc1."),
                                               ("mlp.fc2.", "mlp.fc2.")))
_TEXT = {"token_embedding.weight": "embeddings.token_embedding.weight",
         "positional_embedding": "embeddings.position_embedding.weight",
         "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias",
         "text_projection.weight": "head.weight", "text_projection.bias": "head.bias"}


def is_siglip(model: Any) -> bool:
    """True for an open_clip model (or config dict) whose vision tower is a timm SigLIP-style ViT (map pooling)."""
    if isinstance(model, Mapping):
        return model.get("vision_cfg", {}).get("timm_pool") == "map"
    visual = getattr(model, "visual", model)
    return hasattr(visual, "trunk") and getattr(visual.trunk, "attn_pool", None) is not None


# ------------------------------------------------------------------------------------------------ key maps
def _vision_to_hf(trunk: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    rest = {k: v for k, v in trunk.items() if k != "pos_embed" and not k.startswith(("attn_pool.q.", "attn_pool.kv."))}
    out = _tower_to_hf(rest, _VISION, "vision tower", TIMM_LAYOUT)
    if "pos_embed" in trunk:
        pos = trunk["pos_embed"]
        out["embeddings.position_embedding.weight"] = pos.reshape(pos.shape[-2], pos.shape[-1])
    for kind in ("weight", "bias"):  # the pooling head's q and fused kv -> one fused in_proj (q; k; v)
        q, kv = trunk.get(f"attn_pool.q.{kind}"), trunk.get(f"attn_pool.kv.{kind}")
        if q is not None and kv is not None:
            out[f"head.attention.in_proj_{kind}"] = torch.cat([q, kv], dim=0)
        elif q is not None or kv is not None:
            raise CheckpointError(f"vision tower: attn_pool has only one of q/kv ({kind})")
    return out


def _vision_from_hf(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    special = ("embeddings.position_embedding.weight", "head.attention.in_proj_weight", "head.attention.in_proj_bias")
    out = _tower_from_hf({k: v for k, v in sd.items() if k not in special}, _VISION, "vision tower", TIMM_LAYOUT)
    if "embeddings.position_embedding.weight" in sd:
        out["pos_embed"] = sd["embeddings.position_embedding.weight"].unsqueeze(0)
    for kind in ("weight", "bias"):
        fused = sd.get(f"head.attention.in_proj_{kind}")
        if fused is not None:
            d = fused.shape[0] // 3
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = fused[:d], fused[d:]
    return out


def siglip_to_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip SigLIP keys (``visual.trunk.*``, ``text.*``, ``logit_scale``, ``logit_bias``) ->
    ``AlphaSiglipModel`` keys (see the module docstring). A vision tower alone (``visual.trunk.*``) gives
    ``vision_model.*`` keys only."""
    trunk = {k[len("visual.trunk."):]: v for k, v in sd.items() if k.startswith("visual.trunk.")}
    if not trunk:
        raise CheckpointError("state dict has no visual.trunk.* keys: not an open_clip model with a timm tower")
    rest = [k for k in sd if not k.startswith(("visual.trunk.", "text.")) and k not in ("logit_scale", "logit_bias")]
    if rest:
        raise CheckpointError(f"state dict has keys outside a SigLIP model: {rest[:5]}")
    out = {f"vision_model.{k}": v for k, v in _vision_to_hf(trunk).items()}
    text = {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}
    if text:
        out.update({f"text_model.{k}": v
                    for k, v in _tower_to_hf(text, _TEXT, "text tower").items()})
    for key in ("logit_scale", "logit_bias"):
        if key in sd:
            out[key] = sd[key].reshape(1)
    return out


def hf_to_siglip_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``AlphaSiglipModel`` (or ``SiglipModel``) keys -> open_clip keys; the inverse of
    :func:`siglip_to_hf_state_dict` (scalars come back with shape ``[1]``: open_clip reshapes on load)."""
    vision = {k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.")}
    text = {k[len("text_model."):]: v for k, v in sd.items() if k.startswith("text_model.")}
    out = {f"visual.trunk.{k}": v for k, v in _vision_from_hf(vision).items()}
    out.update({f"text.{k}": v for k, v in _tower_from_hf(text, _TEXT, "text tower").items()})
    for key in ("logit_scale", "logit_bias"):
        if key in sd:
            out[key] = sd[key]
    return out


# ------------------------------------------------------------------------------------------------ configs
def _act(module: nn.Module) -> str:
    if type(module).__name__ == "QuickGELU":
        return "quick_gelu"
    approximate = getattr(module, "approximate", None)
    if type(module).__name__ == "GELUTanh" or approximate == "tanh":
        return "gelu_pytorch_tanh"
    if isinstance(module, nn.GELU) or type(module).__name__ == "GELU":
        return "gelu"
    raise ValueError(f"model: activation {type(module).__name__} has no transformers SigLIP equivalent")


def _is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def siglip_vision_config_from_open_clip(visual: nn.Module) -> AlphaSiglipVisionConfig:
    """The :class:`AlphaSiglipVisionConfig` of an open_clip timm SigLIP tower (``TimmModel`` / ``AlphaTimmModel``)."""
    trunk = getattr(visual, "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks"):
        raise TypeError(f"model: expected an open_clip TimmModel vision tower, got {type(visual).__name__}")
    problems = []
    if getattr(trunk, "num_prefix_tokens", 0):
        problems.append("class/register tokens")
    if getattr(trunk, "attn_pool", None) is None:
        problems.append("no attention-pooling (map) head")
    if len(getattr(visual, "head", ())):
        problems.append("an open_clip projection after the trunk (timm_proj)")
    for name in ("norm_pre", "fc_norm", "head"):
        if not _is_identity(getattr(trunk, name, None)):
            problems.append(f"trunk.{name}")
    blk = trunk.blocks[0]
    for name in ("ls1", "ls2"):
        if not _is_identity(getattr(blk, name, None)):
            problems.append("layer scale")
    attn = blk.attn
    if not (_is_identity(getattr(attn, "q_norm", None)) and _is_identity(getattr(attn, "k_norm", None))):
        problems.append("qk-norm")
    if getattr(attn, "qkv", None) is None or attn.qkv.bias is None:
        problems.append("attention without a fused, biased qkv")
    if not _is_identity(getattr(attn, "norm", None)):
        problems.append("attention inner norm")
    if problems:
        raise ValueError(f"model: this timm vision tower uses {', '.join(sorted(set(problems)))}, which transformers' "
                         "SigLIP cannot represent")
    pe = trunk.patch_embed
    size, patch = tuple(visual.image_size), tuple(pe.patch_size)
    if size[0] != size[1] or patch[0] != patch[1]:
        raise ValueError(f"model: non-square image {size} / patch {patch} sizes are not supported")
    return AlphaSiglipVisionConfig(
        hidden_size=pe.proj.out_channels, intermediate_size=blk.mlp.fc1.out_features,
        num_hidden_layers=len(trunk.blocks), num_attention_heads=attn.num_heads, image_size=int(size[0]),
        patch_size=int(patch[0]), hidden_act=_act(blk.mlp.act), layer_norm_eps=float(trunk.norm.eps),
        vision_use_head=True)


def _text_config(model: nn.Module) -> AlphaSiglipTextConfig:
    text = getattr(model, "text", None)
    if text is None or not hasattr(text, "transformer") or not hasattr(text, "token_embedding"):
        raise ValueError("model: expected open_clip's TextTransformer under model.text (a SigLIP CustomTextCLIP)")
    problems = []
    if getattr(text, "attn_mask", None) is not None:
        problems.append("a causal mask")
    if getattr(text, "pool_type", None) != "last":
        problems.append(f"pool_type={getattr(text, 'pool_type', None)!r}")
    if getattr(text, "final_ln_after_pool", False):
        problems.append("final_ln_after_pool")
    if not isinstance(getattr(text, "text_projection", None), nn.Linear) or text.text_projection.bias is None:
        problems.append("a text projection that is not a biased Linear")
    if getattr(text, "cls_emb", None) is not None:
        problems.append("a class embedding")
    if problems:
        raise ValueError(f"model: this open_clip text tower has {', '.join(problems)}; transformers' SigLIP text "
                         "tower has none of them")
    blk = text.transformer.resblocks[0]
    vocab, width = text.token_embedding.weight.shape
    # token ids only matter for generation; SigLIP's defaults (CLIP's 49406/49407) may lie outside the vocabulary
    ids = {k: None for k, v in (("bos_token_id", 49406), ("eos_token_id", 49407)) if v >= vocab}
    return AlphaSiglipTextConfig(
        vocab_size=int(vocab), hidden_size=int(width), intermediate_size=blk.mlp.c_fc.out_features,
        num_hidden_layers=len(text.transformer.resblocks), num_attention_heads=blk.attn.num_heads,
        max_position_embeddings=int(text.positional_embedding.shape[0]), hidden_act=_act(blk.mlp.gelu),
        layer_norm_eps=float(text.ln_final.eps), projection_size=text.text_projection.out_features, **ids)


def siglip_config_from_open_clip(model: nn.Module) -> AlphaSiglipConfig:
    """The :class:`AlphaSiglipConfig` of an open_clip SigLIP ``CustomTextCLIP`` (alpha or plain); it carries
    ``open_clip_cfg`` when the model knows its open_clip config (``model_cfg``)."""
    vision = siglip_vision_config_from_open_clip(model.visual)
    text = _text_config(model)
    extra = {}
    cfg = getattr(model, "model_cfg", None)
    if cfg is not None:
        extra["open_clip_cfg"] = cfg
    return AlphaSiglipConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), **extra)


# ------------------------------------------------------------------------------------------------ models
def _with_alpha(hf_sd: Dict[str, torch.Tensor], hf: nn.Module, key: str) -> Dict[str, torch.Tensor]:
    if key not in hf_sd:  # a plain tower: zero alpha conv, i.e. it computes plain SigLIP
        hf_sd[key] = torch.zeros_like(hf.get_parameter(key))
    return hf_sd


def siglip_vision_model_from_open_clip(model: nn.Module, *, dtype: Optional[torch.dtype] = None
                                       ) -> AlphaSiglipVisionModel:
    """An :class:`AlphaSiglipVisionModel` with the weights of an open_clip SigLIP vision tower (a model or
    its ``.visual``; a plain tower gets a zero alpha conv). Eval mode, CPU; ``dtype`` casts the result."""
    visual = getattr(model, "visual", model)
    config = siglip_vision_config_from_open_clip(visual)
    sd = {f"visual.{k}": v.detach().cpu() for k, v in visual.state_dict().items()}
    hf_sd = {k[len("vision_model."):]: v for k, v in siglip_to_hf_state_dict(sd).items()}
    hf = AlphaSiglipVisionModel(config).eval()
    _load_checked(hf, _with_alpha(hf_sd, hf, "embeddings.patch_embedding_alpha.weight"), "open_clip vision tower")
    return hf.to(dtype) if dtype is not None else hf


def siglip_vision_model_from_state_dict(sd: Mapping[str, torch.Tensor], config: AlphaSiglipVisionConfig
                                        ) -> AlphaSiglipVisionModel:
    """An :class:`AlphaSiglipVisionModel` of ``config`` from open_clip weights (``visual.trunk.*``; a whole
    model's other keys are ignored; no alpha conv = zero). Without a head in ``config``
    (``vision_use_head=False``, as LLaVA towers are) the file's ``attn_pool`` is dropped."""
    visual = {k: v for k, v in sd.items() if k.startswith("visual.trunk.")}
    hf_sd = {k[len("vision_model."):]: v for k, v in siglip_to_hf_state_dict(visual).items()}
    if not config.vision_use_head:
        hf_sd = {k: v for k, v in hf_sd.items() if not k.startswith("head.")}
    hf = AlphaSiglipVisionModel(config).eval()
    _load_checked(hf, _with_alpha(hf_sd, hf, "embeddings.patch_embedding_alpha.weight"), "state dict")
    return hf


def siglip_model_from_open_clip(model: nn.Module) -> AlphaSiglipModel:
    """An :class:`AlphaSiglipModel` with the weights of an open_clip SigLIP ``AlphaCustomTextCLIP`` (or a plain
    ``CustomTextCLIP``: zero alpha conv). The result is in eval mode, on the CPU, float32 if the source is."""
    config = siglip_config_from_open_clip(model)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if "logit_bias" not in sd:
        raise ValueError("model: has no logit_bias (not a SigLIP model); use model_from_open_clip for CLIP")
    hf = AlphaSiglipModel(config).eval()
    hf_sd = _with_alpha(siglip_to_hf_state_dict(sd), hf, "vision_model.embeddings.patch_embedding_alpha.weight")
    _load_checked(hf, hf_sd, "open_clip model")
    return hf


def siglip_model_to_open_clip(model: AlphaSiglipModel, open_clip_model: Optional[Union[str, nn.Module]] = None
                              ) -> AlphaModel:
    """The open_clip Alpha-SigLIP with the weights of an :class:`AlphaSiglipModel`.

    Args:
        model: the transformers model.
        open_clip_model: the open_clip architecture to load into: a model name (``alpha-ViT-B-16-SigLIP``,
            after ``import alphaclip_integrations.open_clip``) or a model; default: the ``open_clip_cfg``
            the config carries (every model converted from open_clip has it).
    Returns:
        the open_clip model (eval mode, CPU) with ``conv1_alpha`` from ``model``.
    """
    if isinstance(open_clip_model, nn.Module):
        oc = add_alpha(open_clip_model)
    elif isinstance(open_clip_model, str):
        import open_clip
        oc = add_alpha(open_clip.create_model(open_clip_model))
    else:
        cfg = getattr(model.config, "open_clip_cfg", None)
        if not cfg:
            raise ValueError("open_clip_model: the transformers config has no open_clip_cfg; name the open_clip "
                             "architecture (e.g. 'alpha-ViT-SO400M-14-SigLIP')")
        cfg = {k: v for k, v in cfg.items() if k not in ("custom_text", "alpha_clip")}
        oc = AlphaCustomTextCLIP(**cfg)
    if not isinstance(oc.visual, AlphaTimmModel):
        raise TypeError(f"open_clip_model: expected a model with a timm tower, got {type(oc.visual).__name__}")
    sd = hf_to_siglip_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    own = oc.state_dict()
    sd = {k: v.reshape(own[k].shape) if k in ("logit_scale", "logit_bias") and k in own else v for k, v in sd.items()}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(f"transformers model does not fit open_clip: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, shape mismatch {mismatched[:5]}")
    oc.load_state_dict(sd, strict=True)
    return oc.eval()


# ------------------------------------------------------------------------------------------------ folders
def save_siglip_hf(model: nn.Module, folder: PathLike, *, tokenizer: Any = None, mode: str = "crop",
                   card: Union[bool, Provenance] = True, overwrite_card: bool = False) -> Path:
    """Write an open_clip (Alpha-)SigLIP as a transformers folder: ``config.json``, ``model.safetensors``,
    the modeling code (for ``trust_remote_code``), the image processor, given a ``tokenizer`` (a
    transformers tokenizer, or open_clip's ``HFTokenizer`` of the model) an :class:`AlphaSiglipProcessor`,
    and a model card (``README.md``; ``card`` and ``overwrite_card`` as in
    :func:`~alphaclip_integrations.hf.convert.save_hf`).

    ``mode`` is the paired transform's geometry stored in the image processor (crop/pad/squash).
    """
    from .processing_alpha_siglip import AlphaSiglipImageProcessor, AlphaSiglipProcessor

    provenance = card_provenance(card)
    folder = Path(folder)
    hf = siglip_model_from_open_clip(model)
    hf.save_pretrained(folder)
    image_processor = AlphaSiglipImageProcessor.from_open_clip(model, mode=mode)
    if tokenizer is None:
        image_processor.save_pretrained(folder)
        logger.info("wrote transformers folder %s (no tokenizer given: image processor only)", folder)
    else:
        AlphaSiglipProcessor.from_open_clip(model, tokenizer, mode=mode).save_pretrained(folder)
        logger.info("wrote transformers folder %s", folder)
    if provenance is not None:
        vc = hf.config.vision_config
        write_model_card(folder, model_card("transformers-siglip", tower_from_hf_config(vc, "SigLIP", vc.hidden_size),
                                            provenance, folder=folder.name, text_processor=tokenizer is not None,
                                            mode=image_processor.mode), overwrite=overwrite_card)
    return folder
