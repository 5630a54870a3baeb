"""open_clip: registered names, the factory hook, pretrained tags, local-dir folders, one-call load."""
import json

import open_clip
import pytest
import torch

import alphaclip_integrations.open_clip as aoc
from alphaclip_core import AlphaCLIP, normalize_alpha
from alphaclip_core.checkpoints import save_safetensors
from conftest import openai_state_dict, randomize_alpha_conv, reference_state_dict

TINY = "alpha-ViT-Tiny-8"


@pytest.fixture
def tiny_trained():
    torch.manual_seed(0)
    return randomize_alpha_conv(open_clip.create_model(TINY).eval(), seed=5, scale=0.2)


def _inputs(n=2):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, 64, 64, generator=g), normalize_alpha(torch.rand(n, 1, 64, 64, generator=g))


def test_names_are_registered_with_the_real_shapes():
    for name in aoc.MODEL_NAMES:
        assert name in open_clip.list_models()
    cfg = open_clip.get_model_config("alpha-ViT-L-14-336")
    assert cfg["vision_cfg"] == {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14}
    assert cfg["quick_gelu"] is True and cfg["alpha_clip"] is True
    assert open_clip.get_model_config("alpha-ViT-B-16")["vision_cfg"]["patch_size"] == 16
    tok = open_clip.get_tokenizer("alpha-ViT-L-14")
    assert tuple(tok(["a cat"]).shape) == (1, 77)


def test_factory_builds_alpha_clip_and_plain_names_stay_plain():
    model = open_clip.create_model(TINY)
    assert isinstance(model, AlphaCLIP)
    assert tuple(model.visual.conv1_alpha.weight.shape) == (64, 1, 8, 8)
    assert torch.count_nonzero(model.visual.conv1_alpha.weight) == 0
    plain = open_clip.create_model("ViT-B-32", pretrained=None)
    assert type(plain) is open_clip.CLIP


def test_combined_safetensors_loads_through_open_clip(tmp_path, tiny_trained):
    save_safetensors(tiny_trained, tmp_path / "alpha-tiny.safetensors")
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=str(tmp_path / "alpha-tiny.safetensors"))
    x, a = _inputs()
    torch.testing.assert_close(model.eval().encode_image(x, a), tiny_trained.encode_image(x, a), atol=0, rtol=0)


def test_local_dir_round_trip(tmp_path, tiny_trained):
    folder = aoc.save_pretrained(tiny_trained, tmp_path / "folder")
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["alpha_clip"] is True and cfg["preprocess_cfg"]["size"] == [64, 64]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    assert isinstance(model, AlphaCLIP)
    x, a = _inputs()
    torch.testing.assert_close(model.eval().encode_image(x, a), tiny_trained.encode_image(x, a), atol=0, rtol=0)
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(["a photo of a cat"])
    torch.testing.assert_close(model.encode_text(tokens), tiny_trained.encode_text(tokens), atol=0, rtol=0)
    with pytest.raises(ValueError, match="model: expected an AlphaCLIP"):
        aoc.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")


def test_pretrained_tags_resolve_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHACLIP_CACHE", str(tmp_path))
    assert set(open_clip.list_pretrained_tags_by_model("alpha-ViT-L-14")) == {"grit1m", "grit20m", "grit1m_mim"}
    assert set(open_clip.list_pretrained_tags_by_model("alpha-ViT-L-14-336")) == {"grit1m", "grit20m"}
    assert sum(len(t) for t in aoc.RELEASED.values()) == 8
    with pytest.raises(RuntimeError, match=r"(?s)alpha-ViT-B-16-grit20m.safetensors, which does not exist.*"
                                           r"clip_b16_grit20m_fultune_2xe.pth.*alphaclip convert "
                                           r"clip_b16_grit20m_fultune_2xe.pth --base ViT-B-16.pt --arch alpha-ViT-B-16"):
        open_clip.create_model("alpha-ViT-B-16", pretrained="grit20m")
    # a tag whose file is present loads from it (a tiny model registered under a released tag for the test)
    monkeypatch.setitem(aoc.RELEASED, TINY, {"grit1m": ("x.pth", "y.pt")})
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY, {"grit1m": aoc._LocalTagCfg(TINY, "grit1m")})
    torch.manual_seed(3)
    src = randomize_alpha_conv(open_clip.create_model(TINY).eval())
    save_safetensors(src, aoc.pretrained_path(TINY, "grit1m"))
    model = open_clip.create_model(TINY, pretrained="grit1m").eval()
    x, a = _inputs()
    torch.testing.assert_close(model.encode_image(x, a), src.encode_image(x, a), atol=0, rtol=0)


def test_one_call_load_of_reference_files(tmp_path, tiny_trained):
    torch.save(reference_state_dict(tiny_trained), tmp_path / "clip_tiny_alpha.pth")
    torch.save(openai_state_dict(tiny_trained), tmp_path / "ViT-Tiny.pt")
    model, preprocess = aoc.load(TINY, tmp_path / "clip_tiny_alpha.pth", base=tmp_path / "ViT-Tiny.pt")
    assert not model.training
    x, a = _inputs()
    torch.testing.assert_close(model.encode_image(x, a), tiny_trained.encode_image(x, a), atol=0, rtol=0)
    from PIL import Image
    assert tuple(preprocess(Image.new("RGB", (90, 70))).shape) == (3, 64, 64)
    model16, _ = aoc.load(TINY, tmp_path / "clip_tiny_alpha.pth", base=tmp_path / "ViT-Tiny.pt", precision="bf16")
    assert model16.visual.conv1_alpha.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model16.encode_image(x, a).float(), tiny_trained.encode_image(x, a), atol=0.1, rtol=0.05)
