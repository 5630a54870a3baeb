"""transformers integration: same numbers as open_clip, Auto* loading, remote code, processors, pipeline, CLI."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForZeroShotImageClassification,
                          AutoProcessor, CLIPModel, CLIPVisionModel, pipeline)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel

import alphaclip_core
import alphaclip_integrations.hf as ah
import alphaclip_integrations.open_clip  # noqa: F401  (registers alpha-ViT-Tiny-8)
from alphaclip_core import AlphaCLIP, CheckpointError, normalize_alpha, prepare
from alphaclip_core.cli import main as cli_main
from alphaclip_core.regions import classify_regions
from alphaclip_integrations.hf.convert import hf_to_open_clip_state_dict, open_clip_to_hf_state_dict
from conftest import doc_blocks, readme_blocks, TINY_CFG, openai_state_dict, randomize_alpha_conv, reference_state_dict, tiny_cfg

ATOL = 2e-5  # fp32, same weights, different kernels (fused MHA vs split q/k/v): measured ~1e-6
REPO = Path(__file__).resolve().parents[1]


def _image(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _regions(kind, h=40, w=56):
    if kind == "whole":
        return {}
    if kind == "box":
        return {"box": [[4, 2, 30, 30], [20, 10, 56, 40]]}
    mask = np.zeros((2, h, w), dtype=bool)
    mask[0, 5:25, 12:40] = True
    mask[1, 20:, :20] = True
    return {"mask": mask}


@pytest.fixture
def trained():
    torch.manual_seed(0)
    return randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval(), seed=5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A converted transformers folder of a tiny Alpha-CLIP (randomised alpha conv) + that model."""
    torch.manual_seed(0)
    model = randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval(), seed=5)
    path = tmp_path_factory.mktemp("hf") / "tiny-alpha-clip"
    ah.save_hf(model, path)
    return path, model


# ------------------------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("kind", ["whole", "box", "mask"])
def test_same_embeddings_as_open_clip(trained, kind):
    hf = ah.model_from_open_clip(trained)
    image, alpha = prepare(_image(), size=32, **_regions(kind))
    image = image.expand(alpha.shape[0], -1, -1, -1)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a cat.", "a dog", "the red box on the left"])
    with torch.no_grad():
        ref_img = trained.encode_image(image, alpha)
        ref_txt = trained.encode_text(tokens)
        out_img = hf.get_image_features(pixel_values=image, alpha_values=alpha).pooler_output
        out_txt = hf.get_text_features(input_ids=tokens).pooler_output
        proj = ah.vision_model_from_open_clip(trained)
        with_proj = ah.AlphaCLIPVisionModelWithProjection(hf.config.vision_config).eval()
        with_proj.load_state_dict({k: v for k, v in hf.state_dict().items()
                                   if k.startswith(("vision_model.", "visual_projection."))})
        out_proj = with_proj(pixel_values=image, alpha_values=alpha).image_embeds
        # the patch tokens too (open_clip: after ln_post; HF: last_hidden_state before post_layernorm)
        trained.visual.output_tokens = True
        _, ref_tokens = trained.visual(image, alpha)
        trained.visual.output_tokens = False
        vis = proj(pixel_values=image, alpha_values=alpha)
    torch.testing.assert_close(out_img, ref_img, atol=ATOL, rtol=0)
    torch.testing.assert_close(out_txt, ref_txt, atol=ATOL, rtol=0)
    torch.testing.assert_close(out_proj, ref_img, atol=ATOL, rtol=0)
    torch.testing.assert_close(vis.pooler_output @ trained.visual.proj, ref_img, atol=ATOL, rtol=0)
    torch.testing.assert_close(proj.post_layernorm(vis.last_hidden_state[:, 1:]), ref_tokens, atol=ATOL, rtol=0)
    if kind != "whole":  # the alpha really enters: regions of one image differ, and differ from the whole image
        whole = hf.get_image_features(pixel_values=image[:1]).pooler_output
        assert (out_img[0] - out_img[1]).abs().max() > 1e-2
        assert (out_img[0] - whole[0]).abs().max() > 1e-2


