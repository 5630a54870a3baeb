"""The original LLaVA code base (llava-torch 1.2.2.post1) with an Alpha-CLIP vision tower."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from open_clip.model import CLIP
from PIL import Image

from alphaclip_core.checkpoints import CheckpointError
from alphaclip_core.model import WHOLE_IMAGE_ALPHA, AlphaCLIP

pytest.importorskip("llava", reason="llava-torch is not installed (pip install --no-deps llava-torch==1.2.2.post1)")

import llava.mm_utils  # noqa: E402
import llava.model.llava_arch as llava_arch  # noqa: E402
import llava.model.multimodal_encoder.builder as llava_builder  # noqa: E402
from llava.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM  # noqa: E402

from alphaclip_integrations.llava import original  # noqa: E402
from alphaclip_integrations.llava.__main__ import main as entry_main  # noqa: E402
from conftest import openai_state_dict, randomize_alpha_conv, reference_state_dict  # noqa: E402

# A tiny CLIP whose shape the tower reads off the weights: width 128 -> 2 heads of 64 (CLIP's head
# width), 3 blocks, 32px images with 8px patches (4x4 = 16 patches), QuickGELU like OpenAI's.
TOWER_CFG = dict(
    embed_dim=32, quick_gelu=True,
    vision_cfg=dict(image_size=32, patch_size=8, width=128, layers=3, head_width=64),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
)
WIDTH, LAYERS, PATCHES = 128, 3, 16


def tiny_llava_config(tower: str, **extra) -> LlavaConfig:
    return LlavaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       mm_vision_tower=tower, mm_hidden_size=WIDTH, mm_projector_type="mlp2x_gelu",
                       mm_vision_select_layer=-2, mm_vision_select_feature="patch", **extra)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    alpha = randomize_alpha_conv(AlphaCLIP(**TOWER_CFG).eval(), seed=3, scale=0.5)
    torch.manual_seed(0)
    plain = CLIP(**TOWER_CFG).eval()
    return alpha, plain


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    alpha, plain = models
    d = tmp_path_factory.mktemp("llava_ckpt")
    paths = {"ref": d / "clip_t8@32_grit1m_fultune_8xe.pth", "plain": d / "ViT-T-8.pt", "alpha_only": d / "alpha.pth"}
    torch.save(reference_state_dict(alpha), paths["ref"])
    torch.save(openai_state_dict(plain), paths["plain"])
    torch.save({"conv1_alpha.weight": alpha.visual.conv1_alpha.weight.detach().clone()}, paths["alpha_only"])
    return paths


@pytest.fixture(autouse=True)
def hook():
    original.install()
    yield
    original.uninstall()


def rgba(n: int = 2, seed: int = 0) -> torch.Tensor:
    """Random CLIP-normalised RGB + a different binary alpha per image: [n, 4, 32, 32]."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(n, 3, 32, 32, generator=g)
    alpha = torch.full((n, 1, 32, 32), -WHOLE_IMAGE_ALPHA)
    for i in range(n):
        alpha[i, :, 4 * i:4 * i + 12, 8:24] = WHOLE_IMAGE_ALPHA
    return torch.cat([rgb, alpha], dim=1)


def reference_patches(model, x: torch.Tensor, block: int) -> torch.Tensor:
    """open_clip's own intermediates: patch tokens after block ``block`` (0-based)."""
    alpha = x[:, 3:] if x.shape[1] == 4 else None
    visual = model.visual
    kwargs = dict(indices=[block], output_fmt="NLC", intermediates_only=True)
    with torch.no_grad():
        if isinstance(model, AlphaCLIP):
            out = visual.forward_intermediates(x[:, :3], alpha, **kwargs)
        else:
            out = visual.forward_intermediates(x[:, :3], **kwargs)
    return out["image_intermediates"][0]


def build(name: str, delay_load: bool = False, **cfg):
    cfg = {"mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", **cfg}
    return llava_builder.build_vision_tower(types.SimpleNamespace(mm_vision_tower=name, **cfg), delay_load=delay_load)


# --------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name,expected", [
    ("alpha-clip:/w/clip_l14@336_grit1m_fultune_8xe.pth", ("/w/clip_l14@336_grit1m_fultune_8xe.pth", None)),
    ("alpha-clip:/w/a.pth@/w/ViT-L-14-336px.pt", ("/w/a.pth", "/w/ViT-L-14-336px.pt")),
    ("alpha-clip:/w/clip_l14@336.pth@/w/base@x.safetensors", ("/w/clip_l14@336.pth", "/w/base@x.safetensors")),
    ("alpha-clip:rel/dir@1/m.safetensors", ("rel/dir@1/m.safetensors", None)),
])
def test_parse_tower_name(name, expected):
    assert original.parse_tower_name(name) == expected


