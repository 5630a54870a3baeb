"""``alphaclip locate``: where is a phrase in an image (given regions or SAM's automatic masks)."""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from PIL import Image

import alphaclip_integrations.open_clip as aoc
from alphaclip_core.cli import main as alphaclip_main
from alphaclip_train.eval.locate import auto_masks, locate, render
from eval_kit import COLORS, build_color_clip, quadrants, tiny_sam as _tiny_sam, tokenizer

BOXES = [[0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64], [32, 32, 64, 64]]   # TL TR BL BR


@pytest.fixture(scope="module")
def model():
    return build_color_clip({c: c for c in COLORS})


def test_locate_ranks_the_region_the_phrase_names(model):
    image = Image.fromarray(quadrants("red", "green", "blue", "yellow"))
    res = locate(model, tokenizer(), image, "yellow", boxes=BOXES, batch_size=3)   # 2 batches
    assert res.order[0].item() == 3 and res.masks.shape == (4, 64, 64)
    assert res.cosine[3].item() == pytest.approx(1.0, abs=0.02)      # the region's colour is exactly 'yellow'
    assert res.probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    best = res.top(2)
    assert best[0]["index"] == 3 and best[0]["box"] == [32, 32, 64, 64]
    # masks and boxes mix; masks come first
    m = np.zeros((64, 64), bool)
    m[:32, 32:] = True
    res2 = locate(model, tokenizer(), image, "green", masks=[m], boxes=BOXES[:1])
    assert res2.order.tolist()[0] == 0
    heat = res.heat()
    assert heat.shape == (64, 64) and heat[40, 40] == res.cosine.max() and heat[5, 5] == res.cosine[0]
    prob = res.heat("prob")
    assert prob[40, 40] == res.probs.max() and prob[5, 5] == res.probs[0]
    with pytest.raises(ValueError, match="kind: expected 'cosine' or 'prob'"):
        res.heat("max")
    overlay, heat_png = render(image, res, top=2)
    assert overlay.size == heat_png.size == (64, 64)
    # heat colour (image blended out, opacity 0.55): red at the best region, blue at the worst (BL, 'blue')
    colour = (np.asarray(heat_png, dtype=float) - 0.45 * np.asarray(image, dtype=float)) / 0.55
    assert colour[48, 48, 0] == pytest.approx(255, abs=2) and colour[48, 48, 2] == pytest.approx(0, abs=2)
    assert colour[48, 10, 0] == pytest.approx(0, abs=2) and colour[48, 10, 2] == pytest.approx(255, abs=2)
    with pytest.raises(ValueError, match="give masks, boxes or a mask_generator"):
        locate(model, tokenizer(), image, "red")


class _FakeGenerator:
    def __init__(self, masks):
        self.masks = masks

    def generate(self, arr):
        assert arr.dtype == np.uint8 and arr.shape[2] == 3
        return [{"segmentation": m, "area": int(m.sum())} for m in self.masks]


def test_auto_masks_order_and_filtering(model):
    big, small, empty = np.zeros((3, 64, 64), bool)
    big[32:, :] = True
    small[:8, :8] = True
    masks = auto_masks(Image.new("RGB", (64, 64)), _FakeGenerator([small, empty, big]), min_area=10)
    assert masks.shape == (2, 64, 64) and masks[0].sum() == 64 * 32 and masks[1].sum() == 64
    with pytest.raises(ValueError, match="found no region of at least 1000 pixels"):
        auto_masks(Image.new("RGB", (64, 64)), _FakeGenerator([small]), min_area=1000)
    image = Image.fromarray(quadrants("red", "green", "blue", "yellow"))
    quads = [np.asarray(Image.new("L", (64, 64))) > 0 for _ in range(4)]
    for q, (x0, y0, x1, y1) in zip(quads, BOXES):
        q[y0:y1, x0:x1] = True
    res = locate(model, tokenizer(), image, "blue", mask_generator=_FakeGenerator(quads))
    assert res.top(1)[0]["box"] == [0, 32, 32, 64]


def test_locate_with_a_tiny_random_sam(model, tmp_path):
    from alphaclip_train.sam import automatic_mask_generator, load_sam

    sam = _tiny_sam()
    gen = automatic_mask_generator(sam, points_per_side=4, pred_iou_thresh=-1e9, stability_score_thresh=0.0,
                                   box_nms_thresh=1.0)
    image = Image.fromarray(quadrants("red", "green", "blue", "yellow"))
    found = [r["segmentation"] for r in gen.generate(np.asarray(image)) if r["segmentation"].any()]
    assert found, "the tiny SAM produced no mask"
    res = locate(model, tokenizer(), image, "red", mask_generator=gen)
    assert res.masks.shape == (len(found), 64, 64)
    assert sorted(int(m.sum()) for m in res.masks) == sorted(int(m.sum()) for m in found)
    # SAM weights are read safely; a wrong type is named
    with pytest.raises(ValueError, match="sam_type: expected one of"):
        load_sam("vit_x", "sam.pth")


def test_locate_cli(model, tmp_path, capsys):
    aoc.save_pretrained(model, tmp_path / "m")
    img = tmp_path / "quads.png"
    Image.fromarray(quadrants("red", "green", "blue", "yellow")).save(img)
    args = ["locate", str(img), "blue", "--model", f"local-dir:{tmp_path / 'm'}", "--json", "--top", "2",
            "--overlay", str(tmp_path / "o.png"), "--heatmap", str(tmp_path / "h.png")]
    for b in BOXES:
        args += ["--box", ",".join(map(str, b))]
    assert alphaclip_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["regions"] == 4 and out["best"][0]["index"] == 2 and out["best"][0]["box"] == [0, 32, 32, 64]
    assert Image.open(tmp_path / "o.png").size == (64, 64) and Image.open(tmp_path / "h.png").size == (64, 64)
    capsys.readouterr()
    assert alphaclip_main(["locate", str(img), "blue", "--model", f"local-dir:{tmp_path / 'm'}"]) == 2
    assert capsys.readouterr().err.strip() == "error: give --box/--mask regions or --sam-checkpoint for SAM's automatic masks"


def test_locate_cli_with_sam_automatic_masks(model, tmp_path, capsys, monkeypatch):
    import alphaclip_train.sam as sam_mod

    built = []
    monkeypatch.setattr(sam_mod, "load_sam", lambda t, c, d: built.append((t, c, d)) or _tiny_sam())
    aoc.save_pretrained(model, tmp_path / "m")
    img = tmp_path / "quads.png"
    Image.fromarray(quadrants("red", "green", "blue", "yellow")).save(img)
    rc = alphaclip_main(["locate", str(img), "red", "--model", f"local-dir:{tmp_path / 'm'}", "--json",
                         "--sam-checkpoint", "sam_vit_b.pth", "--sam-type", "vit_b", "--points-per-side", "4",
                         "--pred-iou-thresh=-1e9", "--stability-score-thresh", "0", "--min-area", "1",
                         "--heat", "prob", "--overlay", str(tmp_path / "o.png"), "--heatmap", str(tmp_path / "h.png")])
    assert rc == 0 and built == [("vit_b", "sam_vit_b.pth", "cpu")]
    out = json.loads(capsys.readouterr().out)
    assert out["regions"] >= 1 and len(out["best"]) == min(3, out["regions"])
    assert Image.open(tmp_path / "h.png").size == (64, 64)