def test_zero_alpha_conv_equals_transformers_clip(plain_clip):
    """A plain CLIP converted to HF-alpha (zero alpha conv) = transformers' own CLIPModel, whatever the alpha,
    hidden states included."""
    hf = ah.model_from_open_clip(plain_clip)
    assert torch.count_nonzero(hf.vision_model.embeddings.patch_embedding_alpha.weight) == 0
    config = hf.config.to_dict()
    clip = CLIPModel(__import__("transformers").CLIPConfig(
        vision_config={k: v for k, v in config["vision_config"].items() if k != "model_type"},
        text_config={k: v for k, v in config["text_config"].items() if k != "model_type"},
        projection_dim=config["projection_dim"])).eval()
    sd = {k: v for k, v in hf.state_dict().items() if "patch_embedding_alpha" not in k}
    assert not clip.load_state_dict(sd, strict=False).missing_keys
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    alpha = normalize_alpha(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        ref = clip.vision_model(pixel_values=x, output_hidden_states=True)
        out = hf.vision_model(pixel_values=x, alpha_values=alpha, output_hidden_states=True)
    assert type(out) is type(ref) is BaseModelOutputWithPooling
    assert len(out.hidden_states) == len(ref.hidden_states) == 3  # embeddings + 2 layers
    for a, b in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-6, rtol=0)


def test_fresh_and_plain_clip_loaded_models_have_zero_alpha_conv(tmp_path, plain_clip):
    config = ah.AlphaCLIPConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=16, patch_size=8),
                                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=100))
    fresh = ah.AlphaCLIPModel(config)
    w = fresh.vision_model.embeddings.patch_embedding_alpha.weight
    assert tuple(w.shape) == (32, 1, 8, 8) and torch.count_nonzero(w) == 0
    assert torch.count_nonzero(fresh.vision_model.embeddings.patch_embedding.weight) > 0
    # a stock transformers CLIP folder loads into AlphaCLIPModel: every CLIP weight kept, alpha conv zero
    hf_plain = ah.model_from_open_clip(plain_clip)
    clip = CLIPModel(__import__("transformers").CLIPConfig(**{
        k: ({kk: vv for kk, vv in v.items() if kk != "model_type"} if isinstance(v, dict) else v)
        for k, v in hf_plain.config.to_dict().items() if k in ("vision_config", "text_config", "projection_dim")}))
    clip.load_state_dict({k: v for k, v in hf_plain.state_dict().items() if "alpha" not in k}, strict=False)
    clip.save_pretrained(tmp_path / "clip")
    loaded = ah.AlphaCLIPModel.from_pretrained(tmp_path / "clip")
    assert torch.count_nonzero(loaded.vision_model.embeddings.patch_embedding_alpha.weight) == 0
    torch.testing.assert_close(loaded.vision_model.embeddings.patch_embedding.weight,
                               clip.vision_model.embeddings.patch_embedding.weight, atol=0, rtol=0)


def test_eager_equals_sdpa(folder):
    path, _ = folder
    eager = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    sdpa = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    image, alpha = prepare(_image(), box=[[4, 2, 30, 30], [20, 10, 56, 40]], size=32)
    image = image.expand(2, -1, -1, -1)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a cat", "a dog"])
    with torch.no_grad():
        a = eager(input_ids=tokens, pixel_values=image, alpha_values=alpha, output_hidden_states=True)
        b = sdpa(input_ids=tokens, pixel_values=image, alpha_values=alpha, output_hidden_states=True)
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.image_embeds, b.image_embeds, atol=1e-5, rtol=0)
    for x, y in zip(a.vision_model_output.hidden_states, b.vision_model_output.hidden_states):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    # every attention backend CLIP declares (flash / flex need a GPU or compile) is declared here as well
    for flag in ("_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn", "_supports_attention_backend"):
        assert getattr(ah.AlphaCLIPModel, flag) is getattr(CLIPPreTrainedModel, flag) is True


