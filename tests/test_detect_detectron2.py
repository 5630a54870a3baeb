"""Detectron2 integration: config keys, rescoring ROI heads in a tiny GeneralizedRCNN on CPU, classifier dump.

detectron2 is not on PyPI; these tests run where it is built (they skip otherwise).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

import open_clip  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import ROI_HEADS_REGISTRY, build_model  # noqa: E402
from detectron2.structures import Boxes, ImageList  # noqa: E402

import alphaclip_integrations.detectron2 as ad2  # noqa: E402
import alphaclip_integrations.open_clip  # noqa: E402,F401
from alphaclip_core.checkpoints import save_safetensors  # noqa: E402
from alphaclip_core.region_classifier import geometric_ensemble, snap_boxes  # noqa: E402
from alphaclip_core.regions import text_classifier  # noqa: E402

from conftest import randomize_alpha_conv  # noqa: E402

VOCAB = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def alpha_file(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_alpha_conv(open_clip.create_model("alpha-ViT-Tiny-8").eval(), seed=7, scale=1.0)
    path = tmp_path_factory.mktemp("alpha") / "tiny.safetensors"
    save_safetensors(model, path)
    return path


def tiny_cfg(alpha_file, roi_heads="AlphaCLIPStandardROIHeads", weight=0.5):
    cfg = get_cfg()
    ad2.add_alphaclip_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 50
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 10
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32]]
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(VOCAB)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = "Cascade" in roi_heads
    cfg.MODEL.ALPHA_CLIP.ARCH = "alpha-ViT-Tiny-8"
    cfg.MODEL.ALPHA_CLIP.CHECKPOINT = str(alpha_file)
    cfg.MODEL.ALPHA_CLIP.VOCABULARY = VOCAB
    cfg.MODEL.ALPHA_CLIP.PROMPTS = ["a photo of a {}."]
    cfg.MODEL.ALPHA_CLIP.ENSEMBLE_WEIGHT = weight
    return cfg


def image_input():
    g = torch.Generator().manual_seed(0)
    rgb = (torch.rand(3, 48, 80, generator=g) * 255).to(torch.uint8)
    return rgb, [{"image": rgb.flip(0), "height": 48, "width": 80}]  # detectron2's default input is BGR


def build_pair(cfg, plain_name):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.ROI_HEADS.NAME = plain_name
    plain = build_model(plain_cfg).eval()
    plain.load_state_dict(model.state_dict())  # strict: Alpha-CLIP is not in the detector's state dict
    return model, plain


def test_config_keys_and_shipped_yaml():
    cfg = get_cfg()
    ad2.add_alphaclip_config(cfg)
    for key in ("ARCH", "CHECKPOINT", "BASE", "VOCABULARY", "VOCABULARY_FILE", "PROMPTS", "ENSEMBLE_WEIGHT",
                "EXPANSION", "ZERO_SHOT_WEIGHT_PATH", "NOVEL_CLASSES", "ENSEMBLE_WEIGHT_NOVEL", "MAX_REGIONS"):
        assert key in cfg.MODEL.ALPHA_CLIP
    cfg.merge_from_file(ad2.config_path("alphaclip_rescore.yaml"))
    assert cfg.MODEL.ROI_HEADS.NAME == "AlphaCLIPStandardROIHeads" and "AlphaCLIPStandardROIHeads" in ROI_HEADS_REGISTRY
    assert cfg.MODEL.ALPHA_CLIP.ENSEMBLE_WEIGHT == 0.5 and len(cfg.MODEL.ALPHA_CLIP.VOCABULARY) == 3
    with pytest.raises(FileNotFoundError, match="name: no config 'nope.yaml'"):
        ad2.config_path("nope.yaml")


def test_vocabulary_files(tmp_path):
    (tmp_path / "v.txt").write_text("cat\n\ndog\n")
    (tmp_path / "lvis.json").write_text(json.dumps({"categories": [
        {"id": 2, "name": "hot_dog", "synonyms": ["hot dog", "frank"]}, {"id": 1, "name": "aerosol_can"}]}))
    assert ad2.load_vocabulary(str(tmp_path / "v.txt")) == ["cat", "dog"]
    assert ad2.load_vocabulary(str(tmp_path / "lvis.json")) == ["aerosol can", "hot dog"]
    assert ad2.load_vocabulary("cat, dog,bird") == VOCAB
    with pytest.raises(FileNotFoundError, match="vocabulary: no such file"):
        ad2.load_vocabulary(str(tmp_path / "missing.txt"))


def test_standard_heads_with_zero_weight_equal_the_plain_detector(alpha_file):
    model, plain = build_pair(tiny_cfg(alpha_file, weight=0.0), "StandardROIHeads")
    _, inputs = image_input()
    with torch.no_grad():
        a, b = model(inputs)[0]["instances"], plain(inputs)[0]["instances"]
    assert len(a) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)


def test_rescore_probs_is_the_geometric_ensemble_on_the_original_image(alpha_file):
    cfg = tiny_cfg(alpha_file, weight=0.5)
    model = build_model(cfg).eval()
    heads = model.roi_heads
    rescorer = heads.alpha_clip
    rgb, inputs = image_input()
    images = model.preprocess_image(inputs)
    # the detector's normalisation is undone: the original RGB pixels come back
    (back,) = rescorer.images_rgb(images)
    torch.testing.assert_close(back, rgb.float() / 255, atol=1e-5, rtol=0)
    boxes = torch.tensor([[2.0, 3.0, 30.0, 40.0], [40.2, 10.5, 40.6, 30.0], [0.0, 0.0, 80.0, 48.0]])
    det = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    (got,) = rescorer.rescore_probs(images, [boxes], [det])
    clip = rescorer.classifier(rgb, boxes=snap_boxes(boxes, 48, 80)).probs
    torch.testing.assert_close(got[:, :3], geometric_ensemble(det[:, :3], clip, 0.5), atol=1e-6, rtol=0)
    torch.testing.assert_close(got[:, 3], det[:, 3])  # background untouched
    # with MAX_REGIONS 1 only the detector's most confident proposal is rescored
    rescorer.max_regions = 1
    (top,) = rescorer.rescore_probs(images, [boxes], [det])
    best = int(det[:, :3].max(dim=1).values.argmax())
    for k in range(3):
        torch.testing.assert_close(top[k], got[k] if k == best else det[k])


def test_standard_heads_rescore_before_nms(alpha_file, monkeypatch):
    model, plain = build_pair(tiny_cfg(alpha_file, weight=1.0), "StandardROIHeads")
    calls = []
    original = ad2.AlphaCLIPRescorer.rescore_probs
    monkeypatch.setattr(ad2.AlphaCLIPRescorer, "rescore_probs",
                        lambda self, *a: calls.append(original(self, *a)) or calls[-1])
    _, inputs = image_input()
    with torch.no_grad():
        out = model(inputs)[0]["instances"]
    (probs,) = calls[0]
    assert len(out) > 0
    # w = 1: every final score is one of Alpha-CLIP's probabilities (for its class), not the detector's
    for score, cls in zip(out.scores.tolist(), out.pred_classes.tolist()):
        assert torch.isclose(probs[:, cls], torch.tensor(score), atol=1e-6).any()


def test_cascade_heads_rescore_final_detections_post_hoc(alpha_file):
    model, plain = build_pair(tiny_cfg(alpha_file, "AlphaCLIPCascadeROIHeads", weight=0.25), "CascadeROIHeads")
    rgb, inputs = image_input()
    with torch.no_grad():
        a, b = model(inputs)[0]["instances"], plain(inputs)[0]["instances"]
    assert len(a) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)
    torch.testing.assert_close(a.det_scores, b.scores, atol=1e-5, rtol=0)
    clip = model.roi_heads.alpha_clip.classifier(rgb, boxes=snap_boxes(b.pred_boxes.tensor, 48, 80)).probs
    p = clip[torch.arange(len(b)), b.pred_classes]
    torch.testing.assert_close(a.clip_scores, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.scores, b.scores ** 0.75 * p ** 0.25, atol=1e-5, rtol=1e-4)


def test_register_rescoring_heads_for_any_registered_heads():
    cls = ad2.register_rescoring_roi_heads("StandardROIHeads", "AlphaCLIPPostHocStandardROIHeads")
    assert ROI_HEADS_REGISTRY.get("AlphaCLIPPostHocStandardROIHeads") is cls
    assert ad2.register_rescoring_roi_heads("StandardROIHeads", "AlphaCLIPPostHocStandardROIHeads") is cls
    with pytest.raises(KeyError, match="base_name: no ROI heads 'CustomCascadeROIHeads'"):
        ad2.register_rescoring_roi_heads("CustomCascadeROIHeads")


def test_bad_config_is_named(alpha_file):
    cfg = tiny_cfg(alpha_file)
    cfg.MODEL.ALPHA_CLIP.VOCABULARY = ["cat", "dog"]
    with pytest.raises(ValueError, match=r"VOCABULARY: 2 class names, but the detector has 3 classes"):
        build_model(cfg)
    cfg = tiny_cfg(alpha_file)
    cfg.MODEL.ALPHA_CLIP.CHECKPOINT = ""
    with pytest.raises(ValueError, match="MODEL.ALPHA_CLIP.CHECKPOINT: required"):
        build_model(cfg)
    cfg = tiny_cfg(alpha_file)
    cfg.MODEL.ALPHA_CLIP.VOCABULARY_FILE = "classes.txt"
    with pytest.raises(ValueError, match="give exactly one"):
        build_model(cfg)


def test_dump_zeroshot_classifier(tmp_path, alpha_file):
    import alphaclip_integrations.open_clip as aoc

    model, _ = aoc.load("alpha-ViT-Tiny-8", alpha_file)
    tok = open_clip.get_tokenizer("alpha-ViT-Tiny-8")
    path = ad2.dump_zeroshot_classifier(model, tok, VOCAB, tmp_path / "zs.npy", templates=["a photo of a {}."])
    arr = np.load(path)
    assert arr.shape == (3, 64) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, text_classifier(model, tok, VOCAB, ["a photo of a {}."]).numpy(), atol=1e-6)
    assert ad2.main(["--vocabulary", "cat,dog,bird", "-o", str(tmp_path / "cli.npy"), "--template",
                     "a photo of a {}.", "--model", "alpha-ViT-Tiny-8", "--checkpoint", str(alpha_file)]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "cli.npy"), arr, atol=1e-6)


def test_rescore_instances_with_no_detections(alpha_file):
    from detectron2.structures import Instances

    model = build_model(tiny_cfg(alpha_file, "AlphaCLIPCascadeROIHeads")).eval()
    _, inputs = image_input()
    images = model.preprocess_image(inputs)
    empty = Instances((48, 80), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                      pred_classes=torch.zeros(0, dtype=torch.long))
    (out,) = model.roi_heads.alpha_clip.rescore_instances(images, [empty])
    assert len(out) == 0 and out.scores.shape == (0,) and out.clip_scores.shape == (0,)