@pytest.mark.parametrize("name,match", [
    ("openai/clip-vit-large-patch14-336", "expected 'alpha-clip:<checkpoint>"),
    ("alpha-clip:", "names no checkpoint"),
    ("alpha-clip:/w/a.pth@", "names no base checkpoint"),
])
def test_parse_tower_name_errors(name, match):
    with pytest.raises(ValueError, match=match):
        original.parse_tower_name(name)


# --------------------------------------------------------------------------------------------- hook
def test_hook_patches_both_import_sites_and_undoes(files):
    assert original.installed()
    for mod in (llava_builder, llava_arch):
        assert mod.build_vision_tower._alphaclip_original is not None
    tower = llava_arch.build_vision_tower(types.SimpleNamespace(
        mm_vision_tower=f"alpha-clip:{files['ref']}", mm_vision_select_layer=-2))
    assert isinstance(tower, original.AlphaCLIPVisionTower) and tower.is_loaded
    with pytest.raises(ValueError, match="Unknown vision tower: not-a-tower"):  # LLaVA's own builder still answers
        build("not-a-tower")
    original.uninstall()
    assert not original.installed()
    assert not hasattr(llava_arch.build_vision_tower, "_alphaclip_original")
    with pytest.raises(ValueError, match="Unknown vision tower: alpha-clip:"):
        build(f"alpha-clip:{files['ref']}")
    original.install()
    original.install()  # idempotent: wrapped once
    assert not hasattr(llava_builder.build_vision_tower._alphaclip_original, "_alphaclip_original")


# --------------------------------------------------------------------------------------------- tower
def test_tower_interface(files):
    tower = build(f"alpha-clip:{files['ref']}")
    assert (tower.hidden_size, tower.num_patches, tower.num_patches_per_side) == (WIDTH, PATCHES, 4)
    assert tower.config.image_size == 32 and tower.config.patch_size == 8 and tower.config.num_channels == 4
    assert tower.config.num_attention_heads == 2 and tower.config.num_hidden_layers == LAYERS
    assert tower.dtype == torch.float32 and tower.device.type == "cpu"
    assert tower.dummy_feature.shape == (1, WIDTH)
    assert not any(p.requires_grad for p in tower.parameters())
    proc = tower.image_processor
    assert proc.crop_size == {"height": 32, "width": 32} and proc.size == {"shortest_edge": 32}
    assert proc.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert proc.transform.mode == "crop"
    assert build(f"alpha-clip:{files['ref']}", mm_vision_alpha_mode="pad").image_processor.transform.mode == "pad"


def test_tower_features_match_open_clip_penultimate_layer(files, models):
    alpha_model, _ = models
    tower = build(f"alpha-clip:{files['ref']}")
    x = rgba()
    feats = tower(x)
    assert feats.shape == (2, PATCHES, WIDTH)
    ref = reference_patches(alpha_model, x, LAYERS - 2)  # hidden_states[-2] = after the penultimate block
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    # the alpha matters (non-zero conv1_alpha): the two images' alphas differ from the whole image
    whole = tower(x[:, :3])
    assert (feats - whole).abs().amax() > 1e-2
    # 3 channels == whole-image alpha; a list of [4,S,S] == the batch
    x_whole = torch.cat([x[:, :3], torch.full((2, 1, 32, 32), WHOLE_IMAGE_ALPHA)], dim=1)
    torch.testing.assert_close(whole, tower(x_whole), rtol=0, atol=0)
    listed = tower([x[0], x[1]])
    assert isinstance(listed, list) and listed[0].shape == (1, PATCHES, WIDTH)
    torch.testing.assert_close(torch.cat(listed), feats, rtol=1e-5, atol=1e-5)
    # fp64 input comes back as fp64 (computed in the tower's dtype, like LLaVA's tower)
    assert tower(x.double()).dtype == torch.float64


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_tower(files, dtype, atol):
    """LLaVA's builder casts the tower to fp16: the normalised alpha survives the cast (range check passes)
    and the features stay close to fp32 (features are ~4 in magnitude here)."""
    tower = build(f"alpha-clip:{files['ref']}")
    x = rgba()
    ref = tower(x)
    tower.to(dtype=dtype)
    assert tower.dtype == dtype
    out = tower(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=atol)


