"""Tiny members of each backbone family, built in-process (nothing downloaded).

- ``Toy-ViT-8``: open_clip's own ``VisionTransformer`` (as ViT-H-14, ViT-bigG-14, MetaCLIP, DFN...);
- ``Toy-EVA-8``: a timm EVA02-style ViT (RoPE, SwiGLU, scaled MLP, no fused qkv; as EVA02-*-CLIP)
  through open_clip's ``TimmModel``, class-token pooling, a linear projection;
- ``Toy-SL-8``: a timm SigLIP-style ViT (no class token, MAP attention pooling, no projection) with
  open_clip's SigLIP text tower (no causal mask, last-token pooling, biased projection) and a logit
  bias, as open_clip's ViT-*-SigLIP configs are.

Each is a model config of 32px images and 8px patches; :func:`register` adds them to open_clip (the
``alpha-`` names then resolve by the integration's rule) and the two timm trunks to timm's registry.
The names avoid "siglip" so that open_clip's tokenizer lookup stays the offline CLIP tokenizer.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip
import timm
from timm.models import register_model
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

SIGLIP_TRUNK = "alphaclip_test_siglip_tiny"
EVA_TRUNK = "alphaclip_test_eva02_tiny"
_TIMM_KW = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _clean(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in _TIMM_KW}


def alphaclip_test_siglip_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """timm's SigLIP ViT recipe (vit_*_siglip_*), tiny: 32px, patch 8, width 32, 2 blocks, 2 heads."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False, global_pool="map")
    return VisionTransformer(**dict(args, **_clean(kwargs)))


def alphaclip_test_eva02_tiny(pretrained: bool = False, **kwargs) -> Eva:
    """timm's EVA02-CLIP recipe (eva02_*_clip_*), tiny: 32px, patch 8, width 32, 2 blocks, 2 heads."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, qkv_fused=False, mlp_ratio=4 * 2 / 3,
                swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
                global_pool="token")
    return Eva(**dict(args, **_clean(kwargs)))


_TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
CONFIGS = {
    "Toy-ViT-8": dict(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
                      text_cfg=dict(_TEXT)),
    "Toy-EVA-8": dict(embed_dim=24, custom_text=True,
                      vision_cfg=dict(image_size=32, timm_model_name=EVA_TRUNK, timm_model_pretrained=False,
                                      timm_pool="token", timm_proj=None),
                      text_cfg=dict(_TEXT)),
    "Toy-SL-8": dict(embed_dim=32, init_logit_bias=-10, custom_text=True,
                     vision_cfg=dict(image_size=32, timm_model_name=SIGLIP_TRUNK, timm_model_pretrained=False,
                                     timm_pool="map", timm_proj="none"),
                     text_cfg=dict(_TEXT, no_causal_mask=True, proj_bias=True, pool_type="last",
                                   norm_kwargs={"eps": 1e-6}, act_kwargs={"approximate": "tanh"})),
}
#: family -> model name
FAMILIES = {"open_clip ViT": "Toy-ViT-8", "timm EVA02": "Toy-EVA-8", "timm SigLIP": "Toy-SL-8"}


def register(folder: Path) -> None:
    """Register the two timm trunks and write + add the three configs (idempotent)."""
    for fn in (alphaclip_test_siglip_tiny, alphaclip_test_eva02_tiny):
        if not timm.is_model(fn.__name__):
            register_model(fn)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def config(name: str) -> dict:
    return copy.deepcopy(CONFIGS[name])
