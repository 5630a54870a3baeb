"""Detic's heads, through a stand-in: rescoring wraps ``DeticCascadeROIHeads`` with its zero-shot classifier
intact, and the Alpha-CLIP vocabulary follows Detic's custom-vocabulary reset or fails clearly.

Detic is not installable from a registry, so this file registers, under Detic's heads name, a small
cascade with Detic's zero-shot classifier INTERFACE (written here from Detic's documented behaviour,
not copied): each stage's ``cls_score`` holds ``zs_weight`` ``[D, C + 1]`` (unit class columns from
``MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH``, a zero background column) and takes
``forward(x, classifier=None)``; the heads take ``forward(..., ann_type, classifier_info)``; and
``reset_classes`` does what Detic's ``reset_cls_test(model, embeddings, num_classes)`` does. The
config keys are Detic's (``detic/config.py``); the check against Detic's real files is in
docs/detection.md's Detic section.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("detectron2")

import open_clip  # noqa: E402
from detectron2.config import CfgNode as CN  # noqa: E402
from detectron2.config import configurable  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import ROI_HEADS_REGISTRY, build_model  # noqa: E402
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads  # noqa: E402
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers  # noqa: E402
from torch import nn  # noqa: E402

import alphaclip_integrations.detectron2 as ad2  # noqa: E402
import alphaclip_integrations.open_clip  # noqa: E402,F401
from alphaclip_core.checkpoints import save_safetensors  # noqa: E402

from conftest import randomize_alpha_conv  # noqa: E402
from test_detect_detectron2 import detector_yaml  # noqa: E402  (the same tiny detector)

DETIC_HEADS = "DeticCascadeROIHeads"
if DETIC_HEADS in ROI_HEADS_REGISTRY and not getattr(ROI_HEADS_REGISTRY.get(DETIC_HEADS), "stand_in", False):
    pytest.skip("the real Detic is imported in this process; these tests register a stand-in under its name",
                allow_module_level=True)

VOCAB = ["cat", "dog", "bird"]
D = 16  # ZEROSHOT_WEIGHT_DIM of the stand-in (512 for Detic's CLIP ViT-B/32 files)


class ZeroShotStandIn(nn.Module):
    """Detic's zero-shot classifier interface: ``zs_weight`` [D, C + 1] buffer, ``norm_weight``,
    ``forward(x, classifier=None)`` -> [N, C + 1] logits (cosine x temperature)."""

    def __init__(self, in_features: int, num_classes: int, path: str, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, dim)
        self.norm_weight = True
        w = torch.randn(dim, num_classes) if path == "rand" else torch.from_numpy(np.load(path)).float().T
        self.register_buffer("zs_weight", F.normalize(torch.cat([w, torch.zeros(dim, 1)], dim=1), dim=0))
        assert self.zs_weight.shape[1] == num_classes + 1

    def forward(self, x: torch.Tensor, classifier: torch.Tensor = None) -> torch.Tensor:
        w = self.zs_weight if classifier is None else F.normalize(classifier.T, dim=0)
        return 50.0 * F.normalize(self.linear(x), dim=1) @ w


class PredictorStandIn(FastRCNNOutputLayers):
    def __init__(self, cfg: CN, input_shape, box2box_transform) -> None:
        super().__init__(cfg, input_shape, box2box_transform=box2box_transform)
        h = cfg.MODEL.ROI_BOX_HEAD
        self.cls_score = ZeroShotStandIn(input_shape.channels, self.num_classes, h.ZEROSHOT_WEIGHT_PATH,
                                         h.ZEROSHOT_WEIGHT_DIM)

    def forward(self, x, classifier_info=(None, None, None)):
        x = x.flatten(1)
        return self.cls_score(x, classifier=classifier_info[0]), self.bbox_pred(x)


@ROI_HEADS_REGISTRY.register()
class DeticCascadeROIHeads(CascadeROIHeads):  # the stand-in, registered under Detic's name
    stand_in = True

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [PredictorStandIn(cfg, head.output_shape, p.box2box_transform)
                                 for p, head in zip(ret["box_predictors"], ret["box_heads"])]
        return ret

    def forward(self, images, features, proposals, targets=None, ann_type="box", classifier_info=(None, None, None)):
        self._classifier_info = classifier_info
        return super().forward(images, features, proposals, targets)

    def _run_stage(self, features, proposals, stage):
        box_features = self.box_head[stage](self.box_pooler(features, [x.proposal_boxes for x in proposals]))
        return self.box_predictor[stage](box_features, classifier_info=self._classifier_info)


def reset_classes(model, embeddings: torch.Tensor, num_classes: int) -> None:
    """What Detic's ``reset_cls_test`` does: new ``[D, C + 1]`` classifier in every stage, new class count."""
    zs = F.normalize(torch.cat([embeddings.T.float(), torch.zeros(embeddings.shape[1], 1)], dim=1), dim=0)
    model.roi_heads.num_classes = num_classes
    for p in model.roi_heads.box_predictor:
        del p.cls_score.zs_weight
        p.cls_score.zs_weight = zs