def test_select_layer_and_cls_patch(files, models):
    alpha_model, _ = models
    x = rgba()
    tower = build(f"alpha-clip:{files['ref']}", mm_vision_select_feature="cls_patch")
    assert tower(x).shape == (2, PATCHES + 1, WIDTH)
    last = build(f"alpha-clip:{files['ref']}", mm_vision_select_layer=-1)
    torch.testing.assert_close(last(x), reference_patches(alpha_model, x, LAYERS - 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mm_vision_select_layer: 7 is out of range for a tower with 3 blocks"):
        build(f"alpha-clip:{files['ref']}", mm_vision_select_layer=7)
    with pytest.raises(ValueError, match="mm_vision_select_feature: expected 'patch' or 'cls_patch', got 'cls'"):
        build(f"alpha-clip:{files['ref']}", mm_vision_select_feature="cls")


def test_plain_clip_gives_zero_alpha_conv_and_plain_features(files, models):
    _, plain = models
    tower = build(f"alpha-clip:{files['plain']}")
    assert tower.vision_tower.conv1_alpha.weight.abs().max() == 0
    x = rgba()
    ref = reference_patches(plain, x, LAYERS - 2)
    torch.testing.assert_close(tower(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tower(x[:, :3]), ref, rtol=1e-5, atol=1e-5)


def test_base_plus_alpha_only_checkpoint(files, models):
    alpha_model, plain = models
    # the plain base's tower + only the alpha conv of the alpha model
    tower = build(f"alpha-clip:{files['alpha_only']}@{files['plain']}")
    torch.testing.assert_close(tower.vision_tower.conv1_alpha.weight, alpha_model.visual.conv1_alpha.weight)
    torch.testing.assert_close(tower.vision_tower.conv1.weight, plain.visual.conv1.weight)
    # the reference file replaces everything of the base
    full = build(f"alpha-clip:{files['ref']}@{files['plain']}")
    torch.testing.assert_close(full(rgba()), build(f"alpha-clip:{files['ref']}")(rgba()), rtol=0, atol=0)


def test_tower_errors(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file"):
        build(f"alpha-clip:{tmp_path / 'missing.pth'}")
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    cfg = dict(TOWER_CFG, vision_cfg=dict(TOWER_CFG["vision_cfg"], layers=2))
    torch.save(openai_state_dict(CLIP(**cfg)), other)
    with pytest.raises(CheckpointError, match="base: .* is a ViT width 128, patch 8, 2 layers.*must have the same"):
        build(f"alpha-clip:{files['ref']}@{other}")
    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(2)}, junk)
    with pytest.raises(CheckpointError, match="holds no CLIP ViT vision tower"):
        build(f"alpha-clip:{junk}")
    with pytest.raises(CheckpointError, match=r"holds only \['conv1_alpha.weight'\]; pass the plain CLIP"):
        build(f"alpha-clip:{files['alpha_only']}")
    tower = build(f"alpha-clip:{files['ref']}")
    with pytest.raises(ValueError, match=r"images: expected \[B, 4, H, W\] \(RGB \+ alpha\)"):
        tower(torch.zeros(1, 5, 32, 32))
    with pytest.raises(ValueError, match="images: expected 32x32 images"):
        tower(torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match="alpha: values must lie in"):
        tower(torch.cat([torch.zeros(1, 3, 32, 32), torch.full((1, 1, 32, 32), 5.0)], dim=1))


def test_same_features_as_the_transformers_native_tower(files):
    """The same weights give the same layer -2 patch features through LLaVA's tower and the HF tower."""
    from alphaclip_integrations.hf import AlphaCLIPVisionConfig, vision_model_from_state_dict
    from alphaclip_integrations.llava.weights import read_visual

    tower = build(f"alpha-clip:{files['ref']}")
    assert isinstance(tower.image_processor, original.RGBAImageProcessor)
    hf = vision_model_from_state_dict(read_visual(files["ref"]), AlphaCLIPVisionConfig(**{
        k: getattr(tower.config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "image_size", "patch_size", "hidden_act")}))
    x = rgba()
    with torch.no_grad():
        ref = hf(x[:, :3], alpha_values=x[:, 3:], output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(tower(x), ref, rtol=1e-4, atol=1e-5)


def test_delay_load_reads_config_without_building(files):
    tower = build(f"alpha-clip:{files['ref']}", delay_load=True)
    assert not tower.is_loaded and not list(tower.parameters())
    assert tower.hidden_size == WIDTH and tower.num_patches == PATCHES
    with pytest.raises(RuntimeError, match="call load_model"):
        tower(rgba())
    tower.load_model()
    assert tower.is_loaded and tower(rgba()).shape == (2, PATCHES, WIDTH)


# --------------------------------------------------------------------------------------------- processor
def _picture(h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_image_processor_regions(files):
    proc = build(f"alpha-clip:{files['ref']}").image_processor
    img = _picture()
    mask = np.zeros((40, 48), bool)
    mask[4:20, 10:30] = True
    out = proc([img, img], masks=[mask, None], return_tensors="pt")["pixel_values"]
    assert out.shape == (2, 4, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 3], torch.full((32, 32), WHOLE_IMAGE_ALPHA))
    assert out[0, 3].min() == pytest.approx(-WHOLE_IMAGE_ALPHA) and out[0, 3].max() == pytest.approx(WHOLE_IMAGE_ALPHA)
    torch.testing.assert_close(out[0, :3], out[1, :3], rtol=0, atol=0)  # the same RGB
    # the alpha channel of an RGBA image is the mask; a box is its rasterised rectangle
    rgba_img = img.copy()
    rgba_img.putalpha(Image.fromarray(mask.astype(np.uint8) * 255))
    torch.testing.assert_close(proc.preprocess(rgba_img)["pixel_values"], out[:1], rtol=0, atol=1e-6)
    boxed = proc.preprocess(img, boxes=[10, 4, 30, 20])["pixel_values"]
    torch.testing.assert_close(boxed, out[:1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"images\[0\]: got both a mask and a box"):
        proc(img, masks=mask, boxes=[0, 0, 5, 5])
    with pytest.raises(ValueError, match=r"images\[0\]: an RGBA image carries its region in its alpha channel"):
        proc(rgba_img, masks=mask)
    with pytest.raises(ValueError, match="masks: expected a list with one entry .* per image, 2 in all; got a list of 1"):
        proc([img, img], masks=[mask])
    with pytest.raises(ValueError, match=r"images\[0\]: mask 0 is empty"):
        proc(img, masks=np.zeros((40, 48), bool))
    clear = img.copy()
    clear.putalpha(0)
    with pytest.raises(ValueError, match=r"images\[0\]: the alpha channel of this RGBA image is all zero"):
        proc(clear)
    with pytest.raises(ValueError, match=r"unsupported options \['do_resize'\]"):
        proc(img, do_resize=False)


def test_llava_process_images_pad_keeps_padding_background(files):
    proc = build(f"alpha-clip:{files['ref']}").image_processor
    img = _picture(20, 40)
    img.putalpha(255)  # the whole picture is the region
    out = llava.mm_utils.process_images([img], proc, types.SimpleNamespace(image_aspect_ratio="pad"))
    assert out.shape == (1, 4, 32, 32)
    alpha = out[0, 3]
    # 20x40 padded to 40x40: rows 0-9 and 30-39 are padding -> 32px: rows 0..7 background, middle region
    assert alpha[0].max() == pytest.approx(-WHOLE_IMAGE_ALPHA) and alpha[-1].max() == pytest.approx(-WHOLE_IMAGE_ALPHA)
    assert alpha[16].min() == pytest.approx(WHOLE_IMAGE_ALPHA)
    square = llava.mm_utils.process_images([img], proc, types.SimpleNamespace(image_aspect_ratio=None))
    torch.testing.assert_close(square[0, 3], torch.full((32, 32), WHOLE_IMAGE_ALPHA))


# --------------------------------------------------------------------------------------------- LLaVA model
def _prompt(batch: int = 2) -> torch.Tensor:
    return torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 8, 9]] * batch)


def test_tiny_llava_llama_forward_and_generate_with_rgba(files):
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM(tiny_llava_config(f"alpha-clip:{files['ref']}")).eval()
    tower = model.get_vision_tower()
    assert isinstance(tower, original.AlphaCLIPVisionTower) and not tower.is_loaded  # LLaVA builds it delayed
    tower.load_model()
    x = rgba()
    with torch.no_grad():
        logits = model(input_ids=_prompt(), images=x).logits
        assert logits.shape == (2, 6 - 1 + PATCHES, 96)
        # the same prompt and RGB, a different region -> different logits after the image tokens
        swapped = model(input_ids=_prompt(), images=torch.cat([x[:, :3], x.flip(0)[:, 3:]], dim=1)).logits
        assert (logits - swapped)[:, 2:].abs().amax() > 1e-4
        torch.testing.assert_close(logits[:, :2], swapped[:, :2], rtol=0, atol=0)  # tokens before the image
        # whole-image alpha == 3-channel images
        whole3 = model(input_ids=_prompt(), images=x[:, :3]).logits
        whole4 = model(input_ids=_prompt(), images=torch.cat(
            [x[:, :3], torch.full((2, 1, 32, 32), WHOLE_IMAGE_ALPHA)], dim=1)).logits
        torch.testing.assert_close(whole3, whole4, rtol=0, atol=0)
    # generate (with the transformers-5 compat shim)
    out = model.generate(_prompt(), images=x, attention_mask=torch.ones(2, 6, dtype=torch.long),
                         max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out[:, 0], logits[:, -1].argmax(-1))


def test_llava_save_and_from_pretrained_keeps_the_alpha_tower(files, tmp_path):
    """LLaVA's own checkpoint flow: the config stores mm_vision_tower='alpha-clip:...'; from_pretrained
    builds the tower delayed and load_model() reads the Alpha-CLIP file (as LLaVA's builder does)."""
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM(tiny_llava_config(f"alpha-clip:{files['ref']}")).eval()
    model.get_vision_tower().load_model()
    model.save_pretrained(tmp_path)
    loaded = LlavaLlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.mm_vision_tower == f"alpha-clip:{files['ref']}"
    tower = loaded.get_vision_tower()
    assert isinstance(tower, original.AlphaCLIPVisionTower) and not tower.is_loaded
    tower.load_model()
    x = rgba()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=_prompt(), images=x).logits,
                                   model(input_ids=_prompt(), images=x).logits, rtol=0, atol=0)


