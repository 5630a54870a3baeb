"""open_clip Alpha-CLIP <-> transformers Alpha-CLIP: the ONE key map, configs, and folder conversion.

Key map (open_clip / OpenAI names -> transformers ``AlphaCLIPModel`` names)::

    visual.conv1.weight                      vision_model.embeddings.patch_embedding.weight
    visual.conv1_alpha.weight                vision_model.embeddings.patch_embedding_alpha.weight
    visual.class_embedding                   vision_model.embeddings.class_embedding
    visual.positional_embedding              vision_model.embeddings.position_embedding.weight
    visual.ln_pre.*                          vision_model.pre_layrnorm.*
    visual.transformer.resblocks.{i}.ln_1.*  vision_model.encoder.layers.{i}.layer_norm1.*
      .attn.in_proj_{weight,bias} [3D,...]   .self_attn.{q,k,v}_proj.{weight,bias} (split in 3 along dim 0)
      .attn.out_proj.*                       .self_attn.out_proj.*
      .ln_2.*                                .layer_norm2.*
      .mlp.c_fc.* / .mlp.c_proj.*            .mlp.fc1.* / .mlp.fc2.*
    visual.ln_post.*                         vision_model.post_layernorm.*
    visual.proj [width, embed]               visual_projection.weight [embed, width] (transposed)
    token_embedding.weight                   text_model.embeddings.token_embedding.weight
    positional_embedding                     text_model.embeddings.position_embedding.weight
    transformer.resblocks.{i}.*              text_model.encoder.layers.{i}.* (as above)
    ln_final.*                               text_model.final_layer_norm.*
    text_projection [width, embed]           text_projection.weight [embed, width] (transposed)
    logit_scale                              logit_scale

Reference-release files (visual only, ``attn.in_proj.weight``) go through
:func:`alphaclip_core.checkpoints.reference_to_open_clip` first.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer

from alphaclip_core.checkpoints import CheckpointError, detect_format, reference_to_open_clip
from alphaclip_core.model import AlphaCLIP, AlphaVisionTransformer

from ..cards import Provenance, card_provenance, model_card, tower_from_hf_config, write_model_card
from .configuration_alpha_clip import AlphaCLIPConfig, AlphaCLIPTextConfig, AlphaCLIPVisionConfig
from .modeling_alpha_clip import AlphaCLIPModel, AlphaCLIPVisionModel

__all__ = [
    "open_clip_to_hf_state_dict", "hf_to_open_clip_state_dict", "vision_config_from_open_clip",
    "config_from_open_clip", "open_clip_config_from_hf", "vision_model_from_open_clip",
    "vision_model_from_state_dict", "model_from_open_clip",
    "model_to_open_clip", "save_hf", "load_open_clip_from_hf",
]

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

# per-block renames, open_clip -> HF (the fused qkv is handled separately)
_BLOCK = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
          ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")]
_VISUAL = {"conv1.weight": "embeddings.patch_embedding.weight",
           "conv1_alpha.weight": "embeddings.patch_embedding_alpha.weight",
           "class_embedding": "embeddings.class_embedding",
           "positional_embedding": "embeddings.position_embedding.weight",
           "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
           "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias"}
_TEXT = {"token_embedding.weight": "embeddings.token_embedding.weight",
         "positional_embedding": "embeddings.position_embedding.weight",
         "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
_HF_BLOCK_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Layout:
    """How an open_clip tower names its transformer blocks: ``blocks.{i}.`` prefix, the fused q/k/v
    projection (``{}`` = ``weight`` / ``bias``) and the per-block renames to transformers' names."""

    blocks: str
    fused: str
    renames: Tuple[Tuple[str, str], ...]

    def block(self, key: str):
        m = re.match(rf"^{re.escape(self.blocks)}\.(\d+)\.(.+)$", key)
        return m.groups() if m else None


#: open_clip's own Transformer (CLIP's vision and text towers, open_clip's SigLIP text tower)
OPEN_CLIP_LAYOUT = Layout("transformer.resblocks", "attn.in_proj_{}", tuple(_BLOCK))


