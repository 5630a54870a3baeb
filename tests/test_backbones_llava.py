"""A transformers LLaVA whose vision tower is SigLIP gets the alpha tower: equal to the base with a zero
conv, the configured feature layer selected, weights from an open_clip Alpha-SigLIP, save/load, convert."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from transformers import (AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, SiglipVisionConfig)

import alphaclip_integrations.open_clip  # noqa: F401
import backbones_kit as kit
from alphaclip_core import normalize_alpha
from alphaclip_core.checkpoints import CheckpointError, save_safetensors
from alphaclip_integrations.hf import AlphaSiglipVisionConfig, AlphaSiglipVisionModel, siglip_vision_model_from_open_clip
from alphaclip_integrations.llava import AlphaLlavaForConditionalGeneration, convert_llava
from alphaclip_integrations.llava.convert import alpha_llava_from_llava
from test_llava_hf import WORDS, tiny_tokenizer  # the tiny LLaVA tokenizer (<image> = len(WORDS))

PATCHES = 16  # 32px / 8px patches, no class token: LLaVA's 'full' strategy keeps all 16


def tiny_siglip_llava(layer: int = -2, seed: int = 1) -> LlavaForConditionalGeneration:
    """LLaVA with a SigLIP tower shaped like the toy open_clip SigLIP (Toy-SL-8) and without its head, as
    SigLIP-based LLaVAs load it."""
    vc = SiglipVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=8, hidden_act="gelu", vision_use_head=False)
    tc = LlamaConfig(vocab_size=len(WORDS) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                     bos_token_id=2, eos_token_id=3, pad_token_id=1)
    torch.manual_seed(seed)
    config = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=len(WORDS), image_seq_length=PATCHES,
                         vision_feature_layer=layer, vision_feature_select_strategy="full")
    return LlavaForConditionalGeneration(config).eval()


def _inputs(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, 1, 32, 32, generator=g) > 0.5).float()
    ids = torch.tensor([[2, 4] + [len(WORDS)] * PATCHES + [6, 7, 8, 9, 5]] * n)
    return {"input_ids": ids, "pixel_values": torch.randn(n, 3, 32, 32, generator=g),
            "alpha_values": normalize_alpha(masks)}


@pytest.fixture(scope="module")
def alpha_siglip(tmp_path_factory):
    """An open_clip Alpha-SigLIP (Toy-SL-8) with a non-zero alpha conv, saved as training writes it."""
    kit.register(tmp_path_factory.mktemp("toy_configs"))
    torch.manual_seed(2)
    model = open_clip.create_model("alpha-Toy-SL-8").eval()
    with torch.no_grad():
        model.visual.conv1_alpha.weight.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("siglip") / "alpha-siglip.safetensors"
    save_safetensors(model, path)
    return model, path


def _copy(llava):
    other = tiny_siglip_llava(llava.config.vision_feature_layer)
    other.load_state_dict(llava.state_dict())
    return other


def test_zero_conv_gives_the_siglip_llava_bit_for_bit():
    base = tiny_siglip_llava()
    model = alpha_llava_from_llava(_copy(base))
    assert type(model.model.vision_tower) is AlphaSiglipVisionModel
    assert isinstance(model.config.vision_config, AlphaSiglipVisionConfig)
    assert torch.count_nonzero(model.model.vision_tower.embeddings.patch_embedding_alpha.weight) == 0
    inputs = _inputs()
    plain = {k: v for k, v in inputs.items() if k != "alpha_values"}
    with torch.no_grad():
        ref = base(**plain).logits
        torch.testing.assert_close(model(**inputs).logits, ref, rtol=0, atol=0)
        torch.testing.assert_close(model(**plain).logits, ref, rtol=0, atol=0)


@pytest.mark.parametrize("layer", [-2, -1, 1])
def test_the_configured_layer_of_the_alpha_tower_feeds_the_projector(alpha_siglip, layer):
    oc, path = alpha_siglip
    model = alpha_llava_from_llava(tiny_siglip_llava(layer), path)
    inputs = _inputs()
    with torch.no_grad():
        feats = torch.stack(model.get_image_features(inputs["pixel_values"], inputs["alpha_values"]).pooler_output)
        tower = siglip_vision_model_from_open_clip(oc)  # the same weights through the open_clip -> HF converter
        hidden = tower(pixel_values=inputs["pixel_values"], alpha_values=inputs["alpha_values"],
                       output_hidden_states=True).hidden_states
        want = model.model.multi_modal_projector(hidden[layer])
        other = model.model.multi_modal_projector(hidden[-1 if layer != -1 else -2])
        whole = torch.stack(model.get_image_features(inputs["pixel_values"]).pooler_output)
    assert feats.shape == (2, PATCHES, 32)
    torch.testing.assert_close(feats, want, rtol=0, atol=1e-6)
    # another layer would give other features, far outside the tolerance above (timm's small init keeps the
    # blocks' residual updates small: ~5e-4 here); and the alpha reaches the tower
    assert (feats - other).abs().max() > 1e-4
    assert (feats - whole).abs().max() > 1e-2
    torch.testing.assert_close(model.model.vision_tower.embeddings.patch_embedding_alpha.weight,
                               oc.visual.conv1_alpha.weight, rtol=0, atol=0)


def test_save_load_and_convert_a_siglip_llava_folder(alpha_siglip, tmp_path):
    oc, path = alpha_siglip
    base = tiny_siglip_llava()
    base.save_pretrained(tmp_path / "llava")
    tiny_tokenizer().save_pretrained(tmp_path / "llava")
    out = convert_llava(tmp_path / "llava", path, tmp_path / "alpha-llava")
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(model) is AlphaLlavaForConditionalGeneration
    assert type(model.model.vision_tower) is AlphaSiglipVisionModel
    direct = alpha_llava_from_llava(_copy(base), path)
    inputs = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, direct(**inputs).logits, rtol=0, atol=0)
    processor = AutoProcessor.from_pretrained(out)
    assert processor.num_image_tokens == PATCHES  # no CLS token to count
    assert processor.image_processor.mode == "squash"
    picture = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    enc = processor(images=picture, text="USER: <image> describe the region . ASSISTANT:")
    assert int((enc["input_ids"] == len(WORDS)).sum()) == PATCHES and enc["alpha_values"].shape == (1, 1, 32, 32)


def test_a_checkpoint_of_another_shape_or_kind_is_refused(alpha_siglip, tmp_path):
    _, path = alpha_siglip
    llava = tiny_siglip_llava()
    llava.config.vision_config.num_hidden_layers = 3
    with pytest.raises(CheckpointError, match=r"does not fit the LLaVA vision tower \(num_hidden_layers: LLaVA 3 vs "
                                              r"checkpoint 2\)"):
        alpha_llava_from_llava(llava, path)
    torch.manual_seed(0)
    save_safetensors(open_clip.create_model("alpha-Toy-EVA-8"), tmp_path / "eva.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the LLaVA vision tower"):
        alpha_llava_from_llava(tiny_siglip_llava(), tmp_path / "eva.safetensors")
    save_safetensors(open_clip.create_model("alpha-Toy-ViT-8"), tmp_path / "vit.safetensors")
    with pytest.raises(CheckpointError, match="holds no open_clip SigLIP vision tower"):
        alpha_llava_from_llava(tiny_siglip_llava(), tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match="base: not used for a SigLIP tower"):
        alpha_llava_from_llava(tiny_siglip_llava(), path, tmp_path / "vit.safetensors")