def test_initialize_vision_modules_like_llava_train(files):
    """LLaVA's train path: a language model without a tower + model_args.vision_tower (llava_arch's name)."""
    torch.manual_seed(0)
    cfg = tiny_llava_config("unused")
    del cfg.mm_vision_tower
    model = LlavaLlamaForCausalLM(cfg).eval()
    assert model.get_vision_tower() is None
    model_args = types.SimpleNamespace(
        vision_tower=f"alpha-clip:{files['alpha_only']}@{files['plain']}", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat",
        mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(model_args)
    assert isinstance(model.get_vision_tower(), original.AlphaCLIPVisionTower)
    assert model.config.mm_hidden_size == WIDTH and model.config.mm_vision_tower.startswith("alpha-clip:")
    with torch.no_grad():
        assert model(input_ids=_prompt(1), images=rgba(1)).logits.shape == (1, 5 + PATCHES, 96)


# --------------------------------------------------------------------------------------------- entry
def test_entry_installs_hook_and_runs_llava_module(tmp_path, monkeypatch, capsys):
    original.uninstall()
    pkg = tmp_path / "llava_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "probe.py").write_text(
        "import sys\nimport llava.model.llava_arch as a\n"
        "print('hooked', hasattr(a.build_vision_tower, '_alphaclip_original'), sys.argv[1:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # any llava.* module name is accepted: put the probe under llava's namespace for the run
    import llava
    monkeypatch.setattr(llava, "__path__", list(llava.__path__) + [str(pkg)])
    assert entry_main(["llava.probe", "--vision_tower", "alpha-clip:x.pth"]) == 0
    assert "hooked True ['--vision_tower', 'alpha-clip:x.pth']" in capsys.readouterr().out
    assert entry_main(["nonsense"]) == 2
    assert "unknown entry 'nonsense'" in capsys.readouterr().err
    with pytest.raises(ImportError, match="llava.train.train needs LLaVA's pinned environment"):
        entry_main(["train", "--help"])
    sys.modules.pop("llava.probe", None)


def test_original_part_imports_without_the_native_part_under_transformers_4():
    """LLaVA trains in its pinned environment (transformers 4.37): there the package must import without
    the transformers-5-only native model (simulated by the version string, in a fresh interpreter)."""
    import subprocess
    code = (
        "import sys, transformers\n"
        "transformers.__version__ = '4.37.2'\n"
        "from alphaclip_integrations.llava import original\n"
        "import alphaclip_integrations.llava as pkg\n"
        "assert 'alphaclip_integrations.llava.native' not in sys.modules\n"
        "assert 'alphaclip_integrations.hf' not in sys.modules\n"
        "original.install(compat=False)\n"
        "assert original.installed()\n"
        "try:\n"
        "    pkg.AlphaLlavaConfig\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    env = {**__import__("os").environ}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ImportError: alphaclip_integrations.llava.AlphaLlavaConfig needs transformers >= 5 (found 4.37.2)" in res.stdout

