"""Detectron2 integration: config keys and merge order, rescoring ROI heads in a tiny GeneralizedRCNN on
CPU, class-embedding dumps. Detic's heads are covered with a stand-in in tests/test_detect_detic.py.

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
from detectron2.structures import Boxes, Instances  # noqa: E402

import alphaclip_integrations.detectron2 as ad2  # noqa: E402
import alphaclip_integrations.open_clip  # noqa: E402,F401
from alphaclip_core.checkpoints import save_safetensors  # noqa: E402
from alphaclip_core.region_classifier import DETECTION_TEMPLATES, geometric_ensemble  # noqa: E402
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


DETECTOR_YAML = """\
VERSION: 2
MODEL:
  DEVICE: cpu
  BACKBONE: {{NAME: build_resnet_backbone}}
  RESNETS: {{DEPTH: 18, RES2_OUT_CHANNELS: 64, OUT_FEATURES: [res4]}}
  RPN: {{IN_FEATURES: [res4], PRE_NMS_TOPK_TEST: 50, POST_NMS_TOPK_TEST: 10}}
  ANCHOR_GENERATOR: {{SIZES: [[16, 32]]}}
  ROI_HEADS: {{NAME: {heads}, IN_FEATURES: [res4], NUM_CLASSES: {classes}, SCORE_THRESH_TEST: 0.0}}
  ROI_BOX_HEAD:
    NAME: FastRCNNConvFCHead
    NUM_FC: 1
    FC_DIM: 32
    POOLER_RESOLUTION: 4
    CLS_AGNOSTIC_BBOX_REG: {agnostic}
"""


def detector_yaml(folder, heads="StandardROIHeads", classes=3, box_head_extra=""):
    """A tiny detector's own config file (it names its heads and its class count, as a model-zoo file does);
    ``box_head_extra``: more ``ROI_BOX_HEAD`` lines (4-space indented)."""
    path = folder / f"detector_{heads}_{classes}.yaml"
    path.write_text(DETECTOR_YAML.format(heads=heads, classes=classes, agnostic="Cascade" in heads) + box_head_extra)
    return str(path)


def tiny_cfg(alpha_file, tmp_path, heads="StandardROIHeads", weight=0.5, classes=3, enable=True, **keys):
    cfg = get_cfg()
    ad2.add_alphaclip_config(cfg)
    cfg.merge_from_file(detector_yaml(tmp_path, heads, classes))
    cfg.merge_from_file(ad2.config_path())
    if enable:
        ad2.enable_alphaclip(cfg, **{"arch": "alpha-ViT-Tiny-8", "checkpoint": str(alpha_file), "base": "",
                                     "vocabulary": VOCAB, "prompts": ["a photo of a {}."],
                                     "ensemble_weight": weight, "precision": "fp32", **keys})
    return cfg


def image_input():
    g = torch.Generator().manual_seed(0)
    rgb = (torch.rand(3, 48, 80, generator=g) * 255).to(torch.uint8)
    return rgb, [{"image": rgb.flip(0), "height": 48, "width": 80}]  # detectron2's default input is BGR


def build_pair(cfg):
    """The rescoring detector and the plain one it wraps, with the same weights."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    plain = build_model(ad2.disable_alphaclip(cfg.clone())).eval()
    plain.load_state_dict(model.state_dict())  # strict: Alpha-CLIP is not in the detector's state dict
    return model, plain