def add_detic_keys(cfg: CN) -> None:
    """The keys of Detic's ``add_detic_config`` the stand-in reads (names as in ``detic/config.py``)."""
    h = cfg.MODEL.ROI_BOX_HEAD
    h.USE_ZEROSHOT_CLS = False
    h.ZEROSHOT_WEIGHT_PATH = "datasets/metadata/lvis_v1_clip_a+cname.npy"
    h.ZEROSHOT_WEIGHT_DIM = 512
    h.NORM_WEIGHT = True


def detic_yaml(folder, npy, dim):
    """The parts of Detic's Base-C2_L_R5021k_640b64_4x.yaml + BoxSup-C2_L_CLIP_R5021k_640b64_4x.yaml that
    matter here, at toy size (Detic's: 1203 LVIS classes, 512-d CLIP ViT-B/32 "a {}" embeddings)."""
    zero_shot = f"    USE_ZEROSHOT_CLS: True\n    ZEROSHOT_WEIGHT_PATH: '{npy}'\n    ZEROSHOT_WEIGHT_DIM: {dim}\n"
    return detector_yaml(folder, DETIC_HEADS, 3, zero_shot)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny Alpha-CLIP, a Detic-style classifier .npy ([C, D] float16, as Detic's *_clip_a+cname.npy)
    and the Detic-shaped detector config naming them."""
    folder = tmp_path_factory.mktemp("detic")
    torch.manual_seed(0)
    alpha = randomize_alpha_conv(open_clip.create_model("alpha-ViT-Tiny-8").eval(), seed=7, scale=1.0)
    save_safetensors(alpha, folder / "tiny.safetensors")
    g = torch.Generator().manual_seed(3)
    np.save(folder / "clip_a+cname.npy", torch.randn(3, D, generator=g).numpy().astype(np.float16))
    detic_yaml(folder, folder / "clip_a+cname.npy", D)
    return folder


def detic_cfg(files, *, enable=True, order=("detic", "alphaclip"), **keys):
    cfg = get_cfg()
    add_detic_keys(cfg)
    ad2.add_alphaclip_config(cfg)
    for name in order:
        cfg.merge_from_file(str(files / f"detector_{DETIC_HEADS}_3.yaml") if name == "detic" else ad2.config_path())
    if enable:
        ad2.enable_alphaclip(cfg, **{"arch": "alpha-ViT-Tiny-8", "checkpoint": str(files / "tiny.safetensors"),
                                     "base": "", "vocabulary": VOCAB, "prompts": ["a photo of a {}."],
                                     "ensemble_weight": 0.5, **keys})
    return cfg


def image_input():
    g = torch.Generator().manual_seed(0)
    rgb = (torch.rand(3, 48, 80, generator=g) * 255).to(torch.uint8)
    return rgb, [{"image": rgb.flip(0), "height": 48, "width": 80}]


def run(model):
    with torch.no_grad():
        return model(image_input()[1])[0]["instances"]


# ------------------------------------------------------------------------------------------------ trap 1
def test_detics_heads_are_wrapped_with_their_zero_shot_classifier(files):
    cfgs = [detic_cfg(files, order=o) for o in (("detic", "alphaclip"), ("alphaclip", "detic"))]
    assert cfgs[0].dump() == cfgs[1].dump()  # either merge order
    cfg = cfgs[0]
    assert cfg.MODEL.ROI_HEADS.NAME == "AlphaCLIPDeticCascadeROIHeads"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    heads = model.roi_heads
    assert isinstance(heads, DeticCascadeROIHeads) and type(heads).alphaclip_base == DETIC_HEADS
    # Detic's zero-shot classifier is there, in every stage, with the classifier file's rows
    want = F.normalize(torch.from_numpy(np.load(files / "clip_a+cname.npy")).float().T, dim=0)
    for p in heads.box_predictor:
        assert isinstance(p.cls_score, ZeroShotStandIn)
        torch.testing.assert_close(p.cls_score.zs_weight[:, :3], want)
    # the plain Detic detector loads the same checkpoint, strictly: nothing skipped, nothing added
    plain = build_model(ad2.disable_alphaclip(cfg.clone())).eval()
    assert type(plain.roi_heads) is DeticCascadeROIHeads
    plain.load_state_dict(model.state_dict())
    a, b = run(model), run(plain)
    assert len(a) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)
    torch.testing.assert_close(a.det_scores, b.scores, atol=1e-5, rtol=0)
    rgb, _ = image_input()
    clip = heads.alpha_clip.classifier(rgb, boxes=b.pred_boxes.tensor).probs[torch.arange(len(b)), b.pred_classes]
    torch.testing.assert_close(a.scores, (b.scores * clip) ** 0.5, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ trap 2
def test_vocabulary_and_class_count_disagree_at_build(files):
    cfg = detic_cfg(files)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4  # e.g. the detector's file merged after enable_alphaclip
    with pytest.raises(ValueError, match=r"VOCABULARY: 3 class names, but the detector has 4 classes"):
        build_model(cfg)
    with pytest.raises(ValueError, match=r"VOCABULARY: 2 class names, but the detector has 3 classes"):
        detic_cfg(files, vocabulary=["cat", "dog"])


# ------------------------------------------------------------------------------------------------ trap 4
def test_custom_vocabulary_reset_must_be_followed(files):
    model = build_model(detic_cfg(files)).eval()
    g = torch.Generator().manual_seed(5)
    # Detic's custom vocabulary with a different class count: inference refuses to desync
    reset_classes(model, torch.randn(2, D, generator=g), 2)
    with pytest.raises(RuntimeError, match="the detector now predicts 2 classes but the Alpha-CLIP vocabulary has 3"):
        run(model)
    with pytest.raises(ValueError, match="vocabulary: 3 names, but the detector predicts 2 classes"):
        ad2.set_vocabulary(model, VOCAB)
    ad2.set_vocabulary(model, "sofa,lamp")
    out = run(model)
    assert model.roi_heads.alpha_clip.classifier.vocabulary == ["sofa", "lamp"]
    assert len(out) > 0 and int(out.pred_classes.max()) <= 1
    # same class count, other classes (or another order): caught by the classifier's fingerprint
    reset_classes(model, torch.randn(2, D, generator=g), 2)
    with pytest.raises(RuntimeError, match="zero-shot classifier changed since the Alpha-CLIP vocabulary was set"):
        run(model)
    ad2.set_vocabulary(model, ["lamp", "sofa"])
    assert len(run(model)) > 0


def test_detic_demo_flow_vocabulary_set_after_the_build(files):
    # Detic's demo builds with ZEROSHOT_WEIGHT_PATH 'rand' and resets the classifier afterwards
    cfg = detic_cfg(files, vocabulary=[])
    cfg.MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH = "rand"
    model = build_model(cfg).eval()
    with pytest.raises(RuntimeError, match=r"no vocabulary: .*set_vocabulary\(model, names\)"):
        run(model)
    rows = torch.from_numpy(np.load(files / "clip_a+cname.npy")).float()
    reset_classes(model, rows, 3)
    ad2.set_vocabulary(model, VOCAB)
    assert len(run(model)) > 0
    # a vocabulary given at build, then the reset: still caught
    cfg = detic_cfg(files)
    cfg.MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH = "rand"
    model = build_model(cfg).eval()
    reset_classes(model, rows, 3)
    with pytest.raises(RuntimeError, match="zero-shot classifier changed"):
        run(model)


def test_per_call_classifier_is_refused(files):
    model = build_model(detic_cfg(files)).eval()
    images = model.preprocess_image(image_input()[1])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    info = (torch.randn(3, D), None, None)
    with torch.no_grad(), pytest.raises(ValueError, match="classifier_info: a per-call classifier"):
        model.roi_heads(images, features, proposals, classifier_info=info)
    with torch.no_grad():
        instances, extra = model.roi_heads(images, features, proposals, classifier_info=(None, None, None))
    assert extra == {} and instances[0].has("clip_scores")


def test_set_vocabulary_needs_rescoring_heads(files):
    plain = build_model(ad2.disable_alphaclip(detic_cfg(files))).eval()
    with pytest.raises(ValueError, match=r"model: its ROI heads \(DeticCascadeROIHeads\) do not rescore"):
        ad2.set_vocabulary(plain, VOCAB)


@ROI_HEADS_REGISTRY.register()
class CfgInKwargsROIHeads(DeticCascadeROIHeads):
    """Heads whose from_config hands ``cfg`` to ``__init__`` (Detic's ``CustomRes5ROIHeads`` does)."""

    @configurable
    def __init__(self, **kwargs):
        self_cfg = kwargs.pop("cfg")
        super().__init__(**kwargs)
        self.ws_num_props = self_cfg.MODEL.ROI_HEADS.NUM_CLASSES

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), "cfg": cfg}


def test_heads_that_pass_cfg_to_init_are_wrapped(files):
    cfg = detic_cfg(files, enable=False)
    cfg.MODEL.ROI_HEADS.NAME = "CfgInKwargsROIHeads"
    ad2.enable_alphaclip(cfg, arch="alpha-ViT-Tiny-8", checkpoint=str(files / "tiny.safetensors"), base="",
                         vocabulary=VOCAB)
    model = build_model(cfg).eval()
    assert type(model.roi_heads).__name__ == "AlphaCLIPCfgInKwargsROIHeads" and model.roi_heads.ws_num_props == 3
    assert run(model).has("clip_scores")
    assert type(build_model(ad2.disable_alphaclip(cfg)).roi_heads) is CfgInKwargsROIHeads