def test_alpha_values_checks(trained):
    hf = ah.model_from_open_clip(trained)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"alpha_values: expected shape \[2, 1, 32, 32\].*got \[2, 32, 32\]"):
        hf.vision_model(pixel_values=x, alpha_values=torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match=r"alpha_values: expected shape \[2, 1, 32, 32\].*got \[1, 1, 32, 32\]"):
        hf.get_image_features(pixel_values=x, alpha_values=torch.zeros(1, 1, 32, 32))
    with pytest.raises(TypeError, match="alpha_values: expected a floating point tensor"):
        hf.vision_model(pixel_values=x, alpha_values=torch.ones(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"alpha_values: values must lie in \[-1.9231, 1.9231\]"):
        hf.vision_model(pixel_values=x, alpha_values=torch.full((2, 1, 32, 32), 255.0))
    # a bf16 model takes fp32 inputs (cast, like open_clip), and None = the whole image (+1.9231)
    bf = ah.model_from_open_clip(trained).to(torch.bfloat16)
    whole = torch.full((2, 1, 32, 32), ah.WHOLE_IMAGE_ALPHA)
    with torch.no_grad():
        a = bf.get_image_features(pixel_values=x, alpha_values=whole).pooler_output
        b = bf.get_image_features(pixel_values=x).pooler_output
    assert a.dtype == torch.bfloat16
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert ah.ALPHA_MEAN == alphaclip_core.ALPHA_MEAN and ah.ALPHA_STD == alphaclip_core.ALPHA_STD


# ------------------------------------------------------------------------------------------------ key map
def test_key_map_round_trip_and_errors(trained):
    sd = {k: v for k, v in trained.state_dict().items()}
    hf_sd = open_clip_to_hf_state_dict(sd)
    assert set(hf_sd) == set(ah.AlphaCLIPModel(ah.convert.config_from_open_clip(trained)).state_dict())
    assert hf_sd["vision_model.encoder.layers.1.self_attn.k_proj.weight"].equal(
        sd["visual.transformer.resblocks.1.attn.in_proj_weight"][64:128])
    back = hf_to_open_clip_state_dict(hf_sd)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].equal(sd[k]), k
    with pytest.raises(CheckpointError, match="no transformers name for open_clip key 'transformer.resblocks.0.foo'"):
        open_clip_to_hf_state_dict({**sd, "transformer.resblocks.0.foo": torch.zeros(1)})
    del hf_sd["text_model.encoder.layers.0.self_attn.v_proj.bias"]
    with pytest.raises(CheckpointError, match=r"has \['k', 'q'\] projections \(bias\); need q, k and v"):
        hf_to_open_clip_state_dict(hf_sd)


def test_vision_model_from_reference_state_dict(trained, plain_clip):
    config = ah.model_from_open_clip(trained).config.vision_config
    vision = ah.vision_model_from_state_dict(reference_state_dict(trained), config)
    ref = ah.vision_model_from_open_clip(trained)
    for k, v in ref.state_dict().items():
        assert vision.state_dict()[k].equal(v), k
    plain = ah.vision_model_from_state_dict(openai_state_dict(plain_clip), config)  # whole plain CLIP: zero alpha
    assert torch.count_nonzero(plain.embeddings.patch_embedding_alpha.weight) == 0
    assert plain.embeddings.patch_embedding.weight.equal(plain_clip.visual.conv1.weight)
    with pytest.raises(CheckpointError, match="sd: a state dict in format 'unknown' is not"):
        ah.vision_model_from_state_dict({"foo": torch.zeros(1)}, config)
    wide = ah.AlphaCLIPVisionConfig(**{**config.to_dict(), "hidden_size": 128, "intermediate_size": 512})
    with pytest.raises(CheckpointError, match=r"state dict does not fit the transformers model: shape mismatch "
                                              r"\[.embeddings.class_embedding: file \[64\] vs model \[128\]"):
        ah.vision_model_from_state_dict(reference_state_dict(trained), wide)


def test_unrepresentable_open_clip_tower_is_refused():
    model = AlphaCLIP(**tiny_cfg(pool_type="avg"))
    with pytest.raises(ValueError, match="pool_type='avg'.*transformers' CLIP cannot represent"):
        ah.model_from_open_clip(model)
    with pytest.raises(TypeError, match="model: expected an open_clip CLIP"):
        ah.model_from_open_clip(torch.nn.Linear(2, 2))


def test_back_to_open_clip_is_exact(folder):
    path, model = folder
    back = ah.load_open_clip_from_hf(path)
    assert isinstance(back, AlphaCLIP)
    for k, v in model.state_dict().items():
        assert back.state_dict()[k].equal(v), k


