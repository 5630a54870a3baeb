"""The LLaVA processors' ``alpha_threshold``: soft edges (the reference's training / ImageNet-S path) or the
reference LLaVA demo's hard threshold after the resize; and ``run`` on a machine without CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessor

from alphaclip_core.alpha import PairedTransform
from alphaclip_integrations.hf import AlphaCLIPImageProcessor
from alphaclip_integrations.llava import AlphaLlavaProcessor
from alphaclip_integrations.llava.inputs import DEMO_ALPHA_THRESHOLD, binarize_alpha
from test_llava_hf import tiny_tokenizer

FG = float((torch.tensor(1.0) - 0.5) / 0.26)  # normalize_alpha(1) in float32


def demo_alpha(mask: np.ndarray, size: int, pad: bool) -> torch.Tensor:
    """The reference demo's region input, spelled out: the mask as a white-on-black RGB picture (padded to a
    square with CLIP's mean colour for LLaVA-1.5's 'pad' aspect ratio) through CLIP's image processor; a pixel
    is foreground when its three normalised channels sum to more than 6."""
    picture = Image.fromarray(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2))
    if pad:
        side = max(picture.size)
        square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in OPENAI_DATASET_MEAN))
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        picture = square
    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    summed = proc(picture, return_tensors="pt")["pixel_values"][0].sum(0)
    return torch.where(summed > 6, FG, -FG)


def ellipse(w: int, h: int) -> np.ndarray:
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).ellipse([w * 0.2, h * 0.3, w * 0.7, h * 0.8], fill=255)
    return np.array(m) > 0


def test_demo_threshold_is_the_channel_sum_rule():
    norm = lambda v: sum((v - m) / s for m, s in zip(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))  # noqa: E731
    assert norm(DEMO_ALPHA_THRESHOLD) == pytest.approx(6.0, abs=1e-9)
    assert DEMO_ALPHA_THRESHOLD == pytest.approx(0.98648, abs=1e-5)
    assert norm(1.0) > 6 > norm(0.98)
    soft = torch.tensor([0.0, 0.5, 0.98, 0.99, 1.0]).sub(0.5).div(0.26)
    torch.testing.assert_close(binarize_alpha(soft, "demo"), torch.tensor([-FG, -FG, -FG, FG, FG]))
    assert binarize_alpha(soft, None) is soft
    with pytest.raises(ValueError, match=r"alpha_threshold: expected None \(soft edges\), 'demo' or a float"):
        binarize_alpha(soft, 1.5)


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("wh", [(400, 300), (300, 450)])
def test_processor_demo_threshold_matches_the_reference_demo(pad, wh):
    w, h = wh
    mask = ellipse(w, h)
    image = np.zeros((h, w, 3), np.uint8)
    proc = AlphaLlavaProcessor(AlphaCLIPImageProcessor(size=336, mode="pad" if pad else "crop"), tiny_tokenizer(),
                               patch_size=14, alpha_threshold="demo")
    hard = proc(images=Image.fromarray(image), text="<image>", masks=mask)["alpha_values"][0, 0]
    soft = proc(images=Image.fromarray(image), text="<image>", masks=mask, alpha_threshold=None)["alpha_values"][0, 0]
    demo = demo_alpha(mask, 336, pad)
    assert set(hard.unique().tolist()) == {-FG, FG} and len(soft.unique()) > 10       # hard vs soft edges
    # only edge pixels differ: the demo resizes the white-on-black picture with PIL's bicubic, we resize
    # the mask bilinearly; measured 0.03-0.08% of the 336x336 map for these shapes
    assert (hard != demo).float().mean() < 0.002
    assert ((soft > 0) != (demo > 0)).float().mean() > (hard != demo).float().mean()
    torch.testing.assert_close(hard, binarize_alpha(PairedTransform(336, "pad" if pad else "crop")(image, mask)[1][0, 0],
                                                    DEMO_ALPHA_THRESHOLD))


def test_processor_threshold_is_saved(tmp_path):
    proc = AlphaLlavaProcessor(AlphaCLIPImageProcessor(size=32), tiny_tokenizer(), patch_size=8, alpha_threshold="demo")
    proc.save_pretrained(tmp_path)
    assert AlphaLlavaProcessor.from_pretrained(tmp_path).alpha_threshold == "demo"
    with pytest.raises(ValueError, match="alpha_threshold"):
        AlphaLlavaProcessor(AlphaCLIPImageProcessor(size=32), tiny_tokenizer(), patch_size=8, alpha_threshold="hard")


def test_original_llava_processor_threshold_and_run_without_cuda(monkeypatch, capsys):
    pytest.importorskip("llava", reason="llava-torch is not installed (pip install --no-deps llava-torch==1.2.2.post1)")
    from alphaclip_integrations.llava.__main__ import main as entry_main
    from alphaclip_integrations.llava.original import RGBAImageProcessor

    mask = ellipse(60, 40)
    image = np.zeros((40, 60, 3), np.uint8)
    rgba = RGBAImageProcessor(32, "pad", alpha_threshold="demo")(image, masks=mask)["pixel_values"]
    hf = AlphaLlavaProcessor(AlphaCLIPImageProcessor(size=32, mode="pad"), tiny_tokenizer(), patch_size=8,
                             alpha_threshold="demo")(images=Image.fromarray(image), text="<image>", masks=mask)
    torch.testing.assert_close(rgba[:, 3:], hf["alpha_values"], rtol=0, atol=0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in ("requests", "accelerate")
                        else real(name, *a))
    assert entry_main(["run", "--model-path", "x", "--image-file", "y.jpg", "--query", "what?"]) == 2
    err = capsys.readouterr().err
    assert "'run' (llava.eval.run_llava) needs a CUDA GPU" in err and "transformers-native" in err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else object() if name == "requests"
                        else real(name, *a))
    assert entry_main(["llava.eval.run_llava", "--query", "x"]) == 2
    assert "needs accelerate: pip install accelerate" in capsys.readouterr().err
