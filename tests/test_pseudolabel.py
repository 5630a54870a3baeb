"""The Alpha-CLIP pseudo-labeller: picks the right region, writes COCO/LVIS JSON, shards and resumes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alphaclip_core.alpha import boxes_to_masks, prepare, rle_encode
from alphaclip_core.model import AlphaCLIP
from alphaclip_train import pseudolabel as pl
from alphaclip_train.eval.resume import SettingsMismatch
from alphaclip_train.pseudolabel import (Candidate, PseudoLabelConfig, PseudoLabeler, candidates_from_sam, partition,
                                         select_regions, shard_ranges)

from conftest import TINY_CFG, randomize_alpha_conv

ROOT = Path(__file__).resolve().parents[1]
H, W = 40, 60
CAT_BOX = [4, 4, 24, 24]        # where "cat" is, in every image
DOG_BOX = [34, 12, 58, 38]      # where "dog" is
OTHER_BOX = [10, 22, 40, 39]    # a distractor
CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "hot_dog", "synonyms": ["dog"]}, {"id": 9, "name": "bird"}]


@pytest.fixture
def model() -> AlphaCLIP:
    torch.manual_seed(0)
    return randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval(), seed=5, scale=1.0)


def region_embedding(model, box) -> torch.Tensor:
    pixels, alpha = prepare(np.full((H, W, 3), 128, np.uint8), box=box, mode="pad", size=32)
    with torch.no_grad():
        return model.encode_image(pixels, alpha, normalize=True)[0]


def text_features(model) -> torch.Tensor:
    """Class embeddings constructed so that the alpha decides: 'cat' IS the cat region's embedding, etc."""
    return torch.stack([region_embedding(model, CAT_BOX), region_embedding(model, DOG_BOX),
                        region_embedding(model, OTHER_BOX)])


def xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def write_dataset(root: Path, n_extra: int = 0) -> dict:
    """Uniform grey images (pixels carry no information), labelled with category ids, + candidates."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    specs = [  # (labels, candidate boxes, with masks)
        ([3], [DOG_BOX, CAT_BOX, OTHER_BOX], False),
        ([7], [CAT_BOX, OTHER_BOX, DOG_BOX], True),
        ([3, 7], [OTHER_BOX, DOG_BOX, CAT_BOX], False),
        ([3], [], False),                              # no candidates
    ] + [([7], [CAT_BOX, DOG_BOX], False)] * n_extra
    images, cands = [], []
    for i, (labels, boxes, with_masks) in enumerate(specs):
        image_id = 100 + i
        name = f"n0000/{image_id}.png"
        (root / "img" / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (W, H), (128, 128, 128)).save(root / "img" / name)
        images.append({"id": image_id, "file_name": name, "width": W, "height": H, "pos_category_ids": labels})
        for j, b in enumerate(boxes):
            c = {"image_id": image_id, "bbox": xywh(b), "score": 0.5 + 0.1 * j}
            if with_masks:
                c["segmentation"] = rle_encode(boxes_to_masks(b, H, W)[0].numpy())
            cands.append(c)
    (root / "dataset.json").write_text(json.dumps({"images": images[::-1], "categories": CATS}))
    (root / "candidates.json").write_text(json.dumps(cands))
    return {"dataset": root / "dataset.json", "image_root": root / "img", "candidates": root / "candidates.json"}


# ------------------------------------------------------------------------------------------------ pure parts
def test_partition_covers_every_shard_once():
    for n in (0, 1, 5, 7):
        for world in (1, 2, 3, 4):
            parts = [partition(n, r, world) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert partition(5, 1, 2) == [1, 3]
    assert shard_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="rank: expected 0 <= rank < world_size=2, got 2"):
        partition(4, 2, 2)
    with pytest.raises(ValueError, match="world_size: expected >= 1"):
        partition(4, 0, 0)


def test_select_regions_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6], [0.05, 0.65]])
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [21, 21, 30, 30.0]])
    cfg = PseudoLabelConfig(max_per_label=1)
    assert select_regions(scores, boxes, cfg) == [(0, 0, pytest.approx(0.9)), (1, 1, pytest.approx(0.7))]
    # two per label: box 1 overlaps box 0 (IoU 0.81 > 0.5) so label 0 takes box 2; label 1 takes 1 and 3
    cfg = PseudoLabelConfig(max_per_label=2, max_per_image=0)
    got = [(k, l) for k, l, _ in select_regions(scores, boxes, cfg)]
    assert got == [(0, 0), (1, 1), (3, 1), (2, 0)]
    cfg = PseudoLabelConfig(max_per_label=2, max_per_image=3, score_threshold=0.66)
    assert [(k, l) for k, l, _ in select_regions(scores, boxes, cfg)] == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match=r"scores / boxes: expected \[K, L\] and \[K, 4\]"):
        select_regions(scores, boxes[:2], cfg)
    with pytest.raises(ValueError, match="score: expected 'prob' or 'cosine'"):
        PseudoLabelConfig(score="logit")


def test_candidates_from_sam_records():
    seg = np.zeros((H, W), bool)
    seg[5:10, 6:16] = True
    (c,) = candidates_from_sam([{"segmentation": seg, "bbox": [6, 5, 10, 5], "predicted_iou": 0.93}])
    assert c.box == [6.0, 5.0, 16.0, 10.0] and c.score == pytest.approx(0.93)
    assert c.mask == rle_encode(seg)


# ------------------------------------------------------------------------------------------------ labelling
def test_labeler_picks_the_region_of_the_label(model):
    labeler = PseudoLabeler(model, None, CATS, PseudoLabelConfig(), text_features=text_features(model))
    image = Image.new("RGB", (W, H), (128, 128, 128))
    cands = [Candidate(b, score=0.9) for b in (DOG_BOX, OTHER_BOX, CAT_BOX)]
    (ann,) = labeler.label_image(image, [3], cands)
    assert ann["category_id"] == 3 and ann["bbox"] == xywh(CAT_BOX) and ann["iscrowd"] == 0
    assert ann["area"] == 20 * 20
    # the image's labels are read off the same regions: both labels, best region each
    anns = labeler.label_image(image, [7, 3], cands)
    assert sorted((a["category_id"], tuple(a["bbox"])) for a in anns) == [(3, tuple(xywh(CAT_BOX))),
                                                                          (7, tuple(xywh(DOG_BOX)))]
    # proposal scores at full weight decide instead of Alpha-CLIP
    cands = [Candidate(DOG_BOX, score=0.99), Candidate(CAT_BOX, score=0.01)]
    cfg = PseudoLabelConfig(proposal_weight=1.0)
    labeler = PseudoLabeler(model, None, CATS, cfg, text_features=text_features(model))
    assert labeler.label_image(image, [3], cands)[0]["bbox"] == xywh(DOG_BOX)
    with pytest.raises(ValueError, match=r"label_ids: unknown category ids \[42\]"):
        labeler.label_image(image, [42], cands)


def test_run_writes_coco_json_that_pycocotools_reads(tmp_path, model):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    files = write_dataset(tmp_path)
    out = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "out", candidates=files["candidates"],
                 text_features=text_features(model), rank=0, world_size=1, progress=False, overlays=2)
    assert out == tmp_path / "out" / "pseudo_labels.json"
    coco = COCO(str(out))
    assert sorted(coco.getImgIds()) == [100, 101, 102, 103]
    assert sorted(coco.getCatIds()) == [3, 7, 9]
    got = sorted((a["image_id"], a["category_id"], tuple(a["bbox"])) for a in coco.loadAnns(coco.getAnnIds()))
    assert got == [(100, 3, tuple(xywh(CAT_BOX))), (101, 7, tuple(xywh(DOG_BOX))),
                   (102, 3, tuple(xywh(CAT_BOX))), (102, 7, tuple(xywh(DOG_BOX)))]
    anns = coco.loadAnns(coco.getAnnIds())
    assert [a["id"] for a in anns] == [1, 2, 3, 4]
    assert all(0 < a["score"] <= 1 for a in anns)
    (masked,) = coco.loadAnns(coco.getAnnIds(imgIds=[101]))
    decoded = mask_utils.decode(masked["segmentation"])
    np.testing.assert_array_equal(decoded, boxes_to_masks(DOG_BOX, H, W)[0].numpy().astype(np.uint8))
    assert masked["area"] == pytest.approx(24 * 26)
    assert coco.annToMask(masked).sum() == 24 * 26
    data = json.loads(out.read_text())
    assert data["images"][0]["neg_category_ids"] == [] and data["images"][0]["pos_category_ids"] == [3]
    assert data["info"]["stats"] == {"images": 4, "images_without_candidates": 1, "regions_scored": 9,
                                     "annotations": 4}
    # overlays of the first two labelled images: the picked region is tinted, the rest stays grey
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == ["100.png", "101.png"]
    picture = np.asarray(Image.open(tmp_path / "out" / "overlays" / "100.png"))
    assert picture.shape == (H, W, 3)
    assert tuple(picture[14, 14]) != (128, 128, 128) and tuple(picture[35, 55]) == (128, 128, 128)


def test_two_ranks_partition_and_resume(tmp_path, model, monkeypatch):
    files = write_dataset(tmp_path, n_extra=3)  # 7 images
    cfg = PseudoLabelConfig(shard_size=2)       # 4 shards
    kw = dict(candidates=files["candidates"], text_features=text_features(model), config=cfg, progress=False)
    single = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "one", **kw)
    seen = []
    original = PseudoLabeler.label_image
    monkeypatch.setattr(PseudoLabeler, "label_image",
                        lambda self, img, labels, c: seen.append(len(c)) or original(self, img, labels, c))
    assert pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", rank=0, world_size=2,
                  **kw) is None  # rank 1's shards are missing: no merge yet
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").iterdir())
    assert shards == ["shard-00000-of-00004.json", "shard-00002-of-00004.json"]
    assert len(seen) == 4  # images 0-1 and 4-5
    merged = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", rank=1, world_size=2, **kw)
    assert len(seen) == 7
    assert json.loads(merged.read_text()) == json.loads(single.read_text())
    # resume: a finished run recomputes nothing; a lost shard is recomputed alone
    (tmp_path / "two" / "shards" / "shard-00003-of-00004.json").unlink()
    merged.unlink()
    assert pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", rank=0, world_size=2,
                  **kw) is None
    assert len(seen) == 7
    pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", rank=1, world_size=2, **kw)
    assert len(seen) == 8 and json.loads(merged.read_text()) == json.loads(single.read_text())
    # a different batch size (another GPU) does not change results: finished shards are reused
    other = dict(kw, config=PseudoLabelConfig(shard_size=2, batch_size=3))
    assert pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", **other) == merged
    assert len(seen) == 8
    # shards of another configuration are refused, naming what differs; --restart recomputes them
    other = dict(kw, config=PseudoLabelConfig(shard_size=2, score_threshold=0.5))
    with pytest.raises(SettingsMismatch, match=r"holds the shards of a run with other settings "
                                               r"\(config.score_threshold: 0.0 -> 0.5\); rerun with --restart"):
        pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", **other)
    assert len(seen) == 8
    strict = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", restart=True, **other)
    assert len(seen) == 15 and json.loads(strict.read_text()) == json.loads(
        pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "fresh", **other).read_text())
    # other weights or other class names: refused too
    heavier = randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval(), seed=6, scale=1.0)
    with pytest.raises(SettingsMismatch, match=r"model: \"[0-9a-f]{16}\" -> \"[0-9a-f]{16}\""):
        pl.run(heavier, None, files["dataset"], files["image_root"], tmp_path / "two", **other)
    data = json.loads(files["dataset"].read_text())
    data["categories"][0]["name"] = "kitten"
    files["dataset"].write_text(json.dumps(data))
    with pytest.raises(SettingsMismatch, match=r"categories: "):
        pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", **other)


def test_shards_of_an_older_version_are_not_trusted(tmp_path, model):
    files = write_dataset(tmp_path)
    kw = dict(candidates=files["candidates"], text_features=text_features(model), progress=False,
              config=PseudoLabelConfig(shard_size=2))
    out = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "o", **kw)
    (tmp_path / "o" / "run.json").unlink()                      # as an older version left it: no run.json
    shard = tmp_path / "o" / "shards" / "shard-00000-of-00002.json"
    shard.write_text(json.dumps(dict(json.loads(shard.read_text()), fingerprint="0123456789abcdef")))
    with pytest.raises(SettingsMismatch, match=r"shard .*shard-00000-of-00002.json was written by a run with "
                                               r"another configuration"):
        pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "o", **kw)
    assert pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "o", restart=True, **kw) == out


def test_bad_inputs_are_named(tmp_path, model):
    files = write_dataset(tmp_path)
    kw = dict(text_features=text_features(model), progress=False)
    with pytest.raises(ValueError, match="candidates / proposer: give exactly one"):
        pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "o", **kw)
    with pytest.raises(FileNotFoundError, match="dataset: no such file"):
        pl.run(model, None, tmp_path / "nope.json", files["image_root"], tmp_path / "o",
               candidates=files["candidates"], **kw)
    (tmp_path / "img" / "n0000" / "101.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image 101: no such file: .*101\.png"):
        pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "o", candidates=files["candidates"], **kw)
    data = json.loads(files["dataset"].read_text())
    data["images"][0]["pos_category_ids"] = [3, 55]
    files["dataset"].write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"dataset: image 103 names unknown category ids \[55\]"):
        pl.load_dataset(files["dataset"])
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 100, "bbox": [1, 1, 0, 5]}]))
    with pytest.raises(ValueError, match=r"candidates: entry 0 has an empty bbox"):
        pl.load_candidates(tmp_path / "bad.json", [{"id": 100, "width": W, "height": H}])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="candidates: .*bad.json is not valid JSON"):
        pl.load_candidates(tmp_path / "bad.json", [])


def test_torchrun_two_processes(tmp_path, model):
    """``alphaclip pseudolabel`` under torchrun with 2 ranks gives the same JSON as one in-process run."""
    import alphaclip_integrations.open_clip as aoc
    from alphaclip_core.region_classifier import save_text_classifier

    files = write_dataset(tmp_path, n_extra=1)
    folder = aoc.save_pretrained(model, tmp_path / "model")
    feats = text_features(model)
    save_text_classifier(tmp_path / "classes.npy", feats)
    cfg = PseudoLabelConfig(shard_size=2)
    expected = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "ref",
                      candidates=files["candidates"], text_features=feats, config=cfg, progress=False)
    paths = [str(ROOT / ".dev")] if (ROOT / ".dev").is_dir() else []  # a source checkout's import names
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
           "-m", "alphaclip_core.cli", "pseudolabel", "--dataset", str(files["dataset"]),
           "--image-root", str(files["image_root"]), "--candidates", str(files["candidates"]),
           "--out-dir", str(tmp_path / "dist"), "--text-features", str(tmp_path / "classes.npy"),
           "--shard-size", "2", "--model", f"local-dir:{folder}", "--no-progress", "--precision", "fp32"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "dist" / "pseudo_labels.json").read_text())
    want = json.loads(expected.read_text())
    got["info"].pop("fingerprint"), want["info"].pop("fingerprint")  # the CLI's tag names the model
    assert got == want
    assert len(list((tmp_path / "dist" / "shards").iterdir())) == 3


def test_proposer_instead_of_a_candidates_file(tmp_path, model):
    files = write_dataset(tmp_path)
    by_file = pl.load_candidates(files["candidates"], pl.load_dataset(files["dataset"])[0])
    order = iter([100, 101, 102, 103])  # images are visited in id order
    seen_sizes = []

    def proposer(image):
        seen_sizes.append(image.size)
        return by_file.get(next(order), [])

    kw = dict(text_features=text_features(model), progress=False)
    a = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "a", proposer=proposer, **kw)
    b = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "b", candidates=files["candidates"], **kw)
    assert seen_sizes == [(W, H)] * 4
    assert json.loads(a.read_text())["annotations"] == json.loads(b.read_text())["annotations"]


def test_workers_decode_images_without_changing_results(tmp_path, model):
    files = write_dataset(tmp_path, n_extra=2)
    kw = dict(candidates=files["candidates"], text_features=text_features(model), progress=False,
              config=PseudoLabelConfig(shard_size=3))
    one = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "one", **kw)
    two = pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "two", num_workers=2, **kw)
    assert json.loads(one.read_text()) == json.loads(two.read_text())
    (tmp_path / "img" / "n0000" / "101.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image 101: no such file: .*101\.png"):
        pl.run(model, None, files["dataset"], files["image_root"], tmp_path / "three", num_workers=2, **kw)