def _tower_to_hf(sd: Mapping[str, torch.Tensor], names: Mapping[str, str], tower: str,
                 layout: Layout = OPEN_CLIP_LAYOUT) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    fused = {layout.fused.format(kind): kind for kind in ("weight", "bias")}
    for key, value in sd.items():
        if key in names:
            out[names[key]] = value
            continue
        m = layout.block(key)
        if not m:
            raise CheckpointError(f"{tower}: no transformers name for open_clip key {key!r}")
        i, rest = m
        prefix = f"encoder.layers.{i}."
        if rest in fused:
            if value.shape[0] % 3:
                raise CheckpointError(f"{tower}: {key} has {value.shape[0]} rows, not a fused q/k/v (multiple of 3)")
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{name}_proj.{fused[rest]}"] = part
            continue
        for old, new in layout.renames:
            if rest.startswith(old):
                out[prefix + new + rest[len(old):]] = value
                break
        else:
            raise CheckpointError(f"{tower}: no transformers name for open_clip key {key!r}")
    return out


def _tower_from_hf(sd: Mapping[str, torch.Tensor], names: Mapping[str, str], tower: str,
                   layout: Layout = OPEN_CLIP_LAYOUT) -> Dict[str, torch.Tensor]:
    inverse = {v: k for k, v in names.items()}
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[tuple, Dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in inverse:
            out[inverse[key]] = value
            continue
        m = _HF_BLOCK_RE.match(key)
        if not m:
            raise CheckpointError(f"{tower}: no open_clip name for transformers key {key!r}")
        i, rest = m.groups()
        prefix = f"{layout.blocks}.{i}."
        qm = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if qm:
            qkv.setdefault((prefix, qm.group(2)), {})[qm.group(1)] = value
            continue
        for old, new in layout.renames:
            if rest.startswith(new):
                out[prefix + old + rest[len(new):]] = value
                break
        else:
            raise CheckpointError(f"{tower}: no open_clip name for transformers key {key!r}")
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{tower}: {prefix} has {sorted(parts)} projections ({kind}); need q, k and v")
        out[prefix + layout.fused.format(kind)] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def open_clip_to_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """open_clip (Alpha-)CLIP keys -> ``AlphaCLIPModel`` keys (see the module docstring).

    Accepts a whole model (``visual.*`` + text keys) or a vision tower alone (``visual.*`` only);
    keys outside the towers (``attn_mask``, ``logit_bias``) raise :class:`CheckpointError`.
    """
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    text = {k: v for k, v in sd.items() if not k.startswith("visual.") and k not in ("text_projection", "logit_scale")}
    if not visual:
        raise CheckpointError("state dict has no visual.* keys: not an open_clip CLIP")
    proj = visual.pop("proj", None)
    out = {f"vision_model.{k}": v for k, v in _tower_to_hf(visual, _VISUAL, "vision tower").items()}
    if proj is not None:
        out["visual_projection.weight"] = proj.t().contiguous()
    if text:
        out.update({f"text_model.{k}": v for k, v in _tower_to_hf(text, _TEXT, "text tower").items()})
    if "text_projection" in sd:
        tp = sd["text_projection"]
        out["text_projection.weight"] = tp.t().contiguous() if tp.dim() == 2 else tp
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"].reshape(())
    return out


def hf_to_open_clip_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``AlphaCLIPModel`` (or ``CLIPModel``) keys -> open_clip keys; the inverse of :func:`open_clip_to_hf_state_dict`."""
    vision = {k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.")}
    text = {k[len("text_model."):]: v for k, v in sd.items() if k.startswith("text_model.")}
    out = {f"visual.{k}": v for k, v in _tower_from_hf(vision, _VISUAL, "vision tower").items()}
    if "visual_projection.weight" in sd:
        out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    out.update(_tower_from_hf(text, _TEXT, "text tower"))
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"].reshape(())
    return out


# ------------------------------------------------------------------------------------------------ configs
def _act(quick_gelu: bool) -> str:
    return "quick_gelu" if quick_gelu else "gelu"


def _uses_quick_gelu(blocks) -> bool:
    from open_clip.transformer import QuickGELU
    return isinstance(blocks[0].mlp.gelu, QuickGELU)


def _check_plain_vit(visual: VisionTransformer) -> None:
    """Refuse open_clip ViT options that transformers' CLIP cannot express."""
    problems = []
    if getattr(visual, "attn_pool", None) is not None:
        problems.append("attentional pooling")
    if getattr(visual, "pool_type", "tok") != "tok":
        problems.append(f"pool_type={visual.pool_type!r} (CLIP uses the class token)")
    if getattr(visual, "final_ln_after_pool", False):
        problems.append("final_ln_after_pool")
    if not isinstance(visual.ln_pre, torch.nn.LayerNorm):
        problems.append("no ln_pre")
    if visual.proj is None:
        problems.append("no output projection")
    blk = visual.transformer.resblocks[0]
    if not isinstance(getattr(blk, "ln_attn", torch.nn.Identity()), torch.nn.Identity) or not isinstance(
            getattr(blk, "ls_1", torch.nn.Identity()), torch.nn.Identity):
        problems.append("scaled-cosine / layer-scale blocks")
    if problems:
        raise ValueError(f"model: this open_clip vision tower uses {', '.join(problems)}, which transformers' "
                         "CLIP cannot represent")


def vision_config_from_open_clip(visual: VisionTransformer, projection_dim: Optional[int] = None
                                 ) -> AlphaCLIPVisionConfig:
    """The :class:`AlphaCLIPVisionConfig` of an open_clip ViT tower (alpha or plain)."""
    _check_plain_vit(visual)
    blocks = visual.transformer.resblocks
    image_size, patch_size = visual.image_size, visual.patch_size
    if image_size[0] != image_size[1] or patch_size[0] != patch_size[1]:
        raise ValueError(f"model: non-square image {image_size} / patch {patch_size} sizes are not supported")
    width = visual.conv1.out_channels
    return AlphaCLIPVisionConfig(
        hidden_size=width,
        intermediate_size=blocks[0].mlp.c_fc.out_features,
        projection_dim=projection_dim if projection_dim is not None else visual.proj.shape[1],
        num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads,
        image_size=int(image_size[0]),
        patch_size=int(patch_size[0]),
        hidden_act=_act(_uses_quick_gelu(blocks)),
        layer_norm_eps=float(visual.ln_pre.eps),
    )


def config_from_open_clip(model: CLIP) -> AlphaCLIPConfig:
    """The :class:`AlphaCLIPConfig` of an open_clip CLIP / AlphaCLIP (ViT vision tower, standard text tower)."""
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        raise ValueError(f"model: text_pool_type={model.text_pool_type!r}; transformers' CLIP pools the end token")
    blocks = model.transformer.resblocks
    embed_dim = model.text_projection.shape[1]
    vision = vision_config_from_open_clip(model.visual, embed_dim)
    text = AlphaCLIPTextConfig(
        vocab_size=model.vocab_size,
        hidden_size=model.token_embedding.embedding_dim,
        intermediate_size=blocks[0].mlp.c_fc.out_features,
        projection_dim=embed_dim,
        num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads,
        max_position_embeddings=model.context_length,
        hidden_act=_act(_uses_quick_gelu(blocks)),
        layer_norm_eps=float(model.ln_final.eps),
    )
    return AlphaCLIPConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=embed_dim,
                           logit_scale_init_value=float(model.logit_scale.detach().reshape(())))


