"""Evaluation: ImageNet-S zero-shot, referring expressions (refer layout, restricted unpickling), baselines.

The model is the hand-wired tiny Alpha-CLIP of ``eval_kit``: its image feature is the mean colour
of the region the alpha selects and each text's feature is the colour it names, so the right answers
are known in advance; the expected metrics below are counted by hand from the images' designs.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import doc_blocks
import torch
from PIL import Image

import alphaclip_integrations.open_clip as aoc
from alphaclip_core.checkpoints import save_safetensors
from alphaclip_core.cli import main as alphaclip_main
from alphaclip_core.regions import text_classifier
from alphaclip_train.eval import baselines
from alphaclip_train.eval.imagenet_s import (ImageNetS, accuracy_report, class_names, decode_segmentation,
                                             evaluate, openai_names, paper_names, ranked_predictions,
                                             read_categories, read_names, results_markdown)
from alphaclip_train.eval.resume import SettingsMismatch
from alphaclip_train.eval.rec import (RecScorer, RestrictedUnpickler, box_iou, evaluate_rec, load_plain_json,
                                      load_proposals, load_refer, load_refs, rec_markdown, sam_box_masks)
from eval_kit import COLORS, build_color_clip, plain_copy, quadrants, tiny_sam, tokenizer

TEMPLATE = "a photo of a {}."
NAMES = list(COLORS)                                      # red green blue yellow cyan magenta
WNIDS = {c: f"n0100000{i + 1}" for i, c in enumerate(NAMES)}  # sorted order == NAMES order: class id i+1


# ------------------------------------------------------------------------------------------------ metrics
def test_accuracy_report_hand_counted():
    # 5 samples, 6 classes; rows are scores, targets below
    logits = torch.tensor([
        [9, 8, 7, 6, 5, 4],   # target 0: rank 1            -> top1, top5
        [9, 8, 7, 6, 5, 4],   # target 1: rank 2            -> top5 only
        [1, 2, 3, 4, 5, 9],   # target 0: rank 6 (last)     -> miss both
        [0, 0, 9, 0, 0, 0.5],  # target 2: rank 1           -> top1, top5
        [5, 4, 3, 2, 1, 0],   # target 2: rank 3            -> top5 only
    ], dtype=torch.float32)
    targets = torch.tensor([0, 1, 0, 2, 2])
    ranked = ranked_predictions(logits, 5)
    assert ranked.shape == (5, 5) and ranked[3, 0] == 2
    r = accuracy_report(ranked, targets)
    assert r["n"] == 5 and r["n_classes"] == 3
    assert r["top1"] == pytest.approx(100 * 2 / 5)
    assert r["top5"] == pytest.approx(100 * 4 / 5)
    # per class top-1: class0 1/2, class1 0/1, class2 1/2 -> mean 1/3; top-5: 1/2, 1, 1 -> 5/6
    assert r["mean_class_top1"] == pytest.approx(100 / 3)
    assert r["mean_class_top5"] == pytest.approx(100 * 5 / 6)
    with pytest.raises(ValueError, match=r"ranked \[N, R\] and targets \[N\] must agree"):
        accuracy_report(ranked, targets[:3])


def test_box_iou_hand_counted():
    iou = box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[50 / 150, 1.0, 0.0]], atol=1e-12)


# ------------------------------------------------------------------------------------------------ baselines
def test_baseline_views():
    img = Image.fromarray(quadrants("red", "green", "blue", "yellow"))
    mask = np.zeros((64, 64), bool)
    mask[4:20, 36:60] = True                                        # inside the green quadrant
    assert baselines.mask_bbox(mask) == (36, 4, 60, 20)
    crop = baselines.crop_region(img, (36, 4, 60, 20))
    assert crop.size == (24, 16) and np.asarray(crop)[0, 0].tolist() == [0, 255, 0]
    masked = np.asarray(baselines.mask_background(img, mask))
    assert masked[10, 40].tolist() == [0, 255, 0] and masked[50, 10].tolist() == list(baselines.MEAN_RGB)
    circled = np.asarray(baselines.red_circle(img, (36, 4, 60, 20), width=2))
    assert circled[12, 36].tolist() == [255, 0, 0] and circled[12, 48].tolist() == [0, 255, 0]
    blurred = np.asarray(baselines.blur_background(img, mask, radius=4))
    assert blurred[10, 40].tolist() == [0, 255, 0]                   # region untouched
    assert blurred[31, 10].tolist() != [255, 0, 0]                   # background near an edge is mixed
    with pytest.raises(ValueError, match="mask is empty"):
        baselines.mask_bbox(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="box: expected xyxy pixels with x0 < x1"):
        baselines.crop_region(img, (10, 10, 5, 20))
    with pytest.raises(ValueError, match="view: expected one of"):
        baselines.baseline_view("sepia", img, mask)


# ------------------------------------------------------------------------------------------------ ImageNet-S
def _seg_png(ids: np.ndarray) -> Image.Image:
    rgb = np.zeros(ids.shape + (3,), np.uint8)
    rgb[..., 0], rgb[..., 1] = ids % 256, ids // 256
    return Image.fromarray(rgb)


def write_imagenet_s(root: Path) -> Path:
    """A tiny ImageNet-S in the released layout; returns the categories file."""
    base = root / "ImageNetS919"
    cid = {c: i + 1 for i, c in enumerate(NAMES)}
    l_shape = np.zeros((64, 64), bool)
    l_shape[:16, :] = True
    l_shape[:, :16] = True
    imgs = {}
    # A (red): red TL quadrant is the object; the rest green/blue/blue -> whole image looks blue
    a_ids = np.zeros((64, 64), np.int64)
    a_ids[:32, :32] = cid["red"]
    a_ids[60:, 60:] = 1000                                                   # ignored pixels
    imgs["red/A"] = (quadrants("red", "green", "blue", "blue"), a_ids)
    # B (green): all green, the object is the centre
    b_ids = np.zeros((64, 64), np.int64)
    b_ids[16:48, 16:48] = cid["green"]
    imgs["green/B"] = (quadrants("green", "green", "green", "green"), b_ids)
    # C (blue): a thin blue L (7 of 16 patches) on red: its box is the whole image, which looks red
    c_img = quadrants("red", "red", "red", "red")
    c_img[l_shape] = COLORS["blue"]
    imgs["blue/C"] = (c_img, np.where(l_shape, cid["blue"], 0))
    # E (red): all red, all object
    imgs["red/E"] = (quadrants("red", "red", "red", "red"), np.full((64, 64), cid["red"]))
    # F (green): no pixel of its class (only "other" and "ignored"): skipped
    f_ids = np.zeros((64, 64), np.int64)
    f_ids[:8] = 1000
    imgs["green/F"] = (quadrants("green", "green", "green", "green"), f_ids)
    for key, (img, ids) in imgs.items():
        colour, name = key.split("/")
        for sub, obj, ext in (("validation", Image.fromarray(img), "JPEG"), ("validation-segmentation", _seg_png(ids), "png")):
            d = base / sub / WNIDS[colour]
            d.mkdir(parents=True, exist_ok=True)
            if ext == "JPEG":
                obj.save(d / f"{name}.JPEG", quality=100, subsampling=0)
            else:
                obj.save(d / f"{name}.png")
    cats = root / "categories.txt"
    cats.write_text("\n".join(reversed(list(WNIDS.values()))) + "\n")      # unsorted on purpose
    names = root / "names.txt"
    names.write_text("".join(f"{WNIDS[c]} {c}\n" for c in NAMES))
    return cats


@pytest.fixture(scope="module")
def color_models():
    texts = {TEMPLATE.format(c): c for c in NAMES}
    texts.update({c: c for c in NAMES})
    alpha = build_color_clip(texts)
    return alpha, plain_copy(alpha)


def test_segmentation_and_names_files(tmp_path):
    ids = np.array([[0, 1, 255], [256, 919, 1000]])
    assert decode_segmentation(_seg_png(ids)).tolist() == ids.tolist()   # id = R + 256 * G
    with pytest.raises(ValueError, match="expected an RGB PNG with class id = R \\+ 256\\*G"):
        decode_segmentation(Image.new("L", (2, 2)))
    cats = write_imagenet_s(tmp_path)
    assert read_categories(cats) == sorted(WNIDS.values())
    assert read_names(tmp_path / "names.txt", sorted(WNIDS.values())) == NAMES
    (tmp_path / "names.json").write_text(json.dumps({w: c.upper() for c, w in WNIDS.items()}))
    assert read_names(tmp_path / "names.json", [WNIDS["blue"]]) == ["BLUE"]
    (tmp_path / "short.txt").write_text("red\ngreen\n")
    with pytest.raises(ValueError, match="lists 2 names but there are 6 categories"):
        read_names(tmp_path / "short.txt", sorted(WNIDS.values()))
    # built-in names: open_clip's curated ImageNet-1k names, or the paper's (WordNet's first lemma)
    assert openai_names(["n01443537", "n01440764"]) == ["goldfish", "tench"]
    with pytest.raises(ValueError, match="not ImageNet-1k classes"):
        openai_names(["n01000001"])
    with pytest.raises(ValueError, match="not ImageNet-1k classes"):
        paper_names(["n01000001"])
    assert class_names([WNIDS["blue"]], tmp_path / "names.json") == ["BLUE"]
    with pytest.raises(FileNotFoundError, match="expected 'paper', 'openai' or a names file, got 'wordnet'"):
        class_names(["n01440764"], "wordnet")


def test_paper_names_are_wordnet_first_lemmas():
    # the reference script's names: synset.lemmas()[0].name(), underscores kept; open_clip curates its own
    wnids = ["n02930766", "n01484850", "n04037443", "n02110958", "n02104029", "n07742313"]
    assert paper_names(wnids) == ["cab", "great_white_shark", "racer", "pug", "kuvasz", "Granny_Smith"]
    assert openai_names(wnids) == ["taxicab", "great white shark", "race car", "pug", "Kuvasz",
                                    "Granny Smith apple"]
    assert class_names(wnids) == paper_names(wnids) and class_names(wnids, "openai") == openai_names(wnids)
    from timm.data import ImageNetInfo

    all_wnids = ImageNetInfo().label_names()
    paper, openai = paper_names(all_wnids), openai_names(all_wnids)
    assert len(paper) == 1000 and len(set(paper)) == 998             # 'crane' and 'maillot' name two synsets each
    assert sum(a != b for a, b in zip(paper, openai)) == 609         # the count
    assert sum(a.replace("_", " ") != b for a, b in zip(paper, openai)) == 363
    assert all(" " not in n for n in paper)


def test_imagenet_s_dataset_layout(tmp_path):
    cats = write_imagenet_s(tmp_path)
    ds = ImageNetS(tmp_path, cats)                          # the parent of ImageNetS919 works too
    assert len(ds) == 5 and ds.wnids == sorted(WNIDS.values())
    i = [s.image.stem for s in ds.samples].index("A")
    image, region = ds.load(i)
    assert ds.samples[i].label == NAMES.index("red") and image.size == (64, 64)
    assert region.sum() == 32 * 32 and not region[60:, 60:].any()
    os.remove(tmp_path / "ImageNetS919" / "validation-segmentation" / WNIDS["red"] / "E.png")
    with pytest.raises(FileNotFoundError, match="1 images have no segmentation PNG"):
        ImageNetS(tmp_path / "ImageNetS919", cats)
    assert len(ImageNetS(tmp_path, cats, skip_missing=True)) == 4
    with pytest.raises(FileNotFoundError, match="no folder .*validation-segmentation"):
        ImageNetS(tmp_path / "nowhere")


def test_imagenet_s_evaluate_hand_counted(tmp_path, color_models):
    alpha, plain = color_models
    cats = write_imagenet_s(tmp_path)
    ds = ImageNetS(tmp_path, cats)
    classifier = text_classifier(alpha, tokenizer(), NAMES, [TEMPLATE])
    state = tmp_path / "state.jsonl"
    res = evaluate(ds, classifier, alpha, plain, progress=False, state_path=state)
    m = res["metrics"]
    assert res["n"] == 5 and res["n_empty_mask"] == 1 and res["n_pad_fallback"] == 0
    # images A(red) B(green) C(blue) E(red); per method: which are right (by the designs above)
    expected = {
        "alpha_mask": ([1, 1, 1, 1], 100.0),                  # mask: always the object's colour
        "alpha_box": ([1, 1, 0, 1], 100 * (1 + 1 + 0) / 3),   # C's box is the whole (mostly red) image
        "alpha_whole": ([0, 1, 0, 1], 100 * (0.5 + 1 + 0) / 3),
        "clip_whole": ([0, 1, 0, 1], 100 * (0.5 + 1 + 0) / 3),
        "clip_crop": ([1, 1, 0, 1], 100 * (1 + 1 + 0) / 3),
        "clip_masked": ([1, 1, 1, 1], 100.0),                 # background at the mean colour = 0
    }
    for method, (hits, mean_class) in expected.items():
        assert m[method]["n"] == 4, method
        assert m[method]["top1"] == pytest.approx(100 * sum(hits) / 4), method
        assert m[method]["mean_class_top1"] == pytest.approx(mean_class), method
        assert m[method]["top5"] >= m[method]["top1"]
    assert set(m) == {"alpha_whole", "alpha_box", "alpha_mask", "clip_whole", "clip_crop", "clip_red_circle",
                      "clip_masked", "clip_blurred"}
    md = results_markdown(m, "B/16")
    assert "| Alpha-CLIP, mask | 100.00 | 68.89 |" in md and "| original CLIP | 50.00 | 66.48 |" in md

    # resume: every image is in the state file, so the (same) models are never called
    def broken(model):
        import copy

        twin = copy.deepcopy(model)

        def encode_image(*a, **k):
            raise AssertionError("resumed run recomputed an image")

        twin.encode_image = encode_image
        return twin

    again = evaluate(ds, classifier, broken(alpha), broken(plain), progress=False, state_path=state)
    assert again["metrics"] == m
    with pytest.raises(ValueError, match=r"methods: \['clip_crop'\] need a model that was not given"):
        evaluate(ds, classifier, alpha, None, methods=["clip_crop"], progress=False)
    with pytest.raises(ValueError, match=r"classifier: expected \[6, D\]"):
        evaluate(ds, classifier[:2], alpha, progress=False)


def test_imagenet_s_region_cut_off_by_the_crop_falls_back_to_padding(tmp_path, color_models):
    alpha, _ = color_models
    img = np.zeros((64, 128, 3), np.uint8)
    img[:] = COLORS["blue"]
    img[:, :32] = COLORS["red"]                                   # the object: a strip the centre crop drops
    ids = np.zeros((64, 128), np.int64)
    ids[:, :32] = 1
    for sub, obj, ext in (("validation", Image.fromarray(img), "JPEG"), ("validation-segmentation", _seg_png(ids), "png")):
        (tmp_path / sub / WNIDS["red"]).mkdir(parents=True)
        obj.save(tmp_path / sub / WNIDS["red"] / f"x.{ext}", **({"quality": 100} if ext == "JPEG" else {}))
    (tmp_path / "validation" / WNIDS["blue"]).mkdir()                # a second category, no images
    ds = ImageNetS(tmp_path)
    classifier = text_classifier(alpha, tokenizer(), ["red", "blue"], [TEMPLATE])
    res = evaluate(ds, classifier, alpha, methods=["alpha_mask", "alpha_whole"], progress=False)
    assert res["n_pad_fallback"] == 1
    assert res["metrics"]["alpha_mask"]["top1"] == 100.0 and res["metrics"]["alpha_whole"]["top1"] == 0.0


def test_imagenet_s_cli(tmp_path, color_models):
    alpha, plain = color_models
    write_imagenet_s(tmp_path)
    aoc.save_pretrained(alpha, tmp_path / "alpha_model")
    save_safetensors(plain, tmp_path / "plain.safetensors")
    out = tmp_path / "results"
    rc = alphaclip_main(["eval", "imagenet-s", str(tmp_path), "--categories", str(tmp_path / "categories.txt"),
                         "--names", str(tmp_path / "names.txt"), "--model", f"local-dir:{tmp_path / 'alpha_model'}",
                         "--plain-base", str(tmp_path / "plain.safetensors"), "--methods", "alpha_mask", "alpha_box",
                         "clip_whole", "--out", str(out), "--stem", "ins"])
    assert rc == 0
    payload = json.loads((out / "ins.json").read_text())
    assert payload["metrics"]["alpha_mask"]["top1"] == pytest.approx(100.0)
    assert payload["metrics"]["alpha_box"]["top1"] == pytest.approx(75.0)
    assert payload["metrics"]["clip_whole"]["top1"] == pytest.approx(50.0)
    md = (out / "ins.md").read_text()
    assert "| Alpha-CLIP, box (rectangle) | 66.67 |" in md and (out / "ins.state.jsonl").is_file()


# ------------------------------------------------------------------------------------------------ REC
def write_refer(root: Path, protocol: int = 2) -> Path:
    """A tiny refer-layout RefCOCO: two COCO images of four coloured quadrants, GT boxes = quadrants."""
    img_dir = root / "images" / "mscoco" / "images" / "train2014"
    img_dir.mkdir(parents=True)
    layouts = {1: ("red", "green", "blue", "yellow"), 2: ("cyan", "magenta", "red", "green")}
    images, anns = [], []
    xywh = [[0, 0, 32, 32], [32, 0, 32, 32], [0, 32, 32, 32], [32, 32, 32, 32]]
    for iid, cols in layouts.items():
        name = f"COCO_train2014_{iid:012d}.jpg"
        Image.fromarray(quadrants(*cols)).save(img_dir / name, quality=100, subsampling=0)
        images.append({"id": iid, "file_name": name, "height": 64, "width": 64})
        for q, box in enumerate(xywh):
            anns.append({"id": iid * 10 + q + 1, "image_id": iid, "bbox": box, "category_id": 1, "area": 1024})
    d = root / "refcoco"
    d.mkdir()
    (d / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))

    def ref(rid, iid, ann, split, sents):
        return {"ref_id": rid, "image_id": iid, "ann_id": ann, "split": split, "category_id": 1,
                "sentences": [{"sent": s, "raw": s.upper(), "sent_id": rid * 10 + i} for i, s in enumerate(sents)]}

    refs = [ref(1, 1, 12, "val", ["green", "red"]),   # 'green' right; 'red' (wrong words) picks red: miss
            ref(2, 1, 13, "val", ["blue"]),           # right
            ref(3, 2, 22, "testA", ["magenta"]),      # right
            ref(4, 2, 21, "testB", ["yellow"]),       # target cyan, 'yellow' is nearest green: miss
            ref(5, 1, 11, "train", ["red"])]          # not an evaluation split
    with open(d / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=protocol)
    return img_dir


@pytest.fixture(scope="module")
def rec_models():
    texts = {c: c for c in NAMES}
    return [(build_color_clip(texts, seed=0), tokenizer()), (build_color_clip(texts, seed=1), tokenizer())]


def test_refs_pickle_is_read_restricted(tmp_path):
    write_refer(tmp_path, protocol=0)
    refs = load_refs(tmp_path / "refcoco" / "refs(unc).p")
    assert len(refs) == 5 and refs[0]["sentences"][1]["sent"] == "red"
    # Python-2 pickles hold byte strings: they come back as str
    def s(b: bytes) -> bytes:                # SHORT_BINSTRING: how Python 2 pickles a str
        return b"U" + bytes([len(b)]) + b

    py2 = tmp_path / "py2.p"                 # [{'split': 'val', 'sentences': [{'sent': 'caf\xc3\xa9'}]}] from Python 2
    py2.write_bytes(b"\x80\x02](}(" + s(b"split") + s(b"val") + s(b"sentences") + b"](}(" + s(b"sent")
                    + s("caf\u00e9".encode()) + b"ueue.")
    assert load_refs(py2) == [{"split": "val", "sentences": [{"sent": "caf\u00e9"}]}]

    import collections

    bad = tmp_path / "bad.p"
    bad.write_bytes(pickle.dumps([{"ref_id": 1, "x": collections.OrderedDict(a=1)}]))
    with pytest.raises(pickle.UnpicklingError, match="refused to load the global 'collections.OrderedDict'"):
        load_refs(bad)

    victim = tmp_path / "victim.txt"
    victim.write_text("still here")

    class Evil:
        def __reduce__(self):
            return (os.remove, (str(victim),))

    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps([{"ref_id": Evil()}]))
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load the global '(posix|os|nt)\.(remove|unlink)'"):
        load_refs(evil)
    assert victim.read_text() == "still here"
    import io
    with pytest.raises(pickle.UnpicklingError, match="refused to load the global"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(torch.zeros(1)))).load()
    (tmp_path / "trunc.p").write_bytes(pickle.dumps(refs)[:20])
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_refs(tmp_path / "trunc.p")


def test_refer_layout_and_rec_accuracy_hand_counted(tmp_path, rec_models):
    img_dir = write_refer(tmp_path)
    samples = load_refer(tmp_path, "refcoco", splits=("val", "testA", "testB"))
    assert [s.ref_id for s in samples] == [1, 2, 3, 4]
    assert samples[0].image == img_dir / "COCO_train2014_000000000001.jpg"
    np.testing.assert_array_equal(samples[0].target, [32, 0, 64, 32])              # xywh -> xyxy
    assert samples[0].candidates.shape == (4, 4) and samples[0].sentences == ["green", "red"]
    assert load_refer(tmp_path, "refcoco", sentence_key="raw")[0].sentences == ["GREEN", "RED"]

    scorer = RecScorer(rec_models)                                       # image + blurred views, 2 models
    res = evaluate_rec(samples, scorer, progress=False)
    assert res == {"testA": {"n": 1, "correct": 1, "accuracy": 100.0},
                   "testB": {"n": 1, "correct": 0, "accuracy": 0.0},
                   "val": {"n": 3, "correct": 2, "accuracy": pytest.approx(200 / 3)}}
    md = rec_markdown({"refcoco": res})
    assert "| Alpha-CLIP (this run) | 66.7/100.0/0.0 | -/-/- | -/- |" in md
    assert md.splitlines()[0] == "| method | RefCOCO val/testA/testB | RefCOCO+ val/testA/testB | RefCOCOg val/test |"

    # proposals replace the GT candidates: shifted boxes (IoU 0.88 with the target) still count as right
    props = tmp_path / "props.json"
    shifted = [[2, 0, 34, 32], [34, 0, 64, 32], [0, 34, 32, 64], [34, 34, 64, 64]]
    props.write_text(json.dumps({"1": shifted, "2": [b + [0.9] for b in shifted]}))
    res_p = evaluate_rec(samples, RecScorer(rec_models[:1], views=["image"]), proposals=load_proposals(props),
                         progress=False)
    assert [res_p[s]["correct"] for s in ("val", "testA", "testB")] == [2, 1, 0]
    # degenerate / outside proposals are dropped; an image with none left counts as wrong
    props.write_text(json.dumps({"1": [[10, 10, 10, 20], [70, 0, 90, 10]] + shifted, "2": [[5, 5, 5, 5]]}))
    res_d = evaluate_rec(samples, RecScorer(rec_models[:1], views=["image"]), proposals=load_proposals(props),
                         progress=False)
    assert [res_d[s]["correct"] for s in ("val", "testA", "testB")] == [2, 0, 0]
    with pytest.raises(ValueError, match="proposals: no boxes for image 2"):
        evaluate_rec(samples, RecScorer(rec_models[:1]), proposals={"1": np.array(shifted, float)}, progress=False)


def test_rec_ensemble_is_the_mean_of_models_and_views(tmp_path, rec_models):
    write_refer(tmp_path)
    s = load_refer(tmp_path, "refcoco", splits=("val",))[0]
    image = Image.open(s.image)
    both = RecScorer(rec_models).score(image, s.candidates, ["green", "blue"])
    parts = [RecScorer([m], views=[v]).score(image, s.candidates, ["green", "blue"])
             for m in rec_models for v in ("image", "blur")]
    torch.testing.assert_close(both, torch.stack(parts).mean(0), atol=1e-6, rtol=0)
    assert both.shape == (2, 4) and both.argmax(1).tolist() == [1, 2]
    # the blurred view keeps the region sharp: its score for the right region is the colour match (~1)
    blur_only = parts[1]
    assert blur_only[0, 1] == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="views: expected a non-empty subset"):
        RecScorer(rec_models, views=["sepia"])
    with pytest.raises(ValueError, match="boxes: no candidate regions"):
        RecScorer(rec_models).score(image, np.zeros((0, 4)), ["red"])


def test_sam_box_masks_per_candidate(tmp_path, rec_models):
    from alphaclip_train.sam import box_predictor

    predictor = box_predictor(tiny_sam())
    calls = []
    original = predictor.predict_torch

    def predict_torch(*a, **k):                      # the tiny SAM's masks, with the second one emptied
        masks, iou, low = original(*a, **k)
        calls.append(k["boxes"].shape)
        masks[1] = False
        return masks, iou, low

    predictor.predict_torch = predict_torch
    image = Image.fromarray(quadrants("red", "green", "blue", "yellow"))
    boxes = np.array([[0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64]], dtype=float)
    masks = sam_box_masks(predictor)(image, boxes)
    assert calls == [torch.Size([3, 4])]                     # one batched call: the image is embedded once
    assert masks.shape == (3, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[1].sum() == 32 * 32 and masks[1, :32, 32:].all()    # empty SAM mask -> the box itself
    scores = RecScorer(rec_models[:1], mask_fn=sam_box_masks(predictor)).score(image, boxes, ["red"])
    assert scores.shape == (1, 3)


def test_rec_plain_json_layout_and_cli(tmp_path, rec_models):
    img_dir = write_refer(tmp_path)
    entries = [{"image": "COCO_train2014_000000000001.jpg", "split": "val", "sentences": ["blue"],
                "box": [0, 32, 32, 64], "candidates": [[0, 0, 32, 32], [0, 32, 32, 64]]},
               {"image": "COCO_train2014_000000000001.jpg", "split": "val", "sentences": ["yellow"],
                "box": [32, 32, 64, 64]}]
    plain = img_dir / "plain.json"
    plain.write_text(json.dumps(entries))
    samples = load_plain_json(plain)
    assert samples[1].candidates.tolist() == [[0, 32, 32, 64], [32, 32, 64, 64]]   # the image's targets
    state = tmp_path / "rec.state.jsonl"
    first = evaluate_rec(samples, RecScorer(rec_models), state_path=state, progress=False)
    assert first["val"]["correct"] == 2

    class Broken(RecScorer):
        def score_prepared(self, *a, **k):
            raise AssertionError("resumed run rescored an image")

    assert evaluate_rec(samples, Broken(rec_models), state_path=state, progress=False) == first
    with pytest.raises(ValueError, match="entry 0 has no 'box'"):
        (tmp_path / "bad.json").write_text(json.dumps([{"image": "x.jpg", "sentences": []}]))
        load_plain_json(tmp_path / "bad.json")

    aoc.save_pretrained(rec_models[0][0], tmp_path / "m0")
    out = tmp_path / "res"
    rc = alphaclip_main(["eval", "rec", str(tmp_path), "--datasets", "refcoco", "--model",
                         f"local-dir:{tmp_path / 'm0'}", "--out", str(out), "--views", "image"])
    assert rc == 0
    payload = json.loads((out / "rec.json").read_text())
    assert payload["results"]["refcoco"]["val"]["correct"] == 2 and payload["views"] == ["image"]
    assert re.search(r"\| Alpha-CLIP \(this run\) \| 66\.7/100\.0/0\.0 \|", (out / "rec.md").read_text())


# ------------------------------------------------------------------------------------------------ docs
def test_docs_where_is_python_blocks_run(tmp_path, monkeypatch):
    """docs/evaluation.md's where-is / REC example (the README's evaluation section until issue 16)."""
    blocks = doc_blocks("docs/evaluation.md", "Where-is search and referring expressions")
    assert blocks, "no python block in the docs section"
    monkeypatch.chdir(tmp_path)
    Image.fromarray(quadrants("red", "green", "blue", "yellow")).save("street.jpg")
    with open("refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": 1, "sentences": [{"sent": "the red car"}, {"sent": "a blue door"}]}], f, protocol=2)
    for block in blocks:
        exec(compile(block, "docs/evaluation.md", "exec"), {"__name__": "docs"})
    assert Image.open("street.heat.png").size == (64, 64)
