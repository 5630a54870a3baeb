"""diffusers integration: Alpha-CLIP as the image encoder of the image-variation and Shap-E pipelines.

Tiny random UNet / VAE / prior / CLIP towers are built in-process (the image-variation ones in
``diffusers_kit``, shared with the app's Variations panel tests; the vision tower has conftest's TINY_CFG
shape: 32 px, 8 px patches, width 64, 2 blocks, projection 32); nothing is downloaded; CPU only.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from diffusers import (HeunDiscreteScheduler, PriorTransformer, ShapEImg2ImgPipeline,  # noqa: E402
                       StableDiffusionImageVariationPipeline)
from diffusers.pipelines.shap_e import ShapERenderer  # noqa: E402
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection  # noqa: E402,E501

from alphaclip_core import prepare  # noqa: E402
from alphaclip_core.checkpoints import CheckpointError  # noqa: E402
from alphaclip_core.cli import main  # noqa: E402
from alphaclip_core.model import AlphaCLIP  # noqa: E402
from alphaclip_integrations.diffusers import (AlphaCLIPImageVariationPipeline,  # noqa: E402
                                             AlphaCLIPShapEImg2ImgPipeline, alpha_encoder_from_checkpoint,
                                             convert_pipeline, load_pipeline, region_variations)
from alphaclip_integrations.diffusers.generate import variation_sheet  # noqa: E402
from alphaclip_integrations.hf import AlphaCLIPVisionModel, AlphaCLIPVisionModelWithProjection  # noqa: E402

from conftest import TINY_CFG, doc_blocks, reference_state_dict  # noqa: E402
import diffusers_kit as kit  # noqa: E402
from diffusers_kit import FAST, S, VISION, one_thread, quiet, stock_pipeline, write_folders  # noqa: E402,F401

BOX = [4, 6, 30, 34]        # inside the 56x40 test image and its centre crop
OTHER_BOX = [30, 4, 52, 36]


def _image(h=40, w=56, seed=0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def _mask(h=40, w=56) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[10:30, 20:44] = True
    return m


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _shap_e_parts():
    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, embedding_dim=16, num_embeddings=32,
                             num_layers=1, clip_embed_dim=32, embedding_proj_dim=VISION["hidden_size"],
                             additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer",
                             embedding_proj_norm_type="layer", encoder_hid_proj_type=None, added_emb_type=None)
    renderer = ShapERenderer(param_shapes=((8, 93), (8, 8), (8, 8), (8, 8)), d_latent=16, d_hidden=8, n_output=12,
                             background=(0.1, 0.1, 0.1))
    scheduler = HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                      use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)
    return prior.eval(), renderer.eval(), scheduler


@pytest.fixture(scope="module")
def alpha_model() -> AlphaCLIP:
    """The Alpha-CLIP 'checkpoint' (open_clip, TINY_CFG) with a non-zero alpha conv."""
    return kit.alpha_model()


@pytest.fixture(scope="module")
def clip_encoder() -> CLIPVisionModelWithProjection:
    return kit.clip_encoder()


@pytest.fixture(scope="module")
def stock(clip_encoder) -> StableDiffusionImageVariationPipeline:
    return stock_pipeline(clip_encoder)


def _alpha_twin(clip_encoder, zero=True, cls=AlphaCLIPVisionModelWithProjection, seed=3):
    """An Alpha-CLIP encoder with the stock encoder's weights; zero or random alpha conv."""
    enc = cls(cls.config_class(**VISION)).eval()
    missing = enc.load_state_dict(clip_encoder.state_dict(), strict=False).missing_keys
    assert missing == [k for k in enc.state_dict() if k.endswith("patch_embedding_alpha.weight")]
    if not zero:
        w = next(p for n, p in enc.named_parameters() if n.endswith("patch_embedding_alpha.weight"))
        with torch.no_grad():
            w.copy_(torch.randn(w.shape, generator=_gen(seed)) * 0.5)
    return enc


@pytest.fixture(scope="module")
def zero_pipe(stock, clip_encoder) -> AlphaCLIPImageVariationPipeline:
    return quiet(AlphaCLIPImageVariationPipeline.from_stock(stock, _alpha_twin(clip_encoder)))


