"""Transformers-native alpha LLaVA: model, generate with alpha, processor, Auto*, save/load, converter, README."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.model import CLIP
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, CLIPVisionConfig,
                          LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerFast)

from alphaclip_core.checkpoints import CheckpointError
from alphaclip_core.model import WHOLE_IMAGE_ALPHA, AlphaCLIP
from alphaclip_integrations.hf import (AlphaCLIPImageProcessor, AlphaCLIPVisionConfig, AlphaCLIPVisionModel,
                                      vision_model_from_open_clip)
from alphaclip_integrations.llava import (AlphaLlavaConfig, AlphaLlavaForConditionalGeneration, AlphaLlavaModel,
                                          AlphaLlavaProcessor, convert_llava)
from alphaclip_integrations.llava.convert import alpha_llava_from_llava
from conftest import doc_blocks, readme_blocks, openai_state_dict, randomize_alpha_conv, reference_state_dict

REPO = Path(__file__).resolve().parents[1]
# the tiny CLIP the towers read off the weights: width 128 (2 heads of 64), 3 blocks, 32px, 8px patches
TOWER_CFG = dict(
    embed_dim=32, quick_gelu=True,
    vision_cfg=dict(image_size=32, patch_size=8, width=128, layers=3, head_width=64),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
)
PATCHES = 16
WORDS = ["<unk>", "<pad>", "<s>", "</s>", "USER:", "ASSISTANT:", "describe", "the", "region", "what", "is", "this",
         "?", ".", "a", "cat", "dog", "on", "sofa", "red", "blue", "left", "right"]


# ------------------------------------------------------------------------------------------------ builders
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_tokens(["<image>"], special_tokens=True)
    return tok


def tiny_llava(image_token: int, seed: int = 1) -> LlavaForConditionalGeneration:
    vc = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=2,
                          image_size=32, patch_size=8, projection_dim=32, hidden_act="quick_gelu")
    tc = LlamaConfig(vocab_size=len(WORDS) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                     bos_token_id=2, eos_token_id=3, pad_token_id=1)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc, image_token_index=image_token,
                                                     image_seq_length=PATCHES)).eval()


def write_fixtures(folder: Path, llava_name: str = "llava", ref_name: str = "ref.pth", plain_name: str = "plain.pt"):
    """A tiny transformers LLaVA folder whose CLIP tower has the plain CLIP's weights, the reference-format
    Alpha-CLIP (same weights + a non-zero alpha conv) and the plain CLIP (OpenAI format)."""
    torch.manual_seed(0)
    plain = CLIP(**TOWER_CFG).eval()
    torch.manual_seed(0)
    alpha = randomize_alpha_conv(AlphaCLIP(**TOWER_CFG).eval(), seed=3, scale=0.1)
    torch.save(reference_state_dict(alpha), folder / ref_name)
    torch.save(openai_state_dict(plain), folder / plain_name)
    tok = tiny_tokenizer()
    llava = tiny_llava(tok.convert_tokens_to_ids("<image>"))
    tower_sd = vision_model_from_open_clip(plain).state_dict()
    tower_sd.pop("embeddings.patch_embedding_alpha.weight")
    llava.model.vision_tower.load_state_dict(tower_sd, strict=True)
    llava.save_pretrained(folder / llava_name)
    tok.save_pretrained(folder / llava_name)
    return llava, alpha, plain


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("alpha_llava")
    llava, alpha, plain = write_fixtures(d)
    return {"dir": d, "llava": llava, "alpha_clip": alpha, "plain_clip": plain,
            "alpha": alpha_llava_from_llava(tiny_llava_copy(llava), d / "ref.pth"),
            "zero": alpha_llava_from_llava(tiny_llava_copy(llava), d / "plain.pt")}


def tiny_llava_copy(llava):
    copy = tiny_llava(llava.config.image_token_index)
    copy.load_state_dict(llava.state_dict())
    return copy


def picture(h=40, w=48, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def region_inputs(processor, masks):
    img = picture()
    return processor(images=[img] * len(masks), text=["USER: <image> describe the region . ASSISTANT:"] * len(masks),
                     masks=masks)


def box_mask(y0, y1, x0, x1, h=40, w=48):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def processor():
    return AlphaLlavaProcessor(AlphaCLIPImageProcessor(size=32), tiny_tokenizer(), patch_size=8)


def logits(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw).logits


# ------------------------------------------------------------------------------------------------ equivalence
def test_zero_alpha_conv_gives_base_llava_logits_for_any_alpha(setup, processor):
    base, zero = setup["llava"], setup["zero"]
    assert zero.model.vision_tower.embeddings.patch_embedding_alpha.weight.abs().max() == 0
    inputs = region_inputs(processor, [box_mask(2, 20, 4, 30), None])
    ref = logits(base, {k: v for k, v in inputs.items() if k != "alpha_values"})
    torch.testing.assert_close(logits(zero, inputs), ref, rtol=0, atol=0)  # a masked row + a whole-image row
    no_alpha = {k: v for k, v in inputs.items() if k != "alpha_values"}
    torch.testing.assert_close(logits(zero, no_alpha), ref, rtol=0, atol=0)  # alpha omitted


def test_whole_image_alpha_equals_no_alpha_and_masks_change_logits(setup, processor):
    model = setup["alpha"]
    whole = region_inputs(processor, [None, None])
    torch.testing.assert_close(whole["alpha_values"], torch.full((2, 1, 32, 32), WHOLE_IMAGE_ALPHA))
    no_alpha = {k: v for k, v in whole.items() if k != "alpha_values"}
    # equal up to float32 rounding (the processor computes (1 - 0.5) / 0.26 in float32, the tower's default in
    # float64 then casts; they may differ in the last bit)
    torch.testing.assert_close(logits(model, whole), logits(model, no_alpha), rtol=1e-5, atol=1e-5)
    # a non-zero alpha conv: whole image != region, two regions differ; text before the image is untouched
    masked = region_inputs(processor, [box_mask(0, 14, 0, 16), box_mask(26, 40, 30, 48)])
    a, w = logits(model, masked), logits(model, whole)
    n_before = 1  # "USER:" precedes the image tokens
    assert (a[0] - a[1])[n_before:].abs().amax() > 1e-3
    assert (a[0] - w[0])[n_before:].abs().amax() > 1e-3
    torch.testing.assert_close(a[:, :n_before], w[:, :n_before], rtol=0, atol=0)


def test_tower_features_match_open_clip(setup):
    """The same weights give the same penultimate-layer patch features in open_clip and the HF tower."""
    model, alpha_clip = setup["alpha"], setup["alpha_clip"]
    g = torch.Generator().manual_seed(5)
    px = torch.randn(2, 3, 32, 32, generator=g)
    alpha = torch.full((2, 1, 32, 32), -WHOLE_IMAGE_ALPHA)
    alpha[0, :, :16] = WHOLE_IMAGE_ALPHA
    with torch.no_grad():
        hf = model.model.vision_tower(px, alpha_values=alpha, output_hidden_states=True).hidden_states[-2][:, 1:]
        ref = alpha_clip.visual.forward_intermediates(px, alpha, indices=[1], output_fmt="NLC",
                                                      intermediates_only=True)["image_intermediates"][0]
        feats = model.get_image_features(pixel_values=px, alpha_values=alpha).pooler_output
    torch.testing.assert_close(hf, ref, rtol=1e-4, atol=1e-5)
    proj = model.model.multi_modal_projector
    torch.testing.assert_close(torch.stack(feats), proj(ref), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ generate
class Recorder:
    """Records what reaches the vision tower and the LM forward at each generation step."""

    def __init__(self, model):
        self.tower, self.steps = [], []
        self.handles = [
            model.model.vision_tower.register_forward_pre_hook(self._tower, with_kwargs=True),
            model.register_forward_pre_hook(self._step, with_kwargs=True),
        ]

    def _tower(self, module, args, kwargs):
        self.tower.append(kwargs.get("alpha_values"))

    def _step(self, module, args, kwargs):
        self.steps.append({k: kwargs.get(k) for k in ("pixel_values", "alpha_values", "mm_encoder_outputs")})

    def close(self):
        for h in self.handles:
            h.remove()


def test_generate_passes_alpha_only_with_images(setup, processor):
    """transformers 5 encodes the images once before the prefill (``get_image_features``, which takes
    ``alpha_values``) and hands the features to the prefill step; decoding steps carry no image input."""
    model = setup["alpha"]
    inputs = region_inputs(processor, [box_mask(0, 14, 0, 16), box_mask(26, 40, 30, 48)])
    n = inputs["input_ids"].shape[1]
    outs = {}
    for use_cache in (True, False):
        rec = Recorder(model)
        try:
            outs[use_cache] = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=use_cache,
                                             pad_token_id=1)
        finally:
            rec.close()
        assert len(rec.steps) == 4
        assert len(rec.tower) == 1 and torch.equal(rec.tower[0], inputs["alpha_values"])  # the images' own alpha
        assert all(step["pixel_values"] is None and step["alpha_values"] is None for step in rec.steps)
        with_features = [step["mm_encoder_outputs"] is not None for step in rec.steps]
        assert with_features == ([True, False, False, False] if use_cache else [True] * 4)
    torch.testing.assert_close(outs[True], outs[False], rtol=0, atol=0)
    assert outs[True].shape == (2, n + 4)
    # the first generated token is the argmax of the forward's last logits: the alpha was used
    torch.testing.assert_close(outs[True][:, n], logits(model, inputs)[:, -1].argmax(-1))


def test_prepare_inputs_for_generation_carries_alpha_with_pixel_values(setup, processor):
    """Where raw images travel with the steps (no pre-encoding), alpha goes exactly where they go."""
    from transformers import DynamicCache
    model = setup["alpha"]
    inputs = region_inputs(processor, [box_mask(0, 14, 0, 16), None])
    common = dict(pixel_values=inputs["pixel_values"], alpha_values=inputs["alpha_values"],
                  attention_mask=inputs["attention_mask"])
    ids = inputs["input_ids"]
    first = model.prepare_inputs_for_generation(ids, cache=DynamicCache(config=model.config), is_first_iteration=True,
                                                use_cache=True, **common)
    assert first["pixel_values"] is common["pixel_values"] and first["alpha_values"] is common["alpha_values"]
    later = model.prepare_inputs_for_generation(ids, cache=DynamicCache(config=model.config), is_first_iteration=False,
                                                use_cache=True, next_sequence_length=1, **common)
    assert "pixel_values" not in later and "alpha_values" not in later
    no_cache = model.prepare_inputs_for_generation(ids, is_first_iteration=False, use_cache=False, **common)
    assert no_cache["pixel_values"] is common["pixel_values"] and no_cache["alpha_values"] is common["alpha_values"]
    text_only = model.prepare_inputs_for_generation(ids, is_first_iteration=True, use_cache=True,
                                                    attention_mask=inputs["attention_mask"])
    assert "alpha_values" not in text_only


def test_different_masks_generate_different_tokens(setup, processor):
    model = setup["alpha"]
    prompt = "USER: <image> describe the region . ASSISTANT:"
    img = picture()
    gen = {}
    for name, mask in (("left", box_mask(0, 40, 0, 12)), ("right", box_mask(0, 40, 36, 48)), ("whole", None)):
        inputs = processor(images=img, text=prompt, masks=mask)
        gen[name] = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=1)[0, -8:].tolist()
    assert gen["left"] != gen["right"] and gen["left"] != gen["whole"]
    # the zero-conv model ignores the masks: same tokens for every region
    zero = setup["zero"]
    z = [zero.generate(**processor(images=img, text=prompt, masks=m), max_new_tokens=8, do_sample=False,
                       pad_token_id=1)[0, -8:].tolist() for m in (box_mask(0, 40, 0, 12), box_mask(0, 40, 36, 48))]
    assert z[0] == z[1]


def test_text_only_rows_get_no_alpha(setup, processor):
    """A batch where one prompt has an image and one has none: one image row, one alpha row."""
    model = setup["alpha"]
    inputs = processor(images=[picture()], text=["USER: <image> what is this ? ASSISTANT:", "USER: what is a cat ?"],
                       masks=[box_mask(0, 14, 0, 16)])
    assert inputs["pixel_values"].shape[0] == 1 and inputs["alpha_values"].shape[0] == 1
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=1)
    assert out.shape[0] == 2


def test_alpha_errors(setup, processor):
    model = setup["alpha"]
    inputs = region_inputs(processor, [None, None])
    with pytest.raises(ValueError, match="alpha_values: given without pixel_values"):
        model(input_ids=inputs["input_ids"], alpha_values=inputs["alpha_values"])
    with pytest.raises(ValueError, match="alpha_values: given to generate without pixel_values"):
        model.generate(input_ids=inputs["input_ids"], alpha_values=inputs["alpha_values"], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"alpha_values: expected shape \[2, 1, 32, 32\]"):
        model(**{**inputs, "alpha_values": inputs["alpha_values"][:1]})
    with pytest.raises(ValueError, match="alpha_values: values must lie in"):
        model(**{**inputs, "alpha_values": torch.full_like(inputs["alpha_values"], 3.0)})
    with pytest.raises(ValueError, match="vision_config: an alpha LLaVA needs an AlphaCLIPVisionConfig"):
        AlphaLlavaConfig(vision_config=CLIPVisionConfig(), text_config=LlamaConfig())


# ------------------------------------------------------------------------------------------------ processor
def test_processor_expands_placeholders_and_checks_rows(processor):
    assert processor.num_image_tokens == PATCHES
    img = picture()
    two = processor(images=img, text=["USER: <image> left ?", "USER: <image> right ?"],
                    masks=np.stack([box_mask(0, 14, 0, 16), box_mask(26, 40, 30, 48)]))  # K=2 regions -> 2 rows
    assert two["pixel_values"].shape == (2, 3, 32, 32) and two["alpha_values"].shape == (2, 1, 32, 32)
    image_id = processor.image_token_id
    assert (two["input_ids"] == image_id).sum(1).tolist() == [PATCHES, PATCHES]
    boxed = processor(images=img, text="<image>", boxes=[0, 0, 16, 14])
    torch.testing.assert_close(boxed["alpha_values"], two["alpha_values"][:1], rtol=0, atol=1e-6)
    rgba = Image.fromarray(img)
    rgba.putalpha(Image.fromarray(box_mask(0, 14, 0, 16).astype(np.uint8) * 255))
    via_rgba = processor(images=[rgba, Image.fromarray(img)], text=["<image>", "<image>"])  # alpha channel = region
    torch.testing.assert_close(via_rgba["alpha_values"][:1], two["alpha_values"][:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(via_rgba["alpha_values"][1], torch.full((1, 32, 32), WHOLE_IMAGE_ALPHA))
    torch.testing.assert_close(via_rgba["pixel_values"], two["pixel_values"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="images: RGBA images carry their region in their alpha channel"):
        processor(images=rgba, text="<image>", boxes=[0, 0, 5, 5])
    with pytest.raises(ValueError, match=r"text: holds 1 <image> placeholder\(s\) but the images and their regions "
                                         r"give 2 image row\(s\)"):
        processor(images=img, text="<image> what ?", masks=np.stack([box_mask(0, 5, 0, 5), box_mask(5, 9, 5, 9)]))
    with pytest.raises(ValueError, match="masks/boxes/polygons/rles: given without images"):
        processor(text="what ?", masks=box_mask(0, 5, 0, 5))
    with pytest.raises(ValueError, match="text: holds 1 <image> placeholder"):
        processor(text="<image> what ?")
    with pytest.raises(ValueError, match="text: required"):
        processor(images=img)
    with pytest.raises(ValueError, match="mask 0 is empty"):
        processor(images=img, text="<image>", masks=np.zeros((40, 48), bool))


# ------------------------------------------------------------------------------------------------ Auto*, save/load
def test_auto_registration_and_save_load_round_trip(setup, processor, tmp_path):
    model = setup["alpha"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, AlphaLlavaConfig) and config.model_type == "alpha_llava"
    assert isinstance(config.vision_config, AlphaCLIPVisionConfig)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is AlphaLlavaForConditionalGeneration
    assert isinstance(loaded.model.vision_tower, AlphaCLIPVisionModel)
    torch.testing.assert_close(loaded.model.vision_tower.embeddings.patch_embedding_alpha.weight,
                               model.model.vision_tower.embeddings.patch_embedding_alpha.weight, rtol=0, atol=0)
    proc = AutoProcessor.from_pretrained(tmp_path)
    assert type(proc) is AlphaLlavaProcessor and proc.num_image_tokens == PATCHES and proc.patch_size == 8
    inputs = region_inputs(proc, [box_mask(2, 20, 4, 30), None])
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), rtol=0, atol=0)
    assert type(AutoModel.from_pretrained(tmp_path)) is AlphaLlavaModel


# ------------------------------------------------------------------------------------------------ converter
def test_convert_llava_folder(setup, tmp_path):
    d = setup["dir"]
    out = convert_llava(d / "llava", d / "ref.pth", tmp_path / "alpha")
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    proc = AutoProcessor.from_pretrained(out)
    assert isinstance(model, AlphaLlavaForConditionalGeneration) and isinstance(proc, AlphaLlavaProcessor)
    # only the vision tower changed; its alpha conv is the checkpoint's
    src = LlavaForConditionalGeneration.from_pretrained(d / "llava").state_dict()
    new = model.state_dict()
    for k, v in src.items():
        if not k.startswith("model.vision_tower."):
            torch.testing.assert_close(new[k], v, rtol=0, atol=0)
    conv1_alpha = setup["alpha_clip"].visual.conv1_alpha.weight
    torch.testing.assert_close(new["model.vision_tower.embeddings.patch_embedding_alpha.weight"], conv1_alpha)
    assert proc.image_processor.mode == "crop"  # the source has no padding image processor
    # the converted folder behaves like the in-memory conversion
    inputs = region_inputs(proc, [box_mask(2, 20, 4, 30), None])
    torch.testing.assert_close(logits(model, inputs), logits(setup["alpha"], inputs), rtol=1e-5, atol=1e-5)


def test_convert_legacy_llava_hf_layout(setup, tmp_path):
    """llava-hf folders on the hub keep transformers 4.x key names; they convert the same."""
    import shutil

    from safetensors.torch import load_file, save_file
    d = setup["dir"]
    legacy = tmp_path / "legacy"
    shutil.copytree(d / "llava", legacy)

    def to_legacy(path):
        renamed = {}
        for k, v in load_file(path).items():
            if k.startswith("model.language_model."):
                k = "language_model.model." + k[len("model.language_model."):]
            elif k.startswith("lm_head."):
                k = "language_model." + k
            elif k.startswith("model.vision_tower."):
                k = "vision_tower.vision_model." + k[len("model.vision_tower."):]
            elif k.startswith("model.multi_modal_projector."):
                k = k[len("model."):]
            renamed[k] = v
        assert not any(k.startswith("model.") for k in renamed)
        save_file(renamed, path, metadata={"format": "pt"})

    to_legacy(legacy / "model.safetensors")
    # llava-hf's image processor config (LlavaImageProcessor): do_pad -> the alpha processor pads too
    (legacy / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "LlavaImageProcessor", "do_pad": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25], "crop_size": {"height": 32, "width": 32}}))
    out = convert_llava(legacy, d / "ref.pth", tmp_path / "alpha")
    ip = AutoProcessor.from_pretrained(out).image_processor
    assert ip.mode == "pad" and ip.image_mean == [0.5, 0.5, 0.5] and ip.image_std == [0.25, 0.25, 0.25]
    out = convert_llava(legacy, d / "ref.pth", tmp_path / "alpha", mode="crop")
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    inputs = region_inputs(AutoProcessor.from_pretrained(out), [box_mask(2, 20, 4, 30), None])
    expected = logits(setup["alpha"], inputs)
    torch.testing.assert_close(logits(model, inputs), expected, rtol=1e-5, atol=1e-5)
    # an alpha LLaVA folder in the legacy layout loads too (LLaVA's key renaming is registered for alpha_llava)
    to_legacy(out / "model.safetensors")
    again = AutoModelForImageTextToText.from_pretrained(out).eval()
    torch.testing.assert_close(logits(again, inputs), expected, rtol=1e-5, atol=1e-5)


def test_convert_errors_and_cli(setup, tmp_path, capsys):
    from alphaclip_integrations.llava.__main__ import main
    d = setup["dir"]
    torch.manual_seed(0)
    other = dict(TOWER_CFG, vision_cfg=dict(TOWER_CFG["vision_cfg"], layers=2))
    torch.save(reference_state_dict(AlphaCLIP(**other)), tmp_path / "l2.pth")
    with pytest.raises(CheckpointError, match="does not fit the LLaVA vision tower \\(num_hidden_layers: LLaVA 3 vs "
                                              "checkpoint 2\\)"):
        convert_llava(d / "llava", tmp_path / "l2.pth", tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="llava_folder: .* has no config.json"):
        convert_llava(tmp_path / "nowhere", d / "ref.pth", tmp_path / "bad")
    assert main(["convert", str(d / "llava"), str(d / "ref.pth"), "-o", str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "cli"), AlphaLlavaConfig)


# ------------------------------------------------------------------------------------------------ docs, README

def test_docs_examples_run(tmp_path, monkeypatch):
    """docs/llava.md's two examples (the README's LLaVA section until issue 16)."""
    pytest.importorskip("llava", reason="the page's original-LLaVA example needs llava-torch")
    blocks = doc_blocks("docs/llava.md")
    assert len(blocks) == 2
    write_fixtures(tmp_path, llava_name="llava-1.5-7b-hf", ref_name="clip_l14@336_grit1m_fultune_8xe.pth")
    Image.fromarray(picture(240, 320)).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    from alphaclip_integrations.llava import original  # the page installs its hook; undo it afterwards

    spaces = []
    try:
        for block in blocks:
            spaces.append({"__name__": "__docs__"})
            exec(compile(block, "docs/llava.md", "exec"), spaces[-1])
        assert original.installed()
        hf_ns, llava_ns = spaces[0], spaces[1]
        assert isinstance(hf_ns["model"], AlphaLlavaForConditionalGeneration)
        assert hf_ns["inputs"]["alpha_values"].shape == (2, 1, 32, 32)  # two regions -> two rows
        assert llava_ns["features"].shape == (1, PATCHES, 128)
        assert llava_ns["images"].shape == (1, 4, 32, 32)
    finally:
        original.uninstall()


def test_readme_example_runs(tmp_path, monkeypatch):
    (block,) = readme_blocks("LLaVA")
    write_fixtures(tmp_path, llava_name="llava-1.5-7b-hf", ref_name="clip_l14@336_grit1m_fultune_8xe.pth")
    Image.fromarray(picture(240, 320)).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), scope)
    assert isinstance(scope["model"], AlphaLlavaForConditionalGeneration)
    alpha = scope["inputs"]["alpha_values"]
    assert alpha.shape == (1, 1, 32, 32)                                      # one box -> one row
    # normalised: +1.9231 on the box, -1.9231 around it (resized edges in between)
    assert alpha.max().item() == pytest.approx(1.9231, abs=1e-4) and alpha.min().item() == pytest.approx(-1.9231, abs=1e-4)
    prompt = scope["inputs"]["input_ids"].shape[1]
    assert scope["out"].shape[0] == 1 and prompt < scope["out"].shape[1] <= prompt + 40   # new tokens generated
