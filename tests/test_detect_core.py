"""AlphaCLIPRegionClassifier and the ensemble math (pure torch, always tested)."""
from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from alphaclip_core.alpha import prepare
from alphaclip_core.model import AlphaCLIP
from alphaclip_core.region_classifier import (DETECTION_TEMPLATES, AlphaCLIPRegionClassifier, expand_boxes,
                                              geometric_ensemble, save_text_classifier)

from conftest import TINY_CFG, randomize_alpha_conv

BOXES = [[0, 0, 20, 20], [30, 10, 60, 40], [5, 20, 25, 40]]


@pytest.fixture
def model() -> AlphaCLIP:
    torch.manual_seed(0)
    return randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval(), seed=3, scale=1.0)


def flat_image() -> torch.Tensor:
    """A uniform grey 40x60 (HxW) image: the pixels say nothing, only the alpha differs per region."""
    return torch.full((3, 40, 60), 0.5)


def embed(model, image, box, mode="pad"):
    pixels, alpha = prepare(image, box=box, mode=mode, size=32)
    with torch.no_grad():
        return model.encode_image(pixels, alpha, normalize=True)[0]


# ------------------------------------------------------------------------------------------------ ensemble
def test_geometric_ensemble_by_hand():
    det = torch.tensor([[0.25, 0.5]])
    clip = torch.tensor([[1.0, 0.125]])
    # w = 1/2: sqrt(0.25 * 1) = 0.5, sqrt(0.5 * 0.125) = 0.25
    torch.testing.assert_close(geometric_ensemble(det, clip, 0.5), torch.tensor([[0.5, 0.25]]), atol=1e-6, rtol=0)
    # ViLD's base weighting w = 1/3: det^(2/3) clip^(1/3) -> 2^(-4/3), 2^(-2/3) * 2^(-1) = 2^(-5/3)
    torch.testing.assert_close(geometric_ensemble(det, clip, 1 / 3),
                               torch.tensor([[2 ** (-4 / 3), 2 ** (-5 / 3)]]), atol=1e-6, rtol=0)
    # per-class weights: class 0 all detector, class 1 all Alpha-CLIP
    torch.testing.assert_close(geometric_ensemble(det, clip, torch.tensor([0.0, 1.0])),
                               torch.tensor([[0.25, 0.125]]), atol=1e-6, rtol=0)
    # a zero probability stays finite and gives ~0
    assert float(geometric_ensemble(torch.tensor([[0.0]]), torch.tensor([[0.9]]), 0.5)) < 1e-5


def test_geometric_ensemble_rejects_bad_input():
    a = torch.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"detector_probs / clip_probs: expected two \[K, C\]"):
        geometric_ensemble(a, torch.full((2, 4), 0.5), 0.5)
    with pytest.raises(ValueError, match=r"weight: expected values in \[0, 1\]"):
        geometric_ensemble(a, a, 1.5)
    with pytest.raises(ValueError, match=r"weight: expected a float or \[C=3\]"):
        geometric_ensemble(a, a, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"clip_probs: expected probabilities in \[0, 1\]"):
        geometric_ensemble(a, a * 3, 0.5)


def test_expand_boxes_by_hand():
    boxes = torch.tensor([[10.0, 10, 20, 30], [0, 0, 10, 10], [95, 95, 96, 96]])
    out = expand_boxes(boxes, 1.5, height=100, width=100, min_size=4)
    # centre (15, 20), size (10, 20) * 1.5 = (15, 30)
    torch.testing.assert_close(out[0], torch.tensor([7.5, 5.0, 22.5, 35.0]))
    # [-2.5, -2.5, 12.5, 12.5] clipped to the image
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 12.5, 12.5]))
    # a 1px box grows to min_size 4 about its centre 95.5
    torch.testing.assert_close(out[2], torch.tensor([93.5, 93.5, 97.5, 97.5]))
    with pytest.raises(ValueError, match="ratio: expected a context expansion ratio >= 1"):
        expand_boxes(boxes, 0.5, 100, 100)