# ------------------------------------------------------------------------------------------------ config
def test_shipped_yaml_sets_only_alpha_clip_keys_and_merges_in_either_order(tmp_path):
    detector = detector_yaml(tmp_path, "StandardROIHeads", classes=81)
    cfgs = []
    for order in ((detector, ad2.config_path()), (ad2.config_path(), detector)):
        cfg = get_cfg()
        ad2.add_alphaclip_config(cfg)
        for f in order:
            cfg.merge_from_file(f)
        cfgs.append(cfg)
    assert cfgs[0].dump() == cfgs[1].dump()
    # the detector's heads and class count survive (no forced NUM_CLASSES: 3 that would drop an 81-class head)
    assert cfgs[0].MODEL.ROI_HEADS.NAME == "StandardROIHeads" and cfgs[0].MODEL.ROI_HEADS.NUM_CLASSES == 81
    # one prompt default everywhere: the yaml does not override the config's (= the dump CLI's) templates
    assert tuple(cfgs[0].MODEL.ALPHA_CLIP.PROMPTS) == DETECTION_TEMPLATES and len(DETECTION_TEMPLATES) == 8
    # then one call: the heads become their rescoring version; calling it again changes nothing
    for cfg in cfgs:
        ad2.enable_alphaclip(cfg, vocabulary=[f"c{i}" for i in range(81)])
        ad2.enable_alphaclip(cfg)
        assert cfg.MODEL.ROI_HEADS.NAME == "AlphaCLIPStandardROIHeads"
    assert cfgs[0].dump() == cfgs[1].dump()
    with pytest.raises(FileNotFoundError, match="name: no config 'nope.yaml'"):
        ad2.config_path("nope.yaml")


def test_enable_wraps_whatever_heads_the_config_names(tmp_path):
    cfg = get_cfg()
    ad2.add_alphaclip_config(cfg)
    cfg.merge_from_file(detector_yaml(tmp_path, "CascadeROIHeads"))
    ad2.enable_alphaclip(cfg)
    assert cfg.MODEL.ROI_HEADS.NAME == "AlphaCLIPCascadeROIHeads"
    assert ROI_HEADS_REGISTRY.get("AlphaCLIPCascadeROIHeads").alphaclip_base == "CascadeROIHeads"
    assert ad2.disable_alphaclip(cfg).MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
    cfg.MODEL.ROI_HEADS.NAME = "NoSuchROIHeads"
    with pytest.raises(KeyError, match="MODEL.ROI_HEADS.NAME: no ROI heads 'NoSuchROIHeads'.*import the project"):
        ad2.enable_alphaclip(cfg)


def test_a_detector_config_merged_after_enable_needs_enable_again(tmp_path):
    # documented limitation: detectron2 has no hook to notice a later merge; enabling again restores it
    cfg = tiny_cfg(None, tmp_path, enable=False)
    ad2.enable_alphaclip(cfg)
    cfg.merge_from_file(detector_yaml(tmp_path))
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    assert ad2.enable_alphaclip(cfg).MODEL.ROI_HEADS.NAME == "AlphaCLIPStandardROIHeads"


def test_enable_checks_keys_and_vocabulary_against_the_detector(tmp_path):
    cfg = tiny_cfg(None, tmp_path, classes=81, enable=False)
    with pytest.raises(ValueError, match=r"VOCABULARY: 3 class names, but the detector has 81 classes "
                                         r"\(MODEL.ROI_HEADS.NUM_CLASSES\)"):
        ad2.enable_alphaclip(cfg, vocabulary=VOCAB)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 81  # never changed to fit the vocabulary
    with pytest.raises(TypeError, match="'vocab' is not a MODEL.ALPHA_CLIP key"):
        ad2.enable_alphaclip(cfg, vocab=VOCAB)
    with pytest.raises(TypeError, match="ensemble_weight: expected float"):
        ad2.enable_alphaclip(cfg, ensemble_weight="high")
    with pytest.raises(ValueError, match=r"MODEL.ALPHA_CLIP.ENSEMBLE_WEIGHT: expected a weight in \[0, 1\], got 1.5"):
        ad2.enable_alphaclip(cfg, ensemble_weight=1.5)
    cfg.MODEL.ALPHA_CLIP.ENSEMBLE_WEIGHT = 0.5
    with pytest.raises(ValueError, match="give one of them, not both"):
        ad2.enable_alphaclip(cfg, vocabulary=["a"] * 81, vocabulary_file="classes.txt")
    cfg.freeze()
    with pytest.raises(ValueError, match=r"cfg: frozen; call enable_alphaclip\(cfg\) before cfg.freeze\(\)"):
        ad2.enable_alphaclip(cfg)


