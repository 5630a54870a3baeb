"""Test helpers for the evaluation tests: a tiny Alpha-CLIP whose answer is forced by construction.

The vision tower is wired by hand (all other weights zero):

- ``conv1`` copies each patch's mean (CLIP-normalised) R, G, B into channels 0-2; ``conv1_alpha`` puts
  the patch's mean alpha into channel 3; the positional embedding adds a +M / -M pair (channels 5, 6)
  so every LayerNorm acts as a near-constant scaling.
- Block 0, head 0: the query is a constant (bias) and the key reads channel 3, so every token attends
  to the patches with the highest alpha (softmax logits about +-25); the value carries the colour.
  The class token thus receives the mean colour of the alpha foreground; ``proj`` reads it out.
  Everything else is the identity.

So an image feature is the mean CLIP-normalised colour of the region the alpha selects, and the text
projection is solved (least squares, exact for <= 32 texts) so each text's feature is the colour
vector of the colour it names. A plain CLIP (``conv1_alpha`` zero, no alpha) sees all patches alike.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from alphaclip_core.model import AlphaCLIP
from conftest import TINY_CFG

COLORS: Dict[str, tuple] = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
                            "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255)}


def color_vec(name: str) -> np.ndarray:
    """The CLIP-normalised RGB of a pure colour: what the wired tower outputs for a region of it."""
    rgb = np.asarray(COLORS[name], dtype=np.float64) / 255.0
    return (rgb - np.asarray(OPENAI_DATASET_MEAN)) / np.asarray(OPENAI_DATASET_STD)


def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


@torch.no_grad()
def build_color_clip(texts: Dict[str, str], seed: int = 0) -> AlphaCLIP:
    """A tiny (32px, patch 8) Alpha-CLIP wired as the module docstring says.

    texts: exact text string -> colour name; after this, ``encode_text(text)`` is parallel to ``color_vec(colour)``.
    """
    torch.manual_seed(seed)
    model = AlphaCLIP(**TINY_CFG).eval()
    v = model.visual
    width, patch, big = v.conv1.out_channels, v.conv1.kernel_size[0], 100.0
    for p in v.parameters():
        p.zero_()
    for mod in v.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.weight.fill_(1.0)
    for k in range(3):
        v.conv1.weight[k, k] = 1.0 / patch ** 2
    v.conv1_alpha.weight[3, 0] = 1.0 / patch ** 2
    v.positional_embedding[:, 5] = big
    v.positional_embedding[:, 6] = -big
    attn = v.transformer.resblocks[0].attn
    attn.in_proj_bias[0] = 36.0                  # head 0 query: a constant
    attn.in_proj_weight[width, 3] = 36.0         # head 0 key: the alpha channel
    for k in range(3):
        attn.in_proj_weight[2 * width + k, k] = 1.0                       # value: the colour
        attn.out_proj.weight[10 + k, k] = big / (width / 2) ** 0.5         # undo the LayerNorm scale
        v.proj[10 + k, k] = 1.0
    tok = tokenizer()
    model.text_projection.copy_(torch.eye(*model.text_projection.shape))
    x = model.encode_text(tok(list(texts))).double()
    target = torch.zeros(len(texts), model.text_projection.shape[1], dtype=torch.float64)
    for i, c in enumerate(texts.values()):
        target[i, :3] = torch.from_numpy(color_vec(c))
    model.text_projection.copy_((torch.linalg.pinv(x) @ target).float())
    return model


def plain_copy(model: AlphaCLIP) -> AlphaCLIP:
    """The same model with ``conv1_alpha`` zero: exactly the plain CLIP (alpha has no effect)."""
    import copy

    plain = copy.deepcopy(model)
    with torch.no_grad():
        plain.visual.conv1_alpha.weight.zero_()
    return plain


def quadrants(tl: str, tr: str, bl: str, br: str, size: int = 64) -> np.ndarray:
    """An HxWx3 uint8 image of four coloured quadrants."""
    h = size // 2
    img = np.zeros((size, size, 3), np.uint8)
    img[:h, :h], img[:h, h:], img[h:, :h], img[h:, h:] = (COLORS[c] for c in (tl, tr, bl, br))
    return img


def tiny_sam():
    """A random Segment Anything model for 64 px inputs (1-block encoder, 32-dim prompts)."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    dim = 32
    return Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                      out_chans=dim, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      window_size=0, global_attn_indexes=()),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim,
                                 mlp_dim=64, num_heads=2), transformer_dim=dim, iou_head_depth=1,
                                 iou_head_hidden_dim=16),
    ).eval()
