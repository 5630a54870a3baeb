"""The alpha vision tower: zero-init equivalence, where the alpha enters, and its input checks."""
import pytest
import torch

from alphaclip_core import WHOLE_IMAGE_ALPHA, AlphaCLIP, AlphaVisionTransformer, add_alpha, normalize_alpha
from conftest import TINY_CFG, randomize_alpha_conv


def _images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _alphas(n=3, seed=0):
    raw = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed + 100))
    return normalize_alpha(raw)


def test_conv1_alpha_shape_and_zero_init(alpha_clip):
    w = alpha_clip.visual.conv1_alpha.weight
    assert tuple(w.shape) == (64, 1, 8, 8)
    assert alpha_clip.visual.conv1_alpha.bias is None
    assert torch.count_nonzero(w) == 0


def test_zero_init_equals_plain_clip_for_any_alpha(plain_clip, alpha_clip):
    alpha_clip.load_state_dict(plain_clip.state_dict(), strict=False)
    x = _images()
    ref = plain_clip.encode_image(x)
    for alpha in (None, _alphas(), torch.full((3, 1, 32, 32), -WHOLE_IMAGE_ALPHA)):
        out = alpha_clip.encode_image(x, alpha)
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    # intermediates too
    ref_i = plain_clip.visual.forward_intermediates(x)
    out_i = alpha_clip.visual.forward_intermediates(x, alpha=_alphas())
    for a, b in zip(out_i["image_intermediates"], ref_i["image_intermediates"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_add_alpha_converts_in_place_and_keeps_outputs(plain_clip):
    x = _images()
    ref = plain_clip.encode_image(x)
    model = add_alpha(plain_clip)
    assert isinstance(model, AlphaCLIP) and isinstance(model.visual, AlphaVisionTransformer)
    torch.testing.assert_close(model.encode_image(x, _alphas()), ref, atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="model: expected an open_clip CLIP"):
        add_alpha(torch.nn.Linear(2, 2))


def test_alpha_enters_the_patch_tokens_before_positional_embedding(plain_clip, alpha_clip):
    """A constant alpha c adds c * sum(W_alpha) to every PATCH token (not the class token), before
    the positional embedding: the same as a plain tower with that added to pos_embed[1:]."""
    alpha_clip.load_state_dict(plain_clip.state_dict(), strict=False)
    randomize_alpha_conv(alpha_clip)
    c = -0.7
    shift = c * alpha_clip.visual.conv1_alpha.weight.sum(dim=(1, 2, 3))
    with torch.no_grad():
        plain_clip.visual.positional_embedding[1:] += shift
    x = _images()
    out = alpha_clip.encode_image(x, torch.full((3, 1, 32, 32), c))
    torch.testing.assert_close(out, plain_clip.encode_image(x), atol=1e-5, rtol=1e-5)


def test_nonzero_alpha_conv_makes_alpha_matter(alpha_clip):
    randomize_alpha_conv(alpha_clip)
    x = _images()
    a1, a2 = _alphas(seed=1), _alphas(seed=2)
    f1, f2 = alpha_clip.encode_image(x, a1), alpha_clip.encode_image(x, a2)
    assert (f1 - f2).abs().max() > 1e-2
    # None means the whole image: exactly an all-foreground normalised alpha
    whole = torch.full((3, 1, 32, 32), WHOLE_IMAGE_ALPHA)
    torch.testing.assert_close(alpha_clip.encode_image(x), alpha_clip.encode_image(x, whole), atol=0, rtol=0)
    assert abs(WHOLE_IMAGE_ALPHA - 1.9231) < 1e-4


def test_forward_and_intermediates_honour_alpha(alpha_clip):
    randomize_alpha_conv(alpha_clip)
    x, a = _images(2), _alphas(2)
    tokens = torch.zeros(2, 77, dtype=torch.long)
    img, txt, scale = alpha_clip(x, tokens, alpha=a)
    torch.testing.assert_close(img, alpha_clip.encode_image(x, a, normalize=True))
    inter = alpha_clip.forward_intermediates(x, alpha=a, normalize=False)
    torch.testing.assert_close(inter["image_features"], alpha_clip.encode_image(x, a), atol=1e-6, rtol=0)
    inter_whole = alpha_clip.visual.forward_intermediates(x)
    assert (inter_whole["image_features"] - inter["image_features"]).abs().max() > 1e-3
    assert alpha_clip.visual._pending_alpha is None


def test_model_casts_inputs_to_its_dtype(alpha_clip):
    randomize_alpha_conv(alpha_clip)
    x, a = _images(2), _alphas(2)
    ref = alpha_clip.encode_image(x, a)
    out = alpha_clip.encode_image(x.double(), a.half())
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=0)  # alpha rounded to fp16


@pytest.mark.parametrize("bad,exc,msg", [
    (torch.zeros(2, 1, 32, 32), ValueError, r"alpha: expected shape \[3, 1, 32, 32\]"),
    (torch.zeros(3, 32, 32), ValueError, r"alpha: expected shape \[3, 1, 32, 32\]"),
    (torch.zeros(3, 1, 16, 16), ValueError, r"alpha: expected shape"),
    (torch.zeros(3, 1, 32, 32, dtype=torch.long), TypeError, "alpha: expected a floating point"),
    (torch.full((3, 1, 32, 32), 3.0), ValueError, r"alpha: values must lie in \[-1.9231, 1.9231\]"),
    (torch.ones(3, 1, 32, 32).numpy(), TypeError, "alpha: expected a torch.Tensor"),
])
def test_bad_alpha_is_rejected(alpha_clip, bad, exc, msg):
    with pytest.raises(exc, match=msg):
        alpha_clip.encode_image(_images(), bad)


def test_raw_mask_warns(alpha_clip):
    with pytest.warns(UserWarning, match="looks like a raw mask"):
        alpha_clip.encode_image(_images(), torch.ones(3, 1, 32, 32))


def test_from_plain_rejects_non_vit():
    with pytest.raises(TypeError, match="visual: expected open_clip's VisionTransformer"):
        AlphaVisionTransformer.from_plain(torch.nn.Conv2d(3, 3, 1))


def test_model_cfg_is_recorded(alpha_clip):
    assert alpha_clip.model_cfg["alpha_clip"] is True
    assert alpha_clip.model_cfg["vision_cfg"]["width"] == TINY_CFG["vision_cfg"]["width"]
    assert alpha_clip.model_cfg["quick_gelu"] is True