def test_old_and_detic_spellings_of_the_embeddings_key_are_named(tmp_path):
    cfg = get_cfg()
    ad2.add_alphaclip_config(cfg)
    ad2.add_alphaclip_config(cfg)  # twice is fine
    for old in ("ZERO_SHOT_WEIGHT_PATH", "ZEROSHOT_WEIGHT_PATH"):
        with pytest.raises(KeyError, match=rf"MODEL.ALPHA_CLIP.{old} was renamed to MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS"
                                           r".*Detic's own classifier file stays in MODEL.ROI_BOX_HEAD"):
            cfg.merge_from_list([f"MODEL.ALPHA_CLIP.{old}", "x.npy"])
        (tmp_path / "old.yaml").write_text(f"MODEL:\n  ALPHA_CLIP:\n    {old}: x.npy\n")
        with pytest.raises(KeyError, match="renamed to MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS"):
            cfg.merge_from_file(str(tmp_path / "old.yaml"))


# ------------------------------------------------------------------------------------------------ build errors
def test_build_errors_name_the_config_key(alpha_file, tmp_path):
    cfg = tiny_cfg(alpha_file, tmp_path)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2  # changed after enable: caught when the model is built
    with pytest.raises(ValueError, match=r"VOCABULARY: 3 class names, but the detector has 2 classes"):
        build_model(cfg)
    cfg = tiny_cfg(alpha_file, tmp_path)
    cfg.MODEL.ALPHA_CLIP.CHECKPOINT = str(tmp_path / "missing" / "clip_b16_grit1m_fultune_8xe.pth")
    with pytest.raises(FileNotFoundError, match="MODEL.ALPHA_CLIP.CHECKPOINT: no such file: .*missing"):
        build_model(cfg)
    cfg.MODEL.ALPHA_CLIP.CHECKPOINT = ""
    with pytest.raises(ValueError, match="MODEL.ALPHA_CLIP.CHECKPOINT: required"):
        build_model(cfg)
    cfg = tiny_cfg(alpha_file, tmp_path, base=str(tmp_path / "ViT-B-16.pt"))
    with pytest.raises(FileNotFoundError, match="MODEL.ALPHA_CLIP.BASE: no such file"):
        build_model(cfg)
    cfg = tiny_cfg(alpha_file, tmp_path, precision="fp8")
    with pytest.raises(ValueError, match="MODEL.ALPHA_CLIP.PRECISION: expected auto, fp32, fp16 or bf16"):
        build_model(cfg)


def test_text_embeddings_are_checked_at_load(alpha_file, tmp_path):
    import alphaclip_integrations.open_clip as aoc

    model, _ = aoc.load("alpha-ViT-Tiny-8", alpha_file)
    tok = open_clip.get_tokenizer("alpha-ViT-Tiny-8")
    good = ad2.dump_zeroshot_classifier(model, tok, VOCAB, tmp_path / "zs.npy", ["a photo of a {}."],
                                        model_name="alpha-ViT-Tiny-8")
    cfg = tiny_cfg(alpha_file, tmp_path, text_embeddings=good)
    heads = build_model(cfg).roi_heads
    torch.testing.assert_close(heads.alpha_clip.classifier.text_features,
                               text_classifier(model, tok, VOCAB, ["a photo of a {}."]), atol=1e-6, rtol=0)
    # a .npy of the wrong dimension fails at load, naming the key (not later in a bare matmul)
    np.save(tmp_path / "wide.npy", np.ones((3, 512), np.float32))
    with pytest.raises(ValueError, match="MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS: .*512-d rows but the model's "
                                         "embedding size is 64"):
        build_model(tiny_cfg(alpha_file, tmp_path, text_embeddings=str(tmp_path / "wide.npy")))
    # written for another class order: the sidecar says so
    with pytest.raises(ValueError, match=r"TEXT_EMBEDDINGS: .* another vocabulary \(class 0: 'cat' in the file, "
                                         r"'dog' in use\)"):
        build_model(tiny_cfg(alpha_file, tmp_path, text_embeddings=good, vocabulary=["dog", "cat", "bird"]))
    cfg = tiny_cfg(alpha_file, tmp_path, enable=False)
    ad2.enable_alphaclip(cfg, vocabulary=[], text_embeddings=good, checkpoint=str(alpha_file), arch="alpha-ViT-Tiny-8")
    with pytest.raises(ValueError, match="TEXT_EMBEDDINGS: give the VOCABULARY"):
        build_model(cfg)