def open_clip_config_from_hf(config: AlphaCLIPConfig) -> dict:
    """The open_clip model config (``AlphaCLIP(**cfg)``) of an :class:`AlphaCLIPConfig`."""
    v, t = config.vision_config, config.text_config
    acts = {v.hidden_act, t.hidden_act}
    if not acts <= {"quick_gelu", "gelu"} or len(acts) != 1:
        raise ValueError(f"config: hidden_act {v.hidden_act!r} (vision) / {t.hidden_act!r} (text); open_clip needs "
                         "both 'quick_gelu' or both 'gelu'")
    return dict(
        embed_dim=config.projection_dim,
        quick_gelu=v.hidden_act == "quick_gelu",
        vision_cfg=dict(image_size=v.image_size, patch_size=v.patch_size, width=v.hidden_size,
                        layers=v.num_hidden_layers, head_width=v.hidden_size // v.num_attention_heads,
                        mlp_ratio=v.intermediate_size / v.hidden_size),
        text_cfg=dict(context_length=t.max_position_embeddings, vocab_size=t.vocab_size, width=t.hidden_size,
                      heads=t.num_attention_heads, layers=t.num_hidden_layers,
                      mlp_ratio=t.intermediate_size / t.hidden_size),
    )


# ------------------------------------------------------------------------------------------------ models
def _load_checked(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: file {list(sd[k].shape)} vs model {list(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{source} does not fit the transformers model: shape mismatch {mismatched[:3]}, "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(dict(sd), strict=True)


def vision_model_from_open_clip(model: Union[CLIP, VisionTransformer], *, dtype: Optional[torch.dtype] = None
                                ) -> AlphaCLIPVisionModel:
    """An :class:`AlphaCLIPVisionModel` (no projection) with the weights of an open_clip vision tower.

    Args:
        model: an open_clip ``AlphaCLIP`` / ``CLIP`` or its ``.visual`` tower (a plain tower gets a zero
            alpha conv, i.e. it computes plain CLIP).
        dtype: cast the result (default: keep float32 weights as they are).
    Returns:
        the model in eval mode, on the CPU.
    """
    visual = model.visual if isinstance(model, CLIP) else model
    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"model: expected an open_clip CLIP or VisionTransformer, got {type(model).__name__}")
    config = vision_config_from_open_clip(visual)
    sd = {f"visual.{k}": v.detach().cpu() for k, v in visual.state_dict().items() if k != "proj"}
    hf_sd = {k[len("vision_model."):]: v for k, v in open_clip_to_hf_state_dict(sd).items()}
    hf = AlphaCLIPVisionModel(config).eval()
    if not isinstance(visual, AlphaVisionTransformer):
        hf_sd["embeddings.patch_embedding_alpha.weight"] = torch.zeros_like(hf.embeddings.patch_embedding_alpha.weight)
    _load_checked(hf, hf_sd, "open_clip vision tower")
    return hf.to(dtype) if dtype is not None else hf


def vision_model_from_state_dict(sd: Mapping[str, torch.Tensor], config: AlphaCLIPVisionConfig
                                 ) -> AlphaCLIPVisionModel:
    """An :class:`AlphaCLIPVisionModel` from a vision tower's weights without building open_clip.

    Args:
        sd: the reference release's visual-only state dict (``conv1_alpha.weight``, ``attn.in_proj.weight``,
            as :func:`alphaclip_core.read_state_dict` returns it) or open_clip keys (``visual.*``; a whole
            model's text keys are ignored). A plain CLIP tower (no alpha conv) gets a zero alpha conv.
        config: the tower's shape (head count and activation are not stored in the weights).
    """
    fmt = detect_format(sd)
    if fmt == "alpha-reference":
        sd = reference_to_open_clip(sd)
    elif fmt == "clip-visual":
        sd = {f"visual.{k}": v for k, v in sd.items()}
    elif fmt not in ("open_clip-alpha", "clip"):
        raise CheckpointError(f"sd: a state dict in format '{fmt}' is not an (Alpha-)CLIP vision tower")
    visual = {k: v for k, v in sd.items() if k.startswith("visual.") and k != "visual.proj"}
    hf_sd = {k[len("vision_model."):]: v for k, v in open_clip_to_hf_state_dict(visual).items()}
    hf = AlphaCLIPVisionModel(config).eval()
    hf_sd.setdefault("embeddings.patch_embedding_alpha.weight",
                     torch.zeros_like(hf.embeddings.patch_embedding_alpha.weight))
    _load_checked(hf, hf_sd, "state dict")
    return hf


def model_from_open_clip(model: CLIP) -> AlphaCLIPModel:
    """An :class:`AlphaCLIPModel` with the weights of an open_clip ``AlphaCLIP`` (or plain ``CLIP``:
    zero alpha conv). The result is in eval mode, on the CPU, float32 if the source is."""
    if not isinstance(model, CLIP):
        raise TypeError(f"model: expected an open_clip CLIP / AlphaCLIP, got {type(model).__name__}")
    config = config_from_open_clip(model)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in ("attn_mask", "logit_bias")}
    hf_sd = open_clip_to_hf_state_dict(sd)
    hf = AlphaCLIPModel(config).eval()
    if "vision_model.embeddings.patch_embedding_alpha.weight" not in hf_sd:
        hf_sd["vision_model.embeddings.patch_embedding_alpha.weight"] = torch.zeros_like(
            hf.vision_model.embeddings.patch_embedding_alpha.weight)
    _load_checked(hf, hf_sd, "open_clip model")
    return hf


def model_to_open_clip(model: AlphaCLIPModel) -> AlphaCLIP:
    """The open_clip :class:`~alphaclip_core.model.AlphaCLIP` with the weights of an :class:`AlphaCLIPModel`."""
    cfg = open_clip_config_from_hf(model.config)
    oc = AlphaCLIP(**cfg).eval()
    sd = hf_to_open_clip_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    own = oc.state_dict()
    missing = [k for k in own if k not in sd and k != "attn_mask"]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"transformers model does not fit open_clip: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    oc.load_state_dict(sd, strict=False)
    return oc


# ------------------------------------------------------------------------------------------------ folders
def save_hf(model: CLIP, folder: PathLike, *, processor: bool = True, mode: str = "crop",
            card: Union[bool, Provenance] = True, overwrite_card: bool = False) -> Path:
    """Write an open_clip (Alpha-)CLIP as a transformers folder: ``config.json``, ``model.safetensors``, the
    modeling code (for ``trust_remote_code``), with ``processor`` the ``AlphaCLIPProcessor`` files (image
    processor + CLIP tokenizer built from open_clip's BPE vocabulary), and a model card (``README.md``).

    ``mode`` is the paired transform's geometry stored in the image processor (crop/pad/squash). ``card``:
    ``True`` writes a card saying the weights' origin was not recorded, a
    :class:`~alphaclip_integrations.cards.Provenance` a card with it (``alphaclip convert`` passes the
    files it read), ``False`` none; a ``README.md`` already in ``folder`` is kept unless ``overwrite_card``.
    """
    provenance = card_provenance(card)
    folder = Path(folder)
    hf = model_from_open_clip(model)
    hf.save_pretrained(folder)
    if processor:
        from .processing_alpha_clip import AlphaCLIPProcessor
        AlphaCLIPProcessor.from_open_clip(model, mode=mode).save_pretrained(folder)
    if provenance is not None:
        tower = tower_from_hf_config(hf.config.vision_config, "CLIP", hf.config.projection_dim)
        write_model_card(folder, model_card("transformers", tower, provenance, folder=folder.name,
                                            text_processor=processor, mode=mode), overwrite=overwrite_card)
    logger.info("wrote transformers folder %s", folder)
    return folder


def load_open_clip_from_hf(folder: PathLike) -> AlphaCLIP:
    """Read a transformers Alpha-CLIP folder (written by :func:`save_hf` or ``save_pretrained``) back
    into an open_clip :class:`~alphaclip_core.model.AlphaCLIP` (eval mode, CPU); an Alpha-SigLIP folder
    (``model_type`` ``alpha_siglip``) into its open_clip model (see
    :func:`~alphaclip_integrations.hf.convert_siglip.siglip_model_to_open_clip`)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"source: {folder} has no config.json; not a transformers folder")
    if json.loads((folder / "config.json").read_text()).get("model_type") == "alpha_siglip":
        from .convert_siglip import siglip_model_to_open_clip
        from .modeling_alpha_siglip import AlphaSiglipModel
        return siglip_model_to_open_clip(AlphaSiglipModel.from_pretrained(str(folder)))
    hf = AlphaCLIPModel.from_pretrained(str(folder))
    return model_to_open_clip(hf)
