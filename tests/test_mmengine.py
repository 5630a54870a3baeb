"""The alpha vision tower in mmengine's MODELS registry, built from a config with custom_imports."""
from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("mmengine")  # a [dev] dependency: installed wherever the tests run

from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS  # noqa: E402

from alphaclip_core.alpha import normalize_alpha  # noqa: E402
from alphaclip_core.checkpoints import CheckpointError  # noqa: E402

from conftest import TINY_CFG, randomize_alpha_conv, reference_state_dict  # noqa: E402

ARCH = {"embed_dim": TINY_CFG["embed_dim"], "vision_cfg": TINY_CFG["vision_cfg"], "quick_gelu": True}


def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:20, 4:20] = 1
    mask[1, :, 10:30, 0:16] = 1
    return x, normalize_alpha(mask)


def write_config(tmp_path, **model):
    model = {"type": "AlphaCLIPViT", "arch": ARCH, **model}
    text = ("custom_imports = dict(imports=['alphaclip_integrations.mmengine'], allow_failed_imports=False)\n"
            f"model = {model!r}\n")
    path = tmp_path / "alpha_vit.py"
    path.write_text(text)
    return path


def test_config_with_custom_imports_builds_the_tower_from_a_reference_checkpoint(tmp_path, alpha_clip):
    randomize_alpha_conv(alpha_clip, seed=2, scale=1.0)
    torch.save(reference_state_dict(alpha_clip), tmp_path / "visual.pth")
    sys.modules.pop("alphaclip_integrations.mmengine", None)  # custom_imports must do the import
    cfg = Config.fromfile(write_config(tmp_path, checkpoint=str(tmp_path / "visual.pth"), out_type="embedding"))
    backbone = MODELS.build(cfg.model).eval()
    assert type(backbone).__name__ == "AlphaCLIPViT"
    x, alpha = inputs()
    with torch.no_grad():
        (got,) = backbone(x, alpha)
        want = alpha_clip.encode_image(x, alpha)
        (whole,) = backbone(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole, alpha_clip.encode_image(x), atol=1e-5, rtol=0)
    assert not torch.allclose(got, whole, atol=1e-3)  # the alpha matters


def test_featmaps_are_the_blocks_patch_tokens(alpha_clip):
    import alphaclip_integrations.mmengine as amm

    randomize_alpha_conv(alpha_clip, seed=4)
    backbone = MODELS.build(dict(type="AlphaCLIPVisionTransformer", arch=ARCH, out_indices=(0, -1), final_norm=True))
    sd = {k[len("visual."):]: v for k, v in alpha_clip.state_dict().items() if k.startswith("visual.")}
    backbone.visual.load_state_dict(sd)
    assert isinstance(backbone, amm.AlphaCLIPViT) and backbone.out_indices == [0, 1]
    x, alpha = inputs()
    with torch.no_grad():
        maps = backbone.eval()(x, alpha)
        ref = alpha_clip.visual.forward_intermediates(x, alpha, indices=[0, 1], intermediates_only=True,
                                                      normalize_intermediates=True)["image_intermediates"]
    assert [tuple(m.shape) for m in maps] == [(2, 64, 4, 4), (2, 64, 4, 4)]
    for a, b in zip(maps, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # the last map, by hand: ln_post over the last block's patch tokens
    with torch.no_grad():
        v = alpha_clip.visual
        tokens = v.transformer(v._embeds(x, alpha))
        by_hand = v.ln_post(tokens[:, 1:]).reshape(2, 4, 4, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps[1], by_hand, atol=1e-5, rtol=0)


def test_named_arch_and_frozen_stages():
    backbone = MODELS.build(dict(type="AlphaCLIPViT", arch="alpha-ViT-Tiny-8", frozen_stages=1))
    v = backbone.visual
    assert v.conv1_alpha.weight.shape[2:] == (8, 8)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert {"visual.conv1.weight", "visual.conv1_alpha.weight", "visual.class_embedding",
            "visual.positional_embedding"} <= frozen
    assert all(n.startswith(("visual.transformer.resblocks.0.", "visual.conv1", "visual.ln_pre", "visual.class",
                             "visual.positional")) for n in frozen)
    assert any(n.startswith("visual.transformer.resblocks.1.") for n, p in backbone.named_parameters()
               if p.requires_grad)
    backbone.train()
    assert not v.transformer.resblocks[0].training and v.transformer.resblocks[1].training
    everything = MODELS.build(dict(type="AlphaCLIPViT", arch="alpha-ViT-Tiny-8", frozen_stages=99))
    assert not any(p.requires_grad for p in everything.parameters())


def test_plain_clip_checkpoint_gives_zero_alpha_conv(tmp_path, plain_clip):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in plain_clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    backbone = MODELS.build(dict(type="AlphaCLIPViT", arch=ARCH, checkpoint=str(tmp_path / "clip.safetensors"),
                                 out_type="embedding")).eval()
    assert float(backbone.visual.conv1_alpha.weight.detach().abs().max()) == 0.0
    x, alpha = inputs()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x, alpha)[0], plain_clip.encode_image(x), atol=1e-5, rtol=0)