# ------------------------------------------------------------------------------------------------ classifier
def test_logits_are_scaled_cosines_of_whole_image_alpha_embeddings(model):
    labels = ["cat", "dog", "traffic light"]
    clf = AlphaCLIPRegionClassifier(model, open_clip.tokenize, labels, templates=("a photo of a {}.",))
    out = clf(flat_image(), boxes=BOXES)
    with torch.no_grad():
        text = model.encode_text(open_clip.tokenize([f"a photo of a {c}." for c in labels]), normalize=True)
    img = torch.stack([embed(model, flat_image(), b) for b in BOXES])
    expected = img @ text.T
    torch.testing.assert_close(out.cosine, expected, atol=1e-5, rtol=0)
    scale = float(model.logit_scale.detach().exp())
    torch.testing.assert_close(out.logits, scale * expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(3), atol=1e-6, rtol=0)
    assert torch.equal(out.scores, out.probs)


def test_prompt_ensemble_is_normalised_mean_of_normalised_templates(model):
    templates = ("a photo of a {}.", "a sketch of the {}.", "{}")
    clf = AlphaCLIPRegionClassifier(model, open_clip.tokenize, ["cat", "dog"], templates=templates)
    with torch.no_grad():
        rows = []
        for c in ["cat", "dog"]:
            t = model.encode_text(open_clip.tokenize([tp.format(c) for tp in templates]), normalize=True)
            rows.append(F.normalize(t.mean(0), dim=-1))
    torch.testing.assert_close(clf.text_features, torch.stack(rows), atol=1e-6, rtol=0)
    assert len(DETECTION_TEMPLATES) > 1 and all("{}" in t for t in DETECTION_TEMPLATES)


def test_alpha_decides_the_class(model):
    """Same uniform image, only the alpha differs: class i is made to be the embedding of region i."""
    text = torch.stack([embed(model, flat_image(), b) for b in BOXES])
    clf = AlphaCLIPRegionClassifier(model, None, ["a", "b", "c"], text_features=text, logit_scale=100.0)
    out = clf(flat_image(), boxes=BOXES)
    assert out.probs.argmax(dim=1).tolist() == [0, 1, 2]
    torch.testing.assert_close(out.cosine.diagonal(), torch.ones(3), atol=1e-5, rtol=0)
    # with the alpha conv at zero (a plain CLIP), the regions are indistinguishable
    with torch.no_grad():
        model.visual.conv1_alpha.weight.zero_()
    flat = clf(flat_image(), boxes=BOXES).cosine
    torch.testing.assert_close(flat, flat[:1].expand_as(flat), atol=1e-5, rtol=0)


def test_masks_take_precedence_over_boxes_as_alpha(model):
    mask = torch.zeros(1, 40, 60)
    mask[0, 10:30, 30:50] = 1
    text = F.normalize(torch.randn(2, 32), dim=-1)
    clf = AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=text)
    by_mask = clf(flat_image(), boxes=[[0, 0, 20, 20]], masks=mask).cosine
    by_box = clf(flat_image(), boxes=[[30, 10, 50, 30]]).cosine
    torch.testing.assert_close(by_mask, by_box, atol=1e-5, rtol=0)


def test_detector_scores_are_ensembled(model):
    text = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    w = torch.tensor([0.2, 0.5, 0.8])
    clf = AlphaCLIPRegionClassifier(model, None, ["a", "b", "c"], text_features=text, ensemble_weight=w)
    det = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.3], [0.05, 0.9, 0.05]])
    out = clf(flat_image(), boxes=BOXES, detector_probs=det)
    p = out.probs
    for k in range(3):
        for c in range(3):
            expected = math.exp((1 - w[c]) * math.log(det[k, c]) + w[c] * math.log(p[k, c]))
            assert abs(float(out.scores[k, c]) - expected) < 1e-5
    with pytest.raises(ValueError, match=r"detector_probs: expected \[K=3, C=3\]"):
        clf(flat_image(), boxes=BOXES, detector_probs=det[:2])


def test_context_expansion_crops_around_the_box(model):
    image = torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(1))
    text = F.normalize(torch.randn(2, 32), dim=-1)
    clf = AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=text, expansion=1.5)
    got = clf(image, boxes=[[20, 10, 40, 30]]).cosine
    # box scaled 1.5x about its centre (30, 20): [15, 5, 45, 35]; the alpha is the box inside the crop
    crop = image[:, 5:35, 15:45]
    pixels, alpha = prepare(crop, box=[5, 5, 25, 25], mode="pad", size=32)
    with torch.no_grad():
        feat = model.encode_image(pixels, alpha, normalize=True)
    torch.testing.assert_close(got, feat @ text.T, atol=1e-5, rtol=0)
    whole = AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=text)(image, boxes=[[20, 10, 40, 30]])
    assert not torch.allclose(whole.cosine, got, atol=1e-3)