# ------------------------------------------------------------------------------------------------ save / load
def test_auto_classes_and_round_trip(folder, tmp_path):
    path, model = folder
    names = sorted(os.listdir(path))
    for f in ("config.json", "model.safetensors", "configuration_alpha_clip.py", "modeling_alpha_clip.py",
              "processor_config.json", "tokenizer.json"):
        assert f in names
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "alpha_clip" and config["vision_config"]["model_type"] == "alpha_clip_vision_model"
    assert config["vision_config"]["hidden_act"] == "quick_gelu" and config["vision_config"]["layer_norm_eps"] == 1e-5
    assert config["auto_map"] == {"AutoConfig": "configuration_alpha_clip.AlphaCLIPConfig",
                                  "AutoModel": "modeling_alpha_clip.AlphaCLIPModel"}
    assert "vision_model.embeddings.patch_embedding_alpha.weight" in load_file(path / "model.safetensors")
    assert isinstance(AutoConfig.from_pretrained(path), ah.AlphaCLIPConfig)
    loaded = AutoModel.from_pretrained(path)
    assert type(loaded) is ah.AlphaCLIPModel
    assert type(AutoModelForZeroShotImageClassification.from_pretrained(path)) is ah.AlphaCLIPModel
    assert type(AutoProcessor.from_pretrained(path)) is ah.AlphaCLIPProcessor
    assert type(AutoImageProcessor.from_pretrained(path)) is ah.AlphaCLIPImageProcessor
    image, alpha = prepare(_image(), box=[4, 2, 30, 30], size=32)
    with torch.no_grad():
        ref = model.encode_image(image, alpha)
        out = loaded.get_image_features(pixel_values=image, alpha_values=alpha).pooler_output
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    # the vision tower (with or without projection) loads out of the whole-model folder, as LLaVA loads CLIP towers
    tower = ah.AlphaCLIPVisionModel.from_pretrained(path)
    with_proj = ah.AlphaCLIPVisionModelWithProjection.from_pretrained(path)
    for k, v in loaded.vision_model.state_dict().items():
        assert tower.state_dict()[k].equal(v) and with_proj.vision_model.state_dict()[k].equal(v), k
    assert with_proj.visual_projection.weight.equal(loaded.visual_projection.weight)
    # the vision tower alone saves and loads too
    vision = ah.vision_model_from_open_clip(model)
    vision.save_pretrained(tmp_path / "vision")
    again = AutoModel.from_pretrained(tmp_path / "vision")
    assert type(again) is ah.AlphaCLIPVisionModel
    for k, v in vision.state_dict().items():
        assert again.state_dict()[k].equal(v), k


def test_legacy_vision_model_prefix_loads(tmp_path, trained):
    """transformers 4.x saved CLIPVisionModel weights under ``vision_model.``; such folders load."""
    vision = ah.vision_model_from_open_clip(trained)
    vision.save_pretrained(tmp_path / "v")
    sd = load_file(tmp_path / "v" / "model.safetensors")
    save_file({"vision_model." + k: v for k, v in sd.items()}, tmp_path / "v" / "model.safetensors",
              metadata={"format": "pt"})
    loaded = ah.AlphaCLIPVisionModel.from_pretrained(tmp_path / "v")
    for k, v in vision.state_dict().items():
        assert loaded.state_dict()[k].equal(v), k
    # a legacy stock CLIPVisionModel folder (no alpha weight) loads with a zero alpha conv
    clip = CLIPVisionModel(__import__("transformers").CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8))
    clip.save_pretrained(tmp_path / "c")
    sd = load_file(tmp_path / "c" / "model.safetensors")
    save_file({"vision_model." + k: v for k, v in sd.items()}, tmp_path / "c" / "model.safetensors",
              metadata={"format": "pt"})
    loaded = ah.AlphaCLIPVisionModel.from_pretrained(tmp_path / "c")
    assert torch.count_nonzero(loaded.embeddings.patch_embedding_alpha.weight) == 0
    assert loaded.embeddings.patch_embedding.weight.equal(clip.embeddings.patch_embedding.weight)


_REMOTE = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("alphaclip_core", "alphaclip_integrations", "alphaclip_train"):
                raise ImportError("blocked " + name)
    sys.meta_path.insert(0, Block())
    try:
        import alphaclip_integrations.hf
        sys.exit("alpha-clip is importable")
    except ImportError:
        pass
    import torch
    from transformers import AutoModel
    inputs = torch.load("inputs.pt", weights_only=True)
    out = {}
    for name in ("model", "vision"):
        m = AutoModel.from_pretrained(sys.argv[1] if name == "model" else sys.argv[2], trust_remote_code=True).eval()
        assert type(m).__module__.startswith("transformers_modules."), type(m).__module__
        with torch.no_grad():
            kw = dict(pixel_values=inputs["pixel"], alpha_values=inputs["alpha"])
            out[name] = (m.get_image_features(**kw) if name == "model" else m(**kw)).pooler_output
    assert not [k for k in sys.modules if k.startswith("alphaclip")]
    torch.save(out, "outputs.pt")