@pytest.fixture(scope="module")
def alpha_pipe(stock, clip_encoder) -> AlphaCLIPImageVariationPipeline:
    return quiet(AlphaCLIPImageVariationPipeline.from_stock(stock, _alpha_twin(clip_encoder, zero=False)))


class _Capture:
    """Records the alpha_values every encoder forward receives."""

    def __init__(self, module):
        self.alphas = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.alphas.append(kwargs.get("alpha_values"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ------------------------------------------------------------------------------------------------ running
def test_runs_end_to_end_with_the_stock_outputs(alpha_pipe, stock):
    image = _image()
    pix, _ = prepare(image, size=S)
    steps, ref_steps = [], []
    out = alpha_pipe(image, box=BOX, num_images_per_prompt=2, generator=_gen(), callback=lambda i, t, x: steps.append(i),
                     **FAST)
    ref = stock(pix, num_images_per_prompt=2, generator=_gen(), callback=lambda i, t, x: ref_steps.append(i), **FAST)
    assert type(out) is type(ref) and out.nsfw_content_detected is None
    assert len(out.images) == 2 and all(isinstance(im, Image.Image) and im.size == (S, S) for im in out.images)
    assert [im.size for im in out.images] == [im.size for im in ref.images]
    assert steps == ref_steps and len(steps) >= 2   # the stock callbacks, at the stock steps
    arr = alpha_pipe(image, box=BOX, generator=_gen(), output_type="np", **FAST).images
    assert arr.shape == (1, S, S, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    latents, nsfw = alpha_pipe(image, box=BOX, generator=_gen(), output_type="latent", return_dict=False, **FAST)
    assert latents.shape == (1, 4, S // 2, S // 2) and nsfw is None
    # K regions of one image -> K conditioning rows, num_images_per_prompt each
    two = alpha_pipe(image, box=[BOX, OTHER_BOX], generator=_gen(), output_type="np", **FAST)
    assert two.images.shape == (2, S, S, 3)


# ------------------------------------------------------------------------------------------------ faithfulness
@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
def test_zero_alpha_conv_reproduces_the_stock_pipeline_exactly(zero_pipe, stock, guidance_scale):
    image = _image()
    pix, _ = prepare(image, size=S)   # the stock pipeline takes pre-processed pixel values as a tensor
    kw = dict(num_images_per_prompt=2, guidance_scale=guidance_scale, output_type="np", **FAST)
    ref = stock(pix, generator=_gen(7), **kw).images
    whole = zero_pipe(image, generator=_gen(7), **kw).images
    tensor = zero_pipe(pix, generator=_gen(7), **kw).images
    boxed = zero_pipe(image, box=BOX, generator=_gen(7), **kw).images   # a zero alpha conv ignores the region
    assert np.abs(whole - ref).max() == 0 and np.abs(tensor - ref).max() == 0 and np.abs(boxed - ref).max() == 0
    other = stock(pix, generator=_gen(8), **kw).images
    assert np.abs(other - ref).max() > 1e-3   # the comparison can fail: another seed gives other images


def test_nonzero_alpha_conv_follows_the_region(alpha_pipe, clip_encoder):
    image, mask = _image(), _mask()
    enc = alpha_pipe.image_encoder
    cases = {"whole": {}, "box": {"box": BOX}, "other box": {"box": OTHER_BOX}, "mask": {"mask": mask},
             "pad box": {"box": BOX, "mode": "pad"}}
    embeds = {}
    for name, region in cases.items():
        with _Capture(enc) as cap:
            out = alpha_pipe(image, generator=_gen(), output_type="np", **region, **FAST).images
        # one encoder call per generation, and it got exactly the core's alpha
        want = prepare(image, mask=region.get("mask"), box=region.get("box"), size=S,
                       mode=region.get("mode", "crop"))[1]
        assert len(cap.alphas) == 1 and torch.equal(cap.alphas[0], want), name
        embeds[name] = (alpha_pipe.encode_region(image, **region), out)
    names = list(embeds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (embeds[a][0] - embeds[b][0]).abs().max() > 1e-3, (a, b)
            assert np.abs(embeds[a][1] - embeds[b][1]).max() > 1e-3, (a, b)
    # the stock CLIP (same weights, no alpha conv) does not see the region at all
    pix = prepare(image, size=S)[0]
    with torch.no_grad():
        plain = clip_encoder(pix).image_embeds
    twin_zero = _alpha_twin(clip_encoder)
    with torch.no_grad():
        assert torch.equal(twin_zero(pix, alpha_values=prepare(image, box=BOX, size=S)[1]).image_embeds, plain)


def test_embedding_matches_the_open_clip_model(alpha_model, tmp_path):
    """The converted encoder computes what the open_clip Alpha-CLIP computes on the same pixels and alpha."""
    torch.save(reference_state_dict(alpha_model), tmp_path / "alpha.pth")
    enc = alpha_encoder_from_checkpoint(tmp_path / "alpha.pth", CLIPVisionConfig(**VISION))
    assert isinstance(enc, AlphaCLIPVisionModelWithProjection)
    image = _image()
    for region in ({}, {"box": BOX}, {"mask": _mask()}):
        pix, alpha = prepare(image, size=S, **region)
        with torch.no_grad():
            ours = enc(pix, alpha_values=alpha).image_embeds
            ref = alpha_model.encode_image(pix, alpha)
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    tower = alpha_encoder_from_checkpoint(tmp_path / "alpha.pth", CLIPVisionConfig(**VISION), with_projection=False)
    assert type(tower) is AlphaCLIPVisionModel


# ------------------------------------------------------------------------------------------------ converter
@pytest.fixture(scope="module")
def folders(tmp_path_factory, stock, alpha_model):
    """A stock folder (save_pretrained), a reference-format checkpoint, and the converted folder."""
    return write_folders(tmp_path_factory.mktemp("diffusers"), stock, alpha_model)


def test_converter_round_trip(folders, stock, alpha_model):
    out = folders / "alpha-pipe"
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AlphaCLIPImageVariationPipeline"
    assert index["image_encoder"] == ["alphaclip_integrations.diffusers", "AlphaCLIPVisionModelWithProjection"]
    pipe = quiet(AlphaCLIPImageVariationPipeline.from_pretrained(out))
    assert isinstance(pipe.image_encoder, AlphaCLIPVisionModelWithProjection)
    # everything but the encoder is the stock folder's, bit for bit
    for name in ("unet", "vae"):
        ours, ref = getattr(pipe, name).state_dict(), getattr(stock, name).state_dict()
        assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert pipe.feature_extractor.size == S and pipe.feature_extractor.mode == "crop"
    assert pipe.feature_extractor.image_mean == pytest.approx(stock.feature_extractor.image_mean)
    # the encoder is the checkpoint's Alpha-CLIP: its embedding of a region is open_clip's
    image = _image()
    pix, alpha = prepare(image, box=BOX, size=S)
    with torch.no_grad():
        torch.testing.assert_close(pipe.encode_region(image, box=BOX), alpha_model.encode_image(pix, alpha),
                                   atol=2e-5, rtol=1e-5)
    # and it generates what the same components assembled in memory generate
    direct = quiet(AlphaCLIPImageVariationPipeline.from_stock(stock, pipe.image_encoder))
    a = pipe(image, box=BOX, generator=_gen(), output_type="np", **FAST).images
    b = direct(image, box=BOX, generator=_gen(), output_type="np", **FAST).images
    assert np.abs(a - b).max() == 0
    # the converted folder converts again (swap the checkpoint) with another geometry
    again = convert_pipeline(out, folders / "alpha.pth", folders / "again", mode="pad")
    assert AlphaCLIPImageVariationPipeline.from_pretrained(again).feature_extractor.mode == "pad"


def test_converter_and_constructor_errors(folders, tmp_path, stock, clip_encoder):
    with pytest.raises(ValueError, match=r"stock: .* has no model_index.json.*StableDiffusionImageVariationPipeline"):
        convert_pipeline(folders / "stock" / "unet", folders / "alpha.pth", tmp_path / "x")
    other = tmp_path / "text2img"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match=r"stock: .* holds a StableDiffusionPipeline pipeline; expected one of"):
        convert_pipeline(other, folders / "alpha.pth", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match=r"stock: .* is not a folder"):
        convert_pipeline(tmp_path / "missing", folders / "alpha.pth", tmp_path / "x")
    with pytest.raises(FileExistsError, match=r"output: .* exists"):
        convert_pipeline(folders / "stock", folders / "alpha.pth", folders / "alpha-pipe")
    # a checkpoint of another architecture (wider tower) does not fit the stock encoder
    torch.manual_seed(0)
    wide = AlphaCLIP(**dict(TINY_CFG, vision_cfg=dict(TINY_CFG["vision_cfg"], width=96, head_width=32))).eval()
    torch.save(reference_state_dict(wide), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"checkpoint: .*wide.pth does not fit the pipeline's image encoder"):
        convert_pipeline(folders / "stock", tmp_path / "wide.pth", tmp_path / "x")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match=r"checkpoint: .*junk.pth is in format 'unknown'"):
        convert_pipeline(folders / "stock", tmp_path / "junk.pth", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # a stock encoder or processor in the alpha pipeline is refused, naming the argument
    parts = dict(stock.components)
    with pytest.raises(TypeError, match=r"image_encoder: expected alphaclip_integrations.hf.AlphaCLIPVisionModelWith"):
        AlphaCLIPImageVariationPipeline(**parts, requires_safety_checker=False)
    parts["image_encoder"] = _alpha_twin(clip_encoder)
    with pytest.raises(TypeError, match=r"feature_extractor: expected .*AlphaCLIPImageProcessor"):
        AlphaCLIPImageVariationPipeline(**parts, requires_safety_checker=False)


def test_bad_inputs_name_the_argument(alpha_pipe):
    image = _image()
    with pytest.raises(ValueError, match=r"mask 0 is empty"):
        alpha_pipe(image, mask=np.zeros((40, 56), dtype=bool), **FAST)
    with pytest.raises(ValueError, match=r"box 0 .* lies entirely outside the 56x40"):
        alpha_pipe(image, box=[60, 0, 80, 20], **FAST)
    with pytest.raises(ValueError, match=r"box 0 .* is degenerate"):
        alpha_pipe(image, box=[20, 20, 10, 30], **FAST)
    with pytest.raises(ValueError, match=r"mask 0 has size \(H, W\)=\(20, 20\)"):
        alpha_pipe(image, mask=np.ones((20, 20), dtype=bool), **FAST)
    with pytest.raises(ValueError, match=r"mask 0 lies entirely outside the centre crop"):
        alpha_pipe(image, box=[0, 0, 6, 40], **FAST)   # in the image, but cropped away in 'crop' mode
    pix = prepare(image, size=S)[0]
    with pytest.raises(ValueError, match=r"box: regions are given in the pixel frame of a raw image"):
        alpha_pipe(pix, box=BOX, **FAST)
    with pytest.raises(ValueError, match=r"alpha_values: expected a tensor of shape \[1, 1, 32, 32\]"):
        alpha_pipe(pix, alpha_values=torch.zeros(1, 1, 16, 16), **FAST)
    with pytest.raises(ValueError, match=r"image: a tensor is taken as pre-processed pixel_values \[B, 3, 32, 32\]"):
        alpha_pipe(torch.rand(3, 40, 56), **FAST)
    with pytest.raises(TypeError, match=r"image: expected a PIL image"):
        alpha_pipe("picture.png", **FAST)
    # pre-processed pixels + explicit alpha are exactly the region call
    pix, alpha = prepare(image, box=BOX, size=S)
    a = alpha_pipe(pix, alpha_values=alpha, generator=_gen(), output_type="np", **FAST).images
    b = alpha_pipe(image, box=BOX, generator=_gen(), output_type="np", **FAST).images
    assert np.abs(a - b).max() == 0


# ------------------------------------------------------------------------------------------------ Shap-E
def _stock_shap_e() -> ShapEImg2ImgPipeline:
    prior, renderer, scheduler = _shap_e_parts()
    torch.manual_seed(2)
    clip = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    return quiet(ShapEImg2ImgPipeline(prior=prior, image_encoder=clip, image_processor=CLIPImageProcessor(
        size=S, crop_size=S), scheduler=scheduler, shap_e_renderer=renderer))


def test_shap_e_swap(tmp_path, alpha_model):
    stock = _stock_shap_e()
    clip = stock.image_encoder
    image = _image()
    pix = prepare(image, size=S)[0]
    kw = dict(output_type="latent", guidance_scale=3.0, **FAST)
    zero = quiet(AlphaCLIPShapEImg2ImgPipeline.from_stock(stock, _alpha_twin(clip, cls=AlphaCLIPVisionModel)))
    ref = stock(pix, generator=_gen(), **kw).images
    assert ref.shape == (1, 32, 16)
    assert torch.equal(zero(image, generator=_gen(), **kw).images, ref)
    assert torch.equal(zero(image, box=BOX, generator=_gen(), **kw).images, ref)
    alpha = quiet(AlphaCLIPShapEImg2ImgPipeline.from_stock(stock, _alpha_twin(clip, zero=False,
                                                                                cls=AlphaCLIPVisionModel)))
    with _Capture(alpha.image_encoder) as cap:
        boxed = alpha(image, box=BOX, generator=_gen(), **kw).images
    assert torch.equal(cap.alphas[0], prepare(image, box=BOX, size=S)[1])
    assert (boxed - alpha(image, box=OTHER_BOX, generator=_gen(), **kw).images).abs().max() > 1e-4
    # converter: a stock Shap-E folder + the Alpha-CLIP checkpoint -> Shap-E folder that loads
    stock.save_pretrained(tmp_path / "shap-e")
    torch.save(reference_state_dict(alpha_model), tmp_path / "alpha.pth")
    out = convert_pipeline(tmp_path / "shap-e", tmp_path / "alpha.pth", tmp_path / "shap-e-alpha")
    loaded = quiet(AlphaCLIPShapEImg2ImgPipeline.from_pretrained(out))
    assert type(loaded.image_encoder) is AlphaCLIPVisionModel
    pix, a = prepare(image, box=BOX, size=S)
    with torch.no_grad():   # the tokens Shap-E reads are the open_clip tower's (before ln_post)
        tokens = loaded.image_encoder(pix, alpha_values=a).last_hidden_state
    assert tokens.shape == (1, 1 + (S // 8) ** 2, VISION["hidden_size"])
    assert loaded(image, box=BOX, generator=_gen(), **kw).images.shape == (1, 32, 16)


# ------------------------------------------------------------------------------------------------ app + CLI
def test_region_variations_and_sheet(folders):
    pipe = load_pipeline(folders / "alpha-pipe", progress=False)
    image, mask = _image(), _mask()
    images = region_variations(pipe, image, mask=mask, box=BOX, num_images=1, seed=3, **FAST)
    assert len(images) == 2 and all(im.size == (S, S) for im in images)
    direct = pipe(image, mask=mask, box=BOX, generator=_gen(3), **FAST).images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, direct))
    sheet = variation_sheet(image, images, mask=mask, box=BOX)
    assert sheet.size == (round(56 * S / 40) + S, 2 * S)
    assert np.array_equal(np.asarray(sheet)[S:, -S:], np.asarray(images[1]))   # row 2 (the box), its variation
    with pytest.raises(ValueError, match=r"num_images: expected a positive int"):
        region_variations(pipe, image, num_images=0)
    with pytest.raises(ValueError, match=r"pipeline: .* holds a StableDiffusionImageVariationPipeline"):
        load_pipeline(folders / "stock")


def test_cli_generate_variation(folders, tmp_path, capsys):
    image, mask = _image(), _mask()
    image.save(tmp_path / "in.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out, sheet = tmp_path / "out.png", tmp_path / "sheet.png"
    rc = main(["generate", "variation", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
               "--pipeline", str(folders / "alpha-pipe"), "-o", str(out),
               "--num-images", "2", "--steps", "2", "--seed", "5", "--sheet", str(sheet)])
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.strip() == str(out)
    assert "2/2" in captured.err   # diffusers' progress bar
    grid = np.asarray(Image.open(out))
    assert grid.shape == (S, 2 * S, 3) and Image.open(sheet).size == (round(56 * S / 40) + 2 * S, S)
    pipe = load_pipeline(folders / "alpha-pipe", progress=False)
    want = region_variations(pipe, image, mask=mask, num_images=2, seed=5, **FAST)
    assert np.array_equal(grid[:, :S], np.asarray(want[0])) and np.array_equal(grid[:, S:], np.asarray(want[1]))
    # two regions, one image each: rows of the grid
    rc = main(["generate", "variation", str(tmp_path / "in.png"), "--pipeline", str(folders / "alpha-pipe"),
               "--box", ",".join(map(str, BOX)), "--box", ",".join(map(str, OTHER_BOX)),
               "-o", str(tmp_path / "two.png"), "--steps", "1"])
    assert rc == 0 and Image.open(tmp_path / "two.png").size == (S, 2 * S)
    capsys.readouterr()
    # bad input: a message naming the argument, exit 2, no traceback
    bad = {"box 0 .* lies entirely outside": ["--box", "60,0,80,20"],
           "--pipeline: .* is not a folder": ["--pipeline", str(tmp_path / "nope")],
           "pipeline: .* holds a StableDiffusionImageVariationPipeline": ["--pipeline", str(folders / "stock")],
           "--mask: no such file": ["--mask", str(tmp_path / "missing.png")],
           r"--mask: .*alpha\.pth: not an image PIL can read": ["--mask", str(folders / "alpha.pth")],
           "--device: 'gpu0' is not a torch device": ["--device", "gpu0"]}
    for message, extra in bad.items():
        args = ["generate", "variation", str(tmp_path / "in.png"), "-o", str(tmp_path / "bad.png"), "--steps", "1"]
        if "--pipeline" not in extra:
            args += ["--pipeline", str(folders / "alpha-pipe")]
        assert main(args + extra) == 2, message
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert __import__("re").search(f"error: {message}", err), (message, err)
    assert not (tmp_path / "bad.png").exists()


def test_cli_generate_convert(folders, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["generate", "convert", str(folders / "stock"), "--checkpoint", str(folders / "alpha.pth"),
                 "-o", str(out), "--mode", "pad"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert AlphaCLIPImageVariationPipeline.from_pretrained(out).feature_extractor.mode == "pad"
    assert main(["generate", "convert", str(folders / "stock"), "--checkpoint", str(folders / "alpha.pth"),
                 "-o", str(out)]) == 2
    assert "error: output: " in capsys.readouterr().err


def test_safety_checker_runs_on_the_alpha_processor(stock, clip_encoder):
    """The stock safety checker reads the generated images through the pipeline's processor (now Alpha-CLIP's)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    torch.manual_seed(4)
    checker = StableDiffusionSafetyChecker(CLIPConfig(vision_config=VISION, projection_dim=32, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))).eval()
    parts = dict(stock.components, safety_checker=checker)
    checked = quiet(StableDiffusionImageVariationPipeline(**parts))
    alpha = quiet(AlphaCLIPImageVariationPipeline.from_stock(checked, _alpha_twin(clip_encoder)))
    image = _image()
    out = alpha(image, generator=_gen(), output_type="np", **FAST)
    ref = checked(prepare(image, size=S)[0], generator=_gen(), output_type="np", **FAST)
    assert out.nsfw_content_detected == ref.nsfw_content_detected == [False]
    assert np.abs(out.images - ref.images).max() == 0


def test_docs_examples_run(tmp_path, monkeypatch, stock, alpha_model):
    """docs/generation.md's python blocks, on the files they name (tiny stand-ins written here)."""
    stock.save_pretrained(tmp_path / "sd-image-variations")
    _stock_shap_e().save_pretrained(tmp_path / "shap-e-img2img")
    torch.save(reference_state_dict(alpha_model), tmp_path / "clip_l14_grit20m_fultune_2xe.pth")
    _image(240, 320, seed=1).save(tmp_path / "photo.jpg")
    region = np.zeros((240, 320), dtype=np.uint8)
    region[60:200, 90:230] = 255
    Image.fromarray(region).save(tmp_path / "region.png")
    monkeypatch.chdir(tmp_path)
    blocks = doc_blocks("docs/generation.md")
    assert len(blocks) == 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/generation.md", "exec"), namespace)
    assert len(namespace["boxed"]) == 2 and Image.open("variation.png").size == (S, S)
    assert len(namespace["images"]) == 2 and Image.open("sheet.png").size == (round(320 * S / 240) + 2 * S, S)
    assert namespace["latents"].shape == (1, 32, 16)
    assert not np.array_equal(np.asarray(namespace["masked"][0]), np.asarray(namespace["whole"][0]))