# ------------------------------------------------------------------------------------------------ rescoring
def test_standard_heads_with_zero_weight_equal_the_plain_detector(alpha_file, tmp_path):
    model, plain = build_pair(tiny_cfg(alpha_file, tmp_path, weight=0.0))
    assert type(model.roi_heads).__name__ == "AlphaCLIPStandardROIHeads"
    assert type(plain.roi_heads).__name__ == "StandardROIHeads"
    _, inputs = image_input()
    with torch.no_grad():
        a, b = model(inputs)[0]["instances"], plain(inputs)[0]["instances"]
    assert len(a) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)


def test_rescore_probs_is_the_geometric_ensemble_on_the_original_image(alpha_file, tmp_path):
    model = build_model(tiny_cfg(alpha_file, tmp_path, weight=0.5)).eval()
    rescorer = model.roi_heads.alpha_clip
    rgb, inputs = image_input()
    images = model.preprocess_image(inputs)
    # the detector's normalisation is undone: the original RGB pixels come back
    (back,) = rescorer.images_rgb(images)
    torch.testing.assert_close(back, rgb.float() / 255, atol=1e-5, rtol=0)
    # raw proposals, one thinner than a pixel and one lying on the right border: no "region is empty"
    boxes = torch.tensor([[2.0, 3.0, 30.0, 40.0], [40.6, 10.5, 40.9, 30.0], [80.0, 0.0, 80.0, 48.0]])
    det = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    (got,) = rescorer.rescore_probs(images, [boxes], [det])
    clip = rescorer.classifier(rgb, boxes=torch.tensor([[2.0, 3, 30, 40], [40, 10, 41, 30], [79, 0, 80, 48]])).probs
    torch.testing.assert_close(got[:, :3], geometric_ensemble(det[:, :3], clip, 0.5), atol=1e-6, rtol=0)
    torch.testing.assert_close(got[:, 3], det[:, 3])  # background untouched
    # with MAX_REGIONS 1 only the detector's most confident proposal is rescored
    rescorer.max_regions = 1
    (top,) = rescorer.rescore_probs(images, [boxes], [det])
    best = int(det[:, :3].max(dim=1).values.argmax())
    for k in range(3):
        torch.testing.assert_close(top[k], got[k] if k == best else det[k])


def test_standard_heads_rescore_before_nms(alpha_file, tmp_path, monkeypatch):
    model, _ = build_pair(tiny_cfg(alpha_file, tmp_path, weight=1.0))
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


def test_cascade_heads_rescore_final_detections_post_hoc(alpha_file, tmp_path):
    model, plain = build_pair(tiny_cfg(alpha_file, tmp_path, "CascadeROIHeads", weight=0.25))
    assert type(plain.roi_heads).__name__ == "CascadeROIHeads"
    rgb, inputs = image_input()
    with torch.no_grad():
        a, b = model(inputs)[0]["instances"], plain(inputs)[0]["instances"]
    assert len(a) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)
    torch.testing.assert_close(a.det_scores, b.scores, atol=1e-5, rtol=0)
    clip = model.roi_heads.alpha_clip.classifier(rgb, boxes=b.pred_boxes.tensor).probs
    p = clip[torch.arange(len(b)), b.pred_classes]
    torch.testing.assert_close(a.clip_scores, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.scores, b.scores ** 0.75 * p ** 0.25, atol=1e-5, rtol=1e-4)