""")


def test_trust_remote_code_without_alpha_clip(folder, tmp_path):
    """The folder loads with trust_remote_code in a process where importing alphaclip_* fails."""
    path, model = folder
    vision = ah.vision_model_from_open_clip(model)
    vision.save_pretrained(tmp_path / "vision")
    image, alpha = prepare(_image(), mask=_regions("mask")["mask"], size=32)
    image = image.expand(2, -1, -1, -1).contiguous()
    torch.save({"pixel": image, "alpha": alpha}, tmp_path / "inputs.pt")
    (tmp_path / "remote.py").write_text(_REMOTE)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-I", "remote.py", str(path), str(tmp_path / "vision")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "outputs.pt", weights_only=True)
    with torch.no_grad():
        ref = model.encode_image(image, alpha)
        ref_vision = vision(pixel_values=image, alpha_values=alpha).pooler_output
    torch.testing.assert_close(out["model"], ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out["vision"], ref_vision, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ processors
def test_processor_uses_the_core_transform(folder, tmp_path):
    path, model = folder
    processor = AutoProcessor.from_pretrained(path)
    assert (processor.image_processor.size, processor.image_processor.mode) == (32, "crop")
    img = _image()
    mask = _regions("mask")["mask"]
    out = processor(images=Image.fromarray(img), masks=mask, boxes=[[4, 2, 30, 30]], text=["a cat", "a dog"])
    ref_img, ref_alpha = prepare(img, mask=mask, box=[[4, 2, 30, 30]], size=32)
    assert out["pixel_values"].shape == (3, 3, 32, 32) and out["alpha_values"].shape == (3, 1, 32, 32)
    torch.testing.assert_close(out["alpha_values"], ref_alpha, atol=0, rtol=0)
    torch.testing.assert_close(out["pixel_values"], ref_img.expand(3, -1, -1, -1), atol=0, rtol=0)
    # token ids are open_clip's (HF pads with <|endoftext|>, open_clip with 0)
    ref_tokens = open_clip.get_tokenizer("ViT-B-16")(["a cat", "a dog"])
    n = out["input_ids"].shape[1]
    assert out["input_ids"].equal(ref_tokens[:, :n])
    # long texts are truncated like open_clip's tokenizer (end token kept)
    long = " ".join(["cat dog"] * 60)
    ids = processor(text=[long])["input_ids"]
    assert ids.equal(open_clip.get_tokenizer("ViT-B-16")([long]))
    # pad mode and several images with per-image regions
    batch = processor.image_processor([img, _image(30, 30, seed=1)], boxes=[[[0, 0, 10, 10], [5, 5, 50, 40]], None],
                                      mode="pad", return_region_index=True)
    assert batch["region_image_index"].tolist() == [0, 0, 1]
    torch.testing.assert_close(batch["alpha_values"][:2], prepare(img, box=[[0, 0, 10, 10], [5, 5, 50, 40]],
                                                                  size=32, mode="pad")[1], atol=0, rtol=0)
    torch.testing.assert_close(batch["pixel_values"][2:], prepare(_image(30, 30, seed=1), size=32, mode="pad")[0],
                               atol=0, rtol=0)
    # saved settings survive a round trip
    ip = ah.AlphaCLIPImageProcessor(size=48, mode="squash", image_mean=[0.5] * 3, image_std=[0.25] * 3)
    ip.save_pretrained(tmp_path / "ip")
    again = AutoImageProcessor.from_pretrained(tmp_path / "ip")
    assert (type(again), again.size, again.mode, again.image_mean, again.image_std) == (
        ah.AlphaCLIPImageProcessor, 48, "squash", [0.5] * 3, [0.25] * 3)


def test_processor_rejects_bad_regions(folder):
    path, _ = folder
    ip = AutoImageProcessor.from_pretrained(path)
    img = _image()
    with pytest.raises(ValueError, match=r"mask 0 has size \(H, W\)=\(20, 20\) but the expected size is \(40, 56\)"):
        ip(img, masks=np.ones((20, 20), dtype=bool))
    with pytest.raises(ValueError, match="mask 1 is empty"):
        ip(img, masks=np.stack([np.ones((40, 56)), np.zeros((40, 56))]).astype(np.float32))
    with pytest.raises(ValueError, match=r"mask: float masks must lie in \[0, 1\]"):
        ip(img, masks=np.full((40, 56), 2.0, dtype=np.float32))
    with pytest.raises(TypeError, match="mask has dtype int64 with values other than 0/1"):
        ip(img, masks=np.full((40, 56), 7))
    with pytest.raises(ValueError, match=r"box 0 \[10.0, 10.0, 5.0, 20.0\] is degenerate"):
        ip(img, boxes=[10, 10, 5, 20])
    with pytest.raises(ValueError, match="masks: for a list of 2 images pass a list with one entry per image"):
        ip([img, img], masks=np.ones((40, 56), dtype=bool))
    with pytest.raises(ValueError, match=r"image 1: box 0 .* lies entirely outside the 56x40"):
        ip([img, img], boxes=[None, [[100, 100, 120, 120]]])
    with pytest.raises(ValueError, match="lies entirely outside the centre crop.*use mode='pad'"):
        ip(img, boxes=[[0, 0, 3, 40]])
    with pytest.raises(ValueError, match="return_tensors: only 'pt'"):
        ip(img, return_tensors="np")
    with pytest.raises(ValueError, match="mode: expected 'crop', 'pad' or 'squash'"):
        ah.AlphaCLIPImageProcessor(size=32, mode="stretch")
    processor = AutoProcessor.from_pretrained(path)
    with pytest.raises(ValueError, match="masks/boxes/polygons/rles: given without images"):
        processor(text=["a cat"], boxes=[0, 0, 4, 4])


# ------------------------------------------------------------------------------------------------ pipelines
def test_region_pipeline_ranks_a_constructed_case(tmp_path):
    """Build the text projection so that label i's text embedding IS region i's image embedding; the
    pipeline must then rank label i first for region i (and agree with the core's open_clip scoring)."""
    torch.manual_seed(0)
    model = randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval(), seed=7, scale=1.0)
    img = _image(48, 48, seed=3)
    boxes = [[0, 0, 24, 48], [24, 0, 48, 48], [8, 8, 40, 40]]
    labels = ["left thing", "right thing", "middle thing", "other thing"]
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    tokens = tokenizer([f"a photo of a {x}." for x in labels])
    with torch.no_grad():
        image, alpha = prepare(img, box=boxes, size=32)
        feats = model.encode_image(image.expand(3, -1, -1, -1), alpha)  # [3, 32]
        model.text_projection.copy_(torch.eye(32))
        pooled = model.encode_text(tokens)  # [4, 32], before projection
        w = torch.linalg.lstsq(pooled[:3], feats).solution  # pooled[:3] @ w = feats
        model.text_projection.copy_(w)
        assert torch.allclose(model.encode_text(tokens[:3]), feats, atol=1e-3)
    ah.save_hf(model, tmp_path / "m")
    pipe = pipeline("zero-shot-region-classification", model=str(tmp_path / "m"), precision="fp32")
    assert isinstance(pipe, ah.ZeroShotRegionClassificationPipeline)
    result = pipe(Image.fromarray(img), candidate_labels=labels, boxes=boxes)
    assert len(result) == 3
    for i, ranked in enumerate(result):
        assert ranked[0]["label"] == labels[i]
        assert abs(sum(r["score"] for r in ranked) - 1) < 1e-5
        assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    core = classify_regions(model, tokenizer, img, labels, box=boxes)
    for i, ranked in enumerate(result):
        got = {r["label"]: r["score"] for r in ranked}
        torch.testing.assert_close(torch.tensor([got[x] for x in labels]), core.probs[i], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="candidate_labels: expected at least one label"):
        pipe(img, candidate_labels=[])
    # precision: bf16 vision tower, fp32 text tower; same ranking, probabilities within bf16's rounding
    low = pipeline("zero-shot-region-classification", model=str(tmp_path / "m"), precision="bf16")
    assert low.precision.name == "bf16" and low.model.vision_model.embeddings.patch_embedding.weight.dtype == \
        torch.bfloat16 and low.model.text_model.embeddings.token_embedding.weight.dtype == torch.float32
    for ranked, ref in zip(low(Image.fromarray(img), candidate_labels=labels, boxes=boxes), result):
        assert [r["label"] for r in ranked] == [r["label"] for r in ref]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(ranked, ref)) < 0.02
    default = pipeline("zero-shot-region-classification", model=str(tmp_path / "m"))   # fp32 load: auto
    assert default.precision.requested == "auto"
    half = pipeline("zero-shot-region-classification", model=str(tmp_path / "m"), dtype=torch.float16)
    assert half.precision is None   # the caller's dtype is kept
    assert half.model.vision_model.embeddings.patch_embedding.weight.dtype == torch.float16
    with pytest.raises(ValueError, match="precision: expected one of auto, fp32, bf16, fp16, got 'int8'"):
        pipeline("zero-shot-region-classification", model=str(tmp_path / "m"), precision="int8")


