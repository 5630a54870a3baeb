"""Tiny diffusers image-variation pipelines built in-process (nothing downloaded), shared by the tests of
the diffusers integration and of the app's Variations panel.

The CLIP vision tower has conftest's ``TINY_CFG`` shape (32 px, 8 px patches, width 64, 2 blocks,
projection 32), so an Alpha-CLIP checkpoint of ``TINY_CFG`` converts into it; the UNet and VAE are the
smallest that run (latents 16x16, images 32x32). Importing this module imports diffusers.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImageVariationPipeline, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from alphaclip_core.model import AlphaCLIP
from alphaclip_integrations.diffusers import convert_pipeline

from conftest import TINY_CFG, randomize_alpha_conv, reference_state_dict

S = 32  # the encoders' input side, and the generated images' side
VISION = dict(hidden_size=64, intermediate_size=256, projection_dim=32, num_hidden_layers=2, num_attention_heads=2,
              image_size=S, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
FAST = dict(num_inference_steps=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster, and on a shared, loaded machine two threads
    spin-waiting on each other made test_diffusers.py ~10x slower (measured: 164 s vs 12 s).
    Import it into a test module to use it there (it is autouse)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quiet(pipe):
    """``pipe`` without diffusers' progress bar."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_vae():
    """A tiny random UNet (cross-attention width = the encoder's projection) and VAE, eval mode."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=VISION["projection_dim"], norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, layers_per_block=1, sample_size=S)
    return unet.eval(), vae.eval()


def clip_encoder(seed: int = 1) -> CLIPVisionModelWithProjection:
    """The stock pipeline's random CLIP image encoder (``VISION``)."""
    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)).eval()


def stock_pipeline(encoder: CLIPVisionModelWithProjection) -> StableDiffusionImageVariationPipeline:
    """A stock image-variation pipeline around ``encoder`` (no safety checker, no progress bar)."""
    unet, vae = unet_vae()
    return quiet(StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None, feature_extractor=CLIPImageProcessor(size=S, crop_size=S), requires_safety_checker=False))


def alpha_model() -> AlphaCLIP:
    """The Alpha-CLIP 'checkpoint' (open_clip, ``TINY_CFG``) with a non-zero alpha conv."""
    torch.manual_seed(0)
    return randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval())


def write_folders(root: Path, stock: StableDiffusionImageVariationPipeline, model: AlphaCLIP) -> Path:
    """``root/stock`` (``save_pretrained``), ``root/alpha.pth`` (the reference release's format) and
    ``root/alpha-pipe``, the folder ``convert_pipeline`` makes of them. Returns ``root``."""
    stock.save_pretrained(root / "stock")
    torch.save(reference_state_dict(model), root / "alpha.pth")
    convert_pipeline(root / "stock", root / "alpha.pth", root / "alpha-pipe")
    return root