def test_classifier_rejects_bad_input(model):
    text = F.normalize(torch.randn(2, 32), dim=-1)
    with pytest.raises(ValueError, match="vocabulary: expected a non-empty sequence"):
        AlphaCLIPRegionClassifier(model, None, [], text_features=text)
    with pytest.raises(ValueError, match=r"expansion: expected None \(whole image\) or a ratio >= 1"):
        AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=text, expansion=0.8)
    with pytest.raises(ValueError, match=r"text_features: expected \[C=3, D=32\]"):
        AlphaCLIPRegionClassifier(model, None, ["a", "b", "c"], text_features=text)
    with pytest.raises(ValueError, match="tokenizer: needed to embed the vocabulary"):
        AlphaCLIPRegionClassifier(model, None, ["a", "b"])
    clf = AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=text)
    with pytest.raises(ValueError, match=r"boxes: expected \[K, 4\] xyxy pixels"):
        clf(flat_image(), boxes=[[0, 0, 10]])
    with pytest.raises(ValueError, match="boxes / masks: give the regions to classify"):
        clf(flat_image())
    with pytest.raises(ValueError, match="box 0 .* is degenerate"):
        clf(flat_image(), boxes=[[10, 10, 5, 20]])
    with pytest.raises(ValueError, match="masks: region 1 is empty"):
        m = torch.zeros(2, 40, 60)
        m[0, :5, :5] = 1
        clf(flat_image(), masks=m)


def test_save_text_classifier_writes_one_row_per_class(tmp_path, model):
    clf = AlphaCLIPRegionClassifier(model, open_clip.tokenize, ["cat", "dog", "person"])
    path = save_text_classifier(tmp_path / "zs" / "weights.npy", clf.text_features)
    arr = np.load(path, allow_pickle=False)
    assert arr.shape == (3, 32) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, clf.text_features.numpy(), atol=0, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    assert [p.name for p in (tmp_path / "zs").iterdir()] == ["weights.npy"]
    with pytest.raises(ValueError, match=r"weights: expected \[C, D\]"):
        save_text_classifier(tmp_path / "x.npy", torch.zeros(3))


def test_regions_are_scored_in_chunks_with_the_same_result(model):
    text = F.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(2)), dim=-1)
    image = torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(3))
    for expansion in (None, 1.2):
        one = AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=text, expansion=expansion)
        two = AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=text, expansion=expansion,
                                        batch_size=2)
        torch.testing.assert_close(two(image, boxes=BOXES).cosine, one(image, boxes=BOXES).cosine, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"box 0 .* is degenerate.*\(box indices counted from region 2\)"):
        two(image, boxes=BOXES[:2] + [[9, 9, 8, 12]])  # inverted (zero-area boxes are snapped)


def test_snap_boxes_by_hand():
    from alphaclip_core.region_classifier import snap_boxes

    boxes = torch.tensor([[10.2, 10.2, 10.6, 10.6], [-3.0, 2.5, 70.0, 39.1], [59.5, 39.5, 61.0, 45.0]])
    torch.testing.assert_close(snap_boxes(boxes, 40, 60), torch.tensor(
        [[10.0, 10.0, 11.0, 11.0], [0.0, 2.0, 60.0, 40.0], [59.0, 39.0, 60.0, 40.0]]))


def test_text_classifier_in_chunks_equals_one_pass(model):
    from alphaclip_core.regions import text_classifier

    names = [f"thing {i}" for i in range(7)]
    templates = ("a photo of a {}.", "a {}.")
    chunked = text_classifier(model, open_clip.tokenize, names, templates, texts_per_batch=5)  # 2 classes/pass
    torch.testing.assert_close(chunked, text_classifier(model, open_clip.tokenize, names, templates,
                                                        texts_per_batch=1000), atol=1e-6, rtol=0)