def test_bad_arguments_are_named(tmp_path, alpha_clip):
    with pytest.raises(ValueError, match="arch: unknown Alpha-CLIP model 'ViT-B-16'"):
        MODELS.build(dict(type="AlphaCLIPViT", arch="ViT-B-16"))
    with pytest.raises(ValueError, match="out_type: expected one of"):
        MODELS.build(dict(type="AlphaCLIPViT", arch=ARCH, out_type="tokens"))
    with pytest.raises(ValueError, match=r"out_indices: expected block indices in \[-2, 1\], got \(0, 5\)"):
        MODELS.build(dict(type="AlphaCLIPViT", arch=ARCH, out_indices=(0, 5)))
    torch.save(reference_state_dict(alpha_clip), tmp_path / "visual.pth")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        MODELS.build(dict(type="AlphaCLIPViT", arch="alpha-ViT-Tiny-8", checkpoint=str(tmp_path / "visual.pth")))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        MODELS.build(dict(type="AlphaCLIPViT", arch=ARCH, checkpoint=str(tmp_path / "missing.pth")))


def test_any_input_size_interpolates_the_positional_embedding(alpha_clip):
    randomize_alpha_conv(alpha_clip, seed=6, scale=1.0)
    sd = {k[len("visual."):]: v for k, v in alpha_clip.state_dict().items() if k.startswith("visual.")}
    feat = MODELS.build(dict(type="AlphaCLIPViT", arch=ARCH, out_indices=(0, 1), final_norm=True)).eval()
    emb = MODELS.build(dict(type="AlphaCLIPViT", arch=ARCH, out_type="embedding")).eval()
    for m in (feat, emb):
        m.visual.load_state_dict(sd)
    x, alpha = inputs()
    with torch.no_grad():
        # the any-size path at the native size computes exactly what the core tower computes
        for a, b in zip(feat._forward_any_size(x, alpha), feat(x, alpha)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        torch.testing.assert_close(emb._forward_any_size(x, alpha)[0], alpha_clip.encode_image(x, alpha),
                                   atol=1e-5, rtol=0)
        big = torch.randn(2, 3, 48, 40)
        mask = torch.zeros(2, 1, 48, 40)
        mask[:, :, 8:30, 8:24] = 1
        maps = feat(big, normalize_alpha(mask))
        whole = feat(big)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 6, 5), (2, 64, 6, 5)]
    assert not torch.allclose(maps[1], whole[1], atol=1e-3)
    # interpolation: the native grid is returned as is, and a constant grid stays constant
    assert feat.positional_embedding(4, 4) is feat.visual.positional_embedding
    with torch.no_grad():
        feat.visual.positional_embedding[1:] = 0.25
    torch.testing.assert_close(feat.positional_embedding(6, 5)[1:], torch.full((30, 64), 0.25), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"x: height and width must be multiples of the patch size 8"):
        feat(torch.randn(1, 3, 30, 32))