def test_stock_zero_shot_image_pipeline_runs_whole_image(folder):
    path, _ = folder
    img = Image.fromarray(_image())
    stock = pipeline("zero-shot-image-classification", model=str(path))
    region = pipeline("zero-shot-region-classification", model=str(path), precision="fp32")
    labels = ["cat", "dog", "car"]
    a = {r["label"]: r["score"] for r in stock(img, candidate_labels=labels, hypothesis_template="a photo of a {}.")}
    (b,) = region(img, candidate_labels=labels)  # no region = the whole image
    for r in b:
        assert abs(a[r["label"]] - r["score"]) < 1e-5


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_convert_to_hf_and_back(tmp_path, capsys):
    torch.manual_seed(0)
    model = randomize_alpha_conv(open_clip.create_model("alpha-ViT-Tiny-8").eval(), seed=9)
    torch.save(reference_state_dict(model), tmp_path / "alpha.pth")
    torch.save(openai_state_dict(model), tmp_path / "base.pt")
    out = tmp_path / "hf"
    assert cli_main(["convert", str(tmp_path / "alpha.pth"), "--base", str(tmp_path / "base.pt"),
                     "--arch", "alpha-ViT-Tiny-8", "--to", "hf", "-o", str(out)]) == 0
    hf = AutoModel.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(images=_image(70, 90), boxes=[10, 10, 60, 50], text=["a cat"])
    with torch.no_grad():
        got = hf(**inputs)
        ref = model.encode_image(inputs["pixel_values"], inputs["alpha_values"], normalize=True)
    torch.testing.assert_close(got.image_embeds, ref, atol=ATOL, rtol=0)
    assert cli_main(["convert", str(out), "--to", "reference", "-o", str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    expected = reference_state_dict(model)
    assert set(back) == set(expected)
    for k, v in expected.items():
        assert back[k].equal(v), k
    assert cli_main(["convert", str(tmp_path / "nowhere"), "--to", "hf", "-o", str(tmp_path / "x")]) == 2
    assert "source: no such file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ docs, README

def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    """docs/transformers.md's example (the README's transformers section until issue 16)."""
    (block,) = doc_blocks("docs/transformers.md", "Model, processor, pipeline")
    monkeypatch.chdir(tmp_path)
    Image.fromarray(_image(120, 160)).save(tmp_path / "cat.jpg")
    scope = {"__name__": "__docs__"}
    exec(compile(block, "docs/transformers.md", "exec"), scope)
    assert scope["inputs"]["alpha_values"].shape == (2, 1, 64, 64)
    assert scope["out"].logits_per_image.shape == (2, 2)
    assert scope["hidden"].shape == (2, 1 + 64, 64)
    assert type(scope["model"]).__name__ == "AlphaCLIPModel"      # the remote-code class, same name


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    (block,) = readme_blocks("transformers")
    monkeypatch.chdir(tmp_path)
    Image.fromarray(_image(120, 160)).save(tmp_path / "cat.jpg")
    scope = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["inputs"]["alpha_values"].shape == (1, 1, 64, 64)
    probs = scope["model"](**scope["inputs"]).logits_per_image.softmax(-1)
    assert probs.shape == (1, 2) and torch.allclose(probs.sum(-1), torch.ones(1), atol=1e-5)
    assert "tensor([[" in capsys.readouterr().out
