"""Any open_clip ViT backbone gets an alpha channel: the alpha- naming rule, listing, pretrained tags,
refusals, and per family (open_clip ViT, timm EVA02, timm SigLIP) exact equivalence to the base."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP

import alphaclip_integrations.open_clip as aoc
import backbones_kit as kit
from alphaclip_core import (WHOLE_IMAGE_ALPHA, AlphaCLIP, AlphaCustomTextCLIP, AlphaTimmModel,
                            AlphaVisionTransformer, add_alpha, normalize_alpha)
from alphaclip_core.checkpoints import save_safetensors
from conftest import randomize_alpha_conv

TOYS = list(kit.FAMILIES.values())


@pytest.fixture(scope="module", autouse=True)
def toys(tmp_path_factory):
    kit.register(tmp_path_factory.mktemp("toy_configs"))


def _inputs(n=3, seed=7):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, 32, 32, generator=g)
    masks = (torch.rand(n, 1, 32, 32, generator=g) > 0.5).float()
    masks[0] = 1.0  # one whole-image row among region rows
    return image, normalize_alpha(masks)


def _plain_and_alpha(name):
    torch.manual_seed(0)
    plain = open_clip.create_model(name).eval()
    torch.manual_seed(0)
    alpha = open_clip.create_model("alpha-" + name).eval()
    return plain, alpha


# ------------------------------------------------------------------------------------------------ the rule
REAL = {  # name -> (model class, tower class, conv1_alpha shape)
    "alpha-ViT-H-14": (AlphaCLIP, AlphaVisionTransformer, (1280, 1, 14, 14)),
    "alpha-ViT-SO400M-14-SigLIP": (AlphaCustomTextCLIP, AlphaTimmModel, (1152, 1, 14, 14)),
    "alpha-EVA02-L-14": (AlphaCustomTextCLIP, AlphaTimmModel, (1024, 1, 14, 14)),
}


def test_every_vit_config_is_listed_with_its_base_tags():
    names = open_clip.list_models()
    alpha = {n for n in names if n.startswith("alpha-")}
    for base in ("ViT-H-14", "ViT-bigG-14", "ViT-H-14-quickgelu", "ViT-L-14-CLIPA", "EVA02-L-14", "EVA01-g-14",
                 "ViT-SO400M-14-SigLIP", "ViT-SO400M-14-SigLIP2", "ViT-B-16-SigLIP2-256", "ViT-gopt-16-SigLIP2-384",
                 "PE-Core-L-14-336", "MobileCLIP2-L-14", "xlm-roberta-large-ViT-H-14", "vit_relpos_medium_patch16_cls_224"):
        assert "alpha-" + base in alpha, base
        assert open_clip.list_pretrained_tags_by_model("alpha-" + base) == open_clip.list_pretrained_tags_by_model(base)
    for base in ("RN50", "convnext_base", "ViTamin-L", "MobileCLIP-S2", "MobileCLIP-B", "coca_ViT-L-14"):
        assert "alpha-" + base not in alpha, base
    assert names == sorted(names, key=open_clip.factory._natural_key)  # still open_clip's order
    # the released names keep their config (OpenAI QuickGELU) and their tags; base tags resolve through the rule
    assert open_clip.get_model_config("alpha-ViT-B-16")["quick_gelu"] is True
    assert set(open_clip.list_pretrained_tags_by_model("alpha-ViT-B-16")) == {"grit1m", "grit20m", "grit1m_mim"}
    assert aoc.base_name("alpha-ViT-B-16") == "ViT-B-16-quickgelu"
    assert open_clip.factory.get_pretrained_cfg("alpha-ViT-B-16", "openai") == \
        open_clip.pretrained.get_pretrained_cfg("ViT-B-16-quickgelu", "openai")
    cfg = open_clip.get_model_config("alpha-ViT-SO400M-14-SigLIP")
    assert cfg == dict(open_clip.get_model_config("ViT-SO400M-14-SigLIP"), alpha_clip=True)
    rows = {b.name: b for b in aoc.backbones()}
    assert rows["alpha-ViT-SO400M-14-SigLIP"].tower == "timm vit_so400m_patch14_siglip_224"
    assert rows["alpha-ViT-H-14"].tower.startswith("open_clip ViT (width 1280, patch 14, 32 layers")
    assert rows["alpha-ViT-L-14-336"].released == ("grit1m", "grit20m")


@pytest.mark.parametrize("name", sorted(REAL))
def test_large_names_build_on_the_meta_device(name):
    model_cls, tower_cls, shape = REAL[name]
    with torch.device("meta"):  # shapes only: nothing allocated, nothing downloaded
        model = open_clip.create_model(name, device="meta")
    assert type(model) is model_cls and type(model.visual) is tower_cls
    assert tuple(model.visual.conv1_alpha.weight.shape) == shape
    alpha_keys = [k for k in model.state_dict() if "conv1_alpha" in k]
    assert alpha_keys == (["visual.conv1_alpha.weight"] if tower_cls is AlphaVisionTransformer
                          else ["visual.trunk.patch_embed.conv1_alpha.weight"])


@pytest.mark.parametrize("name, message", [
    ("alpha-RN50", r"alpha-RN50 is not available: RN50 has a ResNet vision tower \(ModifiedResNet\)"),
    ("alpha-convnext_base", r"convnext_base has a timm vision tower \(convnext_base\) that is not a ViT.*ConvNeXt.*"
                            r"no patch embedding"),
    ("alpha-ViTamin-S", r"ViTamin-S has a timm vision tower \(vitamin_small_224\) that is not a ViT.*HybridEmbed"),
    ("alpha-MobileCLIP-B", r"MobileCLIP-B has a timm vision tower \(vit_base_mci_224\).*conv stem"),
    ("alpha-coca_ViT-B-32", r"coca_ViT-B-32 is a CoCa model"),
])
def test_non_vit_towers_are_refused_clearly(name, message):
    with pytest.raises(ValueError, match=message):
        open_clip.create_model(name)
    with pytest.raises(ValueError, match=message):
        open_clip.get_model_config(name)
    assert open_clip.get_model_config("alpha-No-Such-Model") is None


def test_add_alpha_refuses_resnet_and_convnext_models():
    rn = CLIP(embed_dim=32, vision_cfg=dict(image_size=32, layers=(1, 1, 1, 1), width=16, head_width=16),
              text_cfg=dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1))
    with pytest.raises(TypeError, match=r"visual: a ResNet tower \(open_clip ModifiedResNet\)"):
        add_alpha(rn)
    assert type(rn) is CLIP and not hasattr(rn.visual, "conv1_alpha")  # untouched
    with torch.device("meta"):
        cnx = open_clip.create_model("convnext_tiny", device="meta")
    with pytest.raises(TypeError, match=r"timm trunk ConvNeXt is not a ViT .*ConvNeXt and hybrid conv-stem towers"):
        add_alpha(cnx)
    with pytest.raises(TypeError, match="model: expected an open_clip CLIP or CustomTextCLIP, got Linear"):
        add_alpha(torch.nn.Linear(2, 2))


def test_configs_added_later_resolve_and_list_after_register(tmp_path):
    (tmp_path / "Later-ViT-8.json").write_text(json.dumps(kit.config("Toy-ViT-8")))
    open_clip.add_model_config(tmp_path)
    assert "alpha-Later-ViT-8" not in open_clip.list_models()
    assert isinstance(open_clip.create_model("alpha-Later-ViT-8"), AlphaCLIP)  # resolves by the rule
    aoc.register()
    assert "alpha-Later-ViT-8" in open_clip.list_models()
    assert tuple(open_clip.get_tokenizer("alpha-Later-ViT-8")(["a cat"]).shape) == (1, 16)


# ------------------------------------------------------------------------------------------------ per family
@pytest.mark.parametrize("name", TOYS)
def test_fresh_alpha_model_is_the_base_bit_for_bit(name):
    plain, alpha = _plain_and_alpha(name)
    assert type(alpha) is (AlphaCLIP if type(plain) is CLIP else AlphaCustomTextCLIP)
    assert torch.count_nonzero(alpha.visual.conv1_alpha.weight) == 0
    assert set(alpha.state_dict()) - set(plain.state_dict()) == {
        "visual.conv1_alpha.weight" if isinstance(alpha.visual, AlphaVisionTransformer)
        else "visual.trunk.patch_embed.conv1_alpha.weight"}
    image, alpha_map = _inputs()
    tokens = open_clip.get_tokenizer(name)(["a red circle", "a blue square", "a cat"])
    with torch.no_grad():
        ref = plain(image, tokens)
        for a in (alpha_map, None, torch.full_like(alpha_map, -WHOLE_IMAGE_ALPHA)):
            out = alpha(image, tokens, alpha=a)
            assert len(out) == len(ref)
            for x, y in zip(out, ref):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
        ref_inter = plain.forward_intermediates(image, image_indices=1)
        inter = alpha.forward_intermediates(image, alpha=alpha_map, image_indices=1)
    torch.testing.assert_close(inter["image_features"], ref_inter["image_features"], rtol=0, atol=0)
    torch.testing.assert_close(inter["image_intermediates"][0], ref_inter["image_intermediates"][0], rtol=0, atol=0)


@pytest.mark.parametrize("name", TOYS)
def test_a_nonzero_alpha_conv_makes_alpha_matter(name):
    plain, alpha = _plain_and_alpha(name)
    randomize_alpha_conv(alpha, scale=1.0)
    image, alpha_map = _inputs()
    with torch.no_grad():
        base = plain.encode_image(image)
        region = alpha.encode_image(image, alpha_map)
        whole = alpha.encode_image(image, torch.full_like(alpha_map, WHOLE_IMAGE_ALPHA))
        default = alpha.encode_image(image)
        inter = alpha.forward_intermediates(image, alpha=alpha_map, image_indices=1)["image_features"]
    torch.testing.assert_close(default, whole, rtol=0, atol=0)  # None is the whole image, bit for bit
    torch.testing.assert_close(inter, torch.nn.functional.normalize(region, dim=-1), rtol=0, atol=1e-6)
    rel = (region - whole).norm(dim=-1) / whole.norm(dim=-1)  # relative change per row
    assert rel[0] < 1e-5 and (rel[1:] > 1e-2).all()  # row 0's mask is the whole image (other rows: kernels)
    assert ((whole - base).norm(dim=-1) / base.norm(dim=-1) > 1e-2).all()  # a trained conv moves the whole image too
    with pytest.raises(ValueError, match=r"alpha: expected shape \[3, 1, 32, 32\]"):
        alpha.encode_image(image, alpha_map[:, :, :16])
    with pytest.raises(ValueError, match=r"alpha: values must lie in \[-1.9231, 1.9231\]"):
        alpha.encode_image(image, alpha_map * 2)


@pytest.mark.parametrize("name", TOYS)
def test_base_weights_load_into_the_alpha_name_with_a_zero_conv(name, tmp_path, monkeypatch):
    """pretrained=<local file of the base> and a base pretrained tag both load; conv1_alpha starts at zero."""
    torch.manual_seed(3)
    base = open_clip.create_model(name).eval()
    save_safetensors(base, tmp_path / "base.safetensors")
    image, alpha_map = _inputs()
    with torch.no_grad():
        ref = base.encode_image(image)
    model, _, preprocess = open_clip.create_model_and_transforms("alpha-" + name,
                                                                 pretrained=str(tmp_path / "base.safetensors"))
    assert torch.count_nonzero(model.visual.conv1_alpha.weight) == 0
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(image, alpha_map), ref, rtol=0, atol=0)
    # a tag of the base (SigLIP-style preprocessing) is a tag of the alpha name
    tag = {"file": str(tmp_path / "base.safetensors"), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
           "interpolation": "bicubic", "resize_mode": "squash"}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"toytag": tag})
    model, _, preprocess = open_clip.create_model_and_transforms("alpha-" + name, pretrained="toytag")
    assert model.visual.preprocess_cfg["mean"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(image, alpha_map), ref, rtol=0, atol=0)
    # a trained alpha model is NOT silently zeroed by a partial load
    randomize_alpha_conv(model)
    before = model.visual.conv1_alpha.weight.clone()
    model.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("visual.")}, strict=False)
    assert torch.equal(model.visual.conv1_alpha.weight, before)


@pytest.mark.parametrize("name", TOYS)
def test_local_dir_round_trip_is_exact(name, tmp_path):
    torch.manual_seed(1)
    model = randomize_alpha_conv(open_clip.create_model("alpha-" + name).eval())
    folder = aoc.save_pretrained(model, tmp_path / "folder")
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    assert cfg["alpha_clip"] is True and cfg.get("custom_text", False) == isinstance(model, CustomTextCLIP)
    loaded = open_clip.create_model(f"local-dir:{folder}").eval()
    assert type(loaded) is type(model)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    image, alpha_map = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(image, alpha_map), model.encode_image(image, alpha_map),
                                   rtol=0, atol=0)


def test_add_alpha_converts_custom_text_clip_in_place():
    torch.manual_seed(0)
    plain = CustomTextCLIP(**{k: v for k, v in kit.config("Toy-SL-8").items() if k != "custom_text"}).eval()
    image, alpha_map = _inputs()
    with torch.no_grad():
        ref = plain.encode_image(image)
    model = add_alpha(plain)
    assert model is plain and type(model) is AlphaCustomTextCLIP and model.model_cfg is None
    assert type(model.visual) is AlphaTimmModel and add_alpha(model) is model
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image, alpha_map), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="model: expected an AlphaCLIP built from a config"):
        aoc.save_pretrained(model, "unused")
