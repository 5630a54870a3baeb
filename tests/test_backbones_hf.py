"""Alpha-SigLIP in transformers: equal to SigLIP with a zero conv, the same numbers as open_clip, exact
round trips open_clip <-> transformers (functions, folders, the CLI), Auto* loading, remote code, processor."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import open_clip
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, SiglipConfig, SiglipModel

import alphaclip_integrations.hf as ah
import alphaclip_integrations.open_clip as aoc
import backbones_kit as kit
from alphaclip_core import WHOLE_IMAGE_ALPHA, normalize_alpha, prepare
from alphaclip_core.checkpoints import read_state_dict, save_safetensors
from alphaclip_core.cli import main as cli_main
from test_llava_hf import tiny_tokenizer  # a word-level tokenizer built in-process

ATOL = 2e-5  # fp32, same weights, different kernels (timm SDPA / fused MHA vs split q/k/v eager): measured ~1e-7
NAME = "alpha-Toy-SL-8"
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, pad_token_id=1, bos_token_id=None, eos_token_id=None)


@pytest.fixture(scope="module", autouse=True)
def toys(tmp_path_factory):
    kit.register(tmp_path_factory.mktemp("toy_configs"))


@pytest.fixture(scope="module")
def trained():
    """The toy open_clip SigLIP with a non-zero alpha conv and a moved logit bias."""
    torch.manual_seed(0)
    model = open_clip.create_model(NAME).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        model.visual.conv1_alpha.weight.copy_(torch.randn(model.visual.conv1_alpha.weight.shape, generator=g))
        model.logit_bias.fill_(-7.5)
    # what a SigLIP pretrained tag sets (open_clip's _slpcfg): mean/std 0.5, a plain resize
    open_clip.model.set_model_preprocess_cfg(model, dict(model.visual.preprocess_cfg, mean=(0.5,) * 3, std=(0.5,) * 3,
                                                         resize_mode="squash"))
    return model


def _inputs(n=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, 1, 32, 32, generator=g) > 0.5).float()
    masks[0] = 1.0
    return torch.randn(n, 3, 32, 32, generator=g), normalize_alpha(masks), torch.randint(2, 100, (n, 16), generator=g)


def _plain_siglip(seed=0):
    torch.manual_seed(seed)
    return SiglipModel(SiglipConfig(vision_config=VISION, text_config=TEXT)).eval()


# ------------------------------------------------------------------------------------------------ equivalence
def test_plain_siglip_weights_give_siglip_bit_for_bit(tmp_path):
    plain = _plain_siglip()
    plain.save_pretrained(tmp_path / "siglip")
    config = ah.AlphaSiglipConfig(vision_config=VISION, text_config=TEXT)
    config.save_pretrained(tmp_path / "siglip")  # the same weights, the alpha model type
    alpha = AutoModel.from_pretrained(tmp_path / "siglip").eval()
    assert type(alpha) is ah.AlphaSiglipModel
    assert torch.count_nonzero(alpha.vision_model.embeddings.patch_embedding_alpha.weight) == 0
    pixels, alpha_values, ids = _inputs()
    with torch.no_grad():
        ref = plain(input_ids=ids, pixel_values=pixels, return_loss=True, output_hidden_states=True)
        for a in (alpha_values, None):
            out = alpha(input_ids=ids, pixel_values=pixels, alpha_values=a, return_loss=True, output_hidden_states=True)
            for key in ("logits_per_image", "image_embeds", "text_embeds", "loss"):
                torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
            for x, y in zip(out.vision_model_output.hidden_states, ref.vision_model_output.hidden_states):
                torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_alpha_changes_the_output_once_the_conv_is_nonzero():
    model = ah.AlphaSiglipModel(ah.AlphaSiglipConfig(vision_config=VISION, text_config=TEXT)).eval()
    with torch.no_grad():
        model.vision_model.embeddings.patch_embedding_alpha.weight.normal_(0, 0.5)
    pixels, alpha_values, _ = _inputs()
    with torch.no_grad():
        region = model.get_image_features(pixels, alpha_values).pooler_output
        whole = model.get_image_features(pixels, torch.full_like(alpha_values, WHOLE_IMAGE_ALPHA)).pooler_output
        default = model.get_image_features(pixels).pooler_output
    torch.testing.assert_close(default, whole, rtol=0, atol=0)
    rel = (region - whole).norm(dim=-1) / whole.norm(dim=-1)
    assert rel[0] < 1e-5 and (rel[1:] > 1e-2).all()
    with pytest.raises(ValueError, match=r"alpha_values: expected shape \[3, 1, 32, 32\]"):
        model.get_image_features(pixels, alpha_values[:2])
    with pytest.raises(ValueError, match=r"alpha_values: values must lie in \[-1.9231, 1.9231\]"):
        model.get_image_features(pixels, alpha_values * 3)


# ------------------------------------------------------------------------------------------------ open_clip <-> HF
def test_open_clip_to_transformers_and_back_is_exact(trained):
    hf = ah.siglip_model_from_open_clip(trained)
    assert hf.config.vision_config.hidden_act == "gelu" and hf.config.text_config.hidden_act == "gelu_pytorch_tanh"
    assert hf.config.open_clip_cfg == trained.model_cfg
    back = ah.siglip_model_to_open_clip(hf)
    assert type(back) is type(trained)
    sd, ref = back.state_dict(), trained.state_dict()
    assert set(sd) == set(ref)
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k
    # the key maps alone are inverse to each other
    hf_sd = ah.siglip_to_hf_state_dict(ref)
    assert set(hf_sd) == set(hf.state_dict())
    for k, v in ah.hf_to_siglip_state_dict(hf_sd).items():
        assert torch.equal(v.reshape(ref[k].shape), ref[k]), k
    # same numbers
    pixels, alpha_values, ids = _inputs()
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=pixels, alpha_values=alpha_values)
        img = trained.encode_image(pixels, alpha_values, normalize=True)
        txt = trained.encode_text(ids, normalize=True)
        logits = trained.logit_scale.exp() * img @ txt.t() + trained.logit_bias
        tower = ah.siglip_vision_model_from_open_clip(trained)(pixel_values=pixels, alpha_values=alpha_values)
    torch.testing.assert_close(out.image_embeds, img, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.text_embeds, txt, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits_per_image, logits, atol=ATOL * 100, rtol=0)
    torch.testing.assert_close(tower.pooler_output, trained.encode_image(pixels, alpha_values), atol=ATOL, rtol=0)
    # an architecture named instead of the stored config
    named = ah.siglip_model_to_open_clip(hf, NAME)
    assert all(torch.equal(named.state_dict()[k], v) for k, v in ref.items())


def test_what_transformers_siglip_cannot_express_is_refused():
    eva = open_clip.create_model("alpha-Toy-EVA-8")
    with pytest.raises(ValueError, match=r"timm vision tower uses .*class/register tokens.*no attention-pooling"):
        ah.siglip_model_from_open_clip(eva)
    assert not ah.is_siglip(eva) and ah.is_siglip(open_clip.create_model(NAME))
    with pytest.raises(ValueError, match="open_clip_model: the transformers config has no open_clip_cfg"):
        ah.siglip_model_to_open_clip(ah.AlphaSiglipModel(ah.AlphaSiglipConfig(vision_config=VISION, text_config=TEXT)))


def test_folders_and_the_cli_round_trip_exactly(trained, tmp_path, capsys):
    folder = ah.save_siglip_hf(trained, tmp_path / "hf", tokenizer=tiny_tokenizer())
    assert AutoConfig.from_pretrained(folder).model_type == "alpha_siglip"
    model = AutoModel.from_pretrained(folder)
    assert type(model) is ah.AlphaSiglipModel
    vision = AutoModel.from_pretrained(folder, config=AutoConfig.from_pretrained(folder).vision_config)
    assert type(vision) is ah.AlphaSiglipVisionModel
    back = ah.load_open_clip_from_hf(folder)
    for k, v in trained.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # alphaclip convert: open_clip file -> transformers folder -> open_clip file
    save_safetensors(trained, tmp_path / "alpha.safetensors")
    assert cli_main(["convert", str(tmp_path / "alpha.safetensors"), "--arch", NAME, "--to", "hf",
                     "-o", str(tmp_path / "cli_hf")]) == 0
    assert cli_main(["convert", str(tmp_path / "cli_hf"), "-o", str(tmp_path / "again.safetensors")]) == 0
    again = read_state_dict(tmp_path / "again.safetensors")
    for k, v in trained.state_dict().items():
        assert torch.equal(again[k], v), k
    # a plain open_clip SigLIP becomes an Alpha-SigLIP with a zero conv
    torch.manual_seed(0)
    save_safetensors(open_clip.create_model("Toy-SL-8"), tmp_path / "plain.safetensors")
    assert cli_main(["convert", str(tmp_path / "plain.safetensors"), "--arch", NAME, "-o",
                     str(tmp_path / "zero.safetensors")]) == 0
    zero = read_state_dict(tmp_path / "zero.safetensors")
    assert torch.count_nonzero(zero["visual.trunk.patch_embed.conv1_alpha.weight"]) == 0


_REMOTE = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("alphaclip_core", "alphaclip_integrations", "alphaclip_train"):
                raise ImportError("blocked " + name)
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel
    inputs = torch.load("inputs.pt", weights_only=True)
    m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(m).__module__.startswith("transformers_modules."), type(m).__module__
    with torch.no_grad():
        out = m(pixel_values=inputs["pixel"], alpha_values=inputs["alpha"], input_ids=inputs["ids"]).logits_per_image
    assert not [k for k in sys.modules if k.startswith("alphaclip")]
    torch.save({"logits": out}, "outputs.pt")
""")