def test_novel_classes_get_their_own_weight(alpha_file, tmp_path):
    cfg = tiny_cfg(alpha_file, tmp_path, weight=1 / 3, novel_classes=[2], ensemble_weight_novel=2 / 3)
    w = build_model(cfg).roi_heads.alpha_clip.classifier.ensemble_weight
    torch.testing.assert_close(w, torch.tensor([1 / 3, 1 / 3, 2 / 3]))
    with pytest.raises(ValueError, match=r"NOVEL_CLASSES: indices \[5\] outside \[0, 3\)"):
        tiny_cfg(alpha_file, tmp_path, novel_classes=[5], ensemble_weight_novel=0.5)


def test_register_rescoring_heads_for_any_registered_heads():
    cls = ad2.register_rescoring_roi_heads("StandardROIHeads", "AlphaCLIPPostHocStandardROIHeads")
    assert ROI_HEADS_REGISTRY.get("AlphaCLIPPostHocStandardROIHeads") is cls
    assert ad2.register_rescoring_roi_heads("StandardROIHeads", "AlphaCLIPPostHocStandardROIHeads") is cls
    assert ad2.is_rescoring_heads("AlphaCLIPPostHocStandardROIHeads") and not ad2.is_rescoring_heads("StandardROIHeads")
    # CenterNet2's heads are not Detic's: without them registered, the error says what to import
    with pytest.raises(KeyError, match="no ROI heads 'CustomCascadeROIHeads'"):
        ad2.register_rescoring_roi_heads("CustomCascadeROIHeads")


def test_rescore_instances_with_no_detections(alpha_file, tmp_path):
    model = build_model(tiny_cfg(alpha_file, tmp_path, "CascadeROIHeads")).eval()
    _, inputs = image_input()
    images = model.preprocess_image(inputs)
    empty = Instances((48, 80), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                      pred_classes=torch.zeros(0, dtype=torch.long))
    (out,) = model.roi_heads.alpha_clip.rescore_instances(images, [empty])
    assert len(out) == 0 and out.scores.shape == (0,) and out.clip_scores.shape == (0,)


# ------------------------------------------------------------------------------------------------ dump
def test_dump_zeroshot_classifier(tmp_path, alpha_file, capsys):
    import alphaclip_integrations.open_clip as aoc

    model, _ = aoc.load("alpha-ViT-Tiny-8", alpha_file)
    tok = open_clip.get_tokenizer("alpha-ViT-Tiny-8")
    path = ad2.dump_zeroshot_classifier(model, tok, VOCAB, tmp_path / "zs.npy", templates=["a photo of a {}."])
    arr = np.load(path)
    assert arr.shape == (3, 64) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, text_classifier(model, tok, VOCAB, ["a photo of a {}."]).numpy(), atol=1e-6)
    # the CLI: LVIS-style file in, Detic's names (category "name", not synonyms[0]); default prompts = the config's
    (tmp_path / "lvis.json").write_text(json.dumps({"categories": [
        {"id": 2, "name": "bull", "synonyms": ["horned_cow", "bull"]}, {"id": 1, "name": "aerosol_can"}]}))
    assert ad2.main(["--vocabulary", str(tmp_path / "lvis.json"), "-o", str(tmp_path / "cli.npy"),
                     "--model", "alpha-ViT-Tiny-8", "--checkpoint", str(alpha_file)]) == 0
    meta = json.loads((tmp_path / "cli.npy.json").read_text())
    assert meta["vocabulary"] == ["aerosol can", "bull"] and meta["model"] == "alpha-ViT-Tiny-8"
    assert tuple(meta["templates"]) == DETECTION_TEMPLATES
    np.testing.assert_allclose(np.load(tmp_path / "cli.npy"),
                               text_classifier(model, tok, ["aerosol can", "bull"], DETECTION_TEMPLATES).numpy(),
                               atol=1e-6)
    # bad input: an error line and exit status 2, no traceback
    with pytest.raises(SystemExit) as e:
        ad2.main(["--vocabulary", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.npy"),
                  "--model", "alpha-ViT-Tiny-8", "--checkpoint", str(alpha_file)])
    assert e.value.code == 2 and "vocabulary: no such file" in capsys.readouterr().err