def test_trust_remote_code_without_alpha_clip(trained, tmp_path):
    folder = ah.save_siglip_hf(trained, tmp_path / "hf")
    assert {"modeling_alpha_siglip.py", "configuration_alpha_siglip.py", "modeling_alpha_clip.py"} <= \
        {p.name for p in folder.iterdir()}
    pixels, alpha_values, ids = _inputs()
    torch.save({"pixel": pixels, "alpha": alpha_values, "ids": ids}, tmp_path / "inputs.pt")
    (tmp_path / "remote.py").write_text(_REMOTE)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-I", "remote.py", str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "outputs.pt", weights_only=True)["logits"]
    with torch.no_grad():
        ref = ah.AlphaSiglipModel.from_pretrained(folder)(pixel_values=pixels, alpha_values=alpha_values,
                                                          input_ids=ids).logits_per_image
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ processor
def test_processor_uses_the_core_transform_and_siglip_text_conventions(trained, tmp_path):
    folder = ah.save_siglip_hf(trained, tmp_path / "hf", tokenizer=tiny_tokenizer(), mode="pad")
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is ah.AlphaSiglipProcessor and processor.context_length == 16
    ip = processor.image_processor
    assert (ip.size, ip.mode, ip.image_mean) == (32, "pad", [0.5, 0.5, 0.5])
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    mask = np.zeros((40, 56), bool)
    mask[5:25, 12:40] = True
    out = processor(images=img, masks=mask, text=["a red circle", "a photo of a blue square"])
    assert set(out) == {"input_ids", "pixel_values", "alpha_values"}  # no attention mask: SigLIP pools the last token
    pad = processor.tokenizer.pad_token_id
    assert tuple(out["input_ids"].shape) == (2, 16) and out["input_ids"][0, -1].item() == pad  # padded to the context
    ref_pixels, ref_alpha = prepare(img, mask=mask, size=32, mode="pad", mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.testing.assert_close(out["pixel_values"], ref_pixels.expand(1, -1, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(out["alpha_values"], ref_alpha, rtol=0, atol=0)
    assert ah.AlphaSiglipImageProcessor.from_open_clip(trained).mode == "squash"  # the model's resize mode
    default = ah.AlphaSiglipImageProcessor()
    assert (default.mode, default.image_mean, default.image_std) == ("squash", [0.5] * 3, [0.5] * 3)
    with pytest.raises(TypeError, match="tokenizer: expected a transformers tokenizer"):
        ah.AlphaSiglipProcessor.from_open_clip(trained, open_clip.get_tokenizer(NAME))
    with pytest.raises(ValueError, match="context_length: expected a positive int"):
        ah.AlphaSiglipProcessor(ip, tiny_tokenizer(), context_length=0)
