"""Evaluation runs: resume only the same run (settings recorded), batched == one at a time, deduplicated rows,
the reference geometry, and the CLI's defaults (run folder, no random-init warning)."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import alphaclip_integrations.open_clip as aoc
from alphaclip_core.alpha import PairedTransform
from alphaclip_core.checkpoints import save_safetensors
from alphaclip_core.cli import main as alphaclip_main
from alphaclip_core.model import AlphaCLIP
from alphaclip_core.regions import text_classifier
from alphaclip_train.eval.imagenet_s import ImageNetS, evaluate
from alphaclip_train.eval.resume import ResumeLog, SettingsMismatch, classifier_summary, module_digest, settings_diff
from conftest import TINY_CFG, randomize_alpha_conv
from eval_kit import COLORS, build_color_clip, plain_copy, tokenizer
from test_eval import NAMES, TEMPLATE, WNIDS, _seg_png, write_imagenet_s

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def color_models():
    texts = {TEMPLATE.format(c): c for c in NAMES}
    alpha = build_color_clip(texts)
    return alpha, plain_copy(alpha)


def state_lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ stale results
def test_rerun_with_other_settings_is_refused_or_restarted(tmp_path, color_models):
    """The issue's scenario: a crop run, then pad + an extra method on the same progress file."""
    alpha, plain = color_models
    ds = ImageNetS(tmp_path, write_imagenet_s(tmp_path))
    classifier = text_classifier(alpha, tokenizer(), NAMES, [TEMPLATE])
    state = tmp_path / "run" / "state.jsonl"
    crop = evaluate(ds, classifier, alpha, methods=["alpha_mask", "alpha_whole"], mode="crop", state_path=state,
                    progress=False)
    head = state_lines(state)[0]["settings"]
    assert head["mode"] == "crop" and head["methods"] == ["alpha_mask", "alpha_whole"]
    assert head["alpha_model"] == module_digest(alpha) and len(state_lines(state)) == 1 + 5
    before = state.read_text()

    with pytest.raises(SettingsMismatch) as err:
        evaluate(ds, classifier, alpha, plain, methods=["alpha_mask", "alpha_whole", "clip_whole"], mode="pad",
                 state_path=state, progress=False)
    msg = str(err.value)
    assert "was written by a run with other settings" in msg and "--restart" in msg
    assert 'mode: "crop" -> "pad"' in msg
    assert 'methods: ["alpha_mask", "alpha_whole"] -> ["alpha_mask", "alpha_whole", "clip_whole"]' in msg
    assert state.read_text() == before                      # nothing appended to the old run's file

    # other weights, other class names: refused too, naming what differs
    other = randomize_alpha_conv(copy.deepcopy(alpha), seed=3, scale=0.01)
    with pytest.raises(SettingsMismatch, match=r"alpha_model: \"[0-9a-f]{16}\" -> \"[0-9a-f]{16}\""):
        evaluate(ds, classifier, other, methods=["alpha_mask", "alpha_whole"], state_path=state, progress=False)
    renamed = text_classifier(alpha, tokenizer(), NAMES[::-1], [TEMPLATE])
    with pytest.raises(SettingsMismatch, match=r"classifier: <computed values> -> <computed values>"):
        evaluate(ds, renamed, alpha, methods=["alpha_mask", "alpha_whole"], state_path=state, progress=False)
    # the same settings resume (the recomputed classifier may differ in the last bits: compared with a tolerance)
    noisy = classifier + 1e-6 * torch.randn_like(classifier)
    assert evaluate(ds, noisy, alpha, methods=["alpha_mask", "alpha_whole"], state_path=state,
                    progress=False)["metrics"] == crop["metrics"]

    # --restart: the old file is moved aside and the new run is computed from scratch
    methods = ["alpha_mask", "alpha_whole", "clip_whole"]
    pad = evaluate(ds, classifier, alpha, plain, methods=methods, mode="pad", state_path=state, restart=True,
                   progress=False)
    fresh = evaluate(ds, classifier, alpha, plain, methods=methods, mode="pad", progress=False)
    assert pad["metrics"] == fresh["metrics"] and set(pad["metrics"]) == set(methods)
    assert state_lines(state)[0]["settings"]["mode"] == "pad"
    assert all(set(r["pred"]) == set(methods) for r in state_lines(state)[1:] if not r["empty"])
    assert (tmp_path / "run" / "state.jsonl.old").read_text() == before


def test_progress_file_formats(tmp_path):
    settings = {"mode": "crop", "classifier": classifier_summary(torch.eye(3, 16))}
    path = tmp_path / "p.jsonl"
    with ResumeLog(path, settings) as log:
        log.append({"i": 0})
        log.append({"i": 1})
    with open(path, "a") as f:
        f.write('{"i": 2, "pre')                             # a crash in the middle of a write
    log = ResumeLog(path, settings)
    assert log.records == [{"i": 0}, {"i": 1}]
    log.append({"i": 2})
    log.close()
    assert [r["i"] for r in ResumeLog(path, settings).records] == [0, 1, 2]
    # a progress file without settings (written by an older version) is not trusted
    old = tmp_path / "old.jsonl"
    old.write_text('{"i": 0, "target": 1, "pred": {}}\n')
    with pytest.raises(SettingsMismatch, match="was written without its settings"):
        ResumeLog(old, settings)
    assert ResumeLog(old, settings, restart=True).records == [] and (tmp_path / "old.jsonl.old").is_file()
    assert settings_diff({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 3]}, "d": None}) == [
        "b.c: [1, 2] -> [1, 3]", 'd: "<absent>" -> null']


def test_cli_rerun_with_other_mode_and_method_is_not_stale(tmp_path, color_models, capsys):
    alpha, plain = color_models
    write_imagenet_s(tmp_path)
    aoc.save_pretrained(alpha, tmp_path / "alpha_model")
    save_safetensors(plain, tmp_path / "plain.safetensors")
    common = ["eval", "imagenet-s", str(tmp_path), "--categories", str(tmp_path / "categories.txt"),
              "--names", str(tmp_path / "names.txt"), "--model", f"local-dir:{tmp_path / 'alpha_model'}",
              "--plain-base", str(tmp_path / "plain.safetensors"), "--out", str(tmp_path / "res"), "--stem", "ins",
              "--workers", "0"]
    assert alphaclip_main(common + ["--methods", "alpha_mask", "alpha_box"]) == 0
    first = (tmp_path / "res" / "ins.json").read_text()
    capsys.readouterr()
    rc = alphaclip_main(common + ["--mode", "pad", "--methods", "alpha_mask", "alpha_box", "clip_whole"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: progress file") and "Traceback" not in err
    assert 'mode: "crop" -> "pad"' in err and "clip_whole" in err
    assert (tmp_path / "res" / "ins.json").read_text() == first            # no stale result written
    assert alphaclip_main(common + ["--mode", "pad", "--methods", "alpha_mask", "alpha_box", "clip_whole",
                                    "--restart"]) == 0
    payload = json.loads((tmp_path / "res" / "ins.json").read_text())
    assert payload["mode"] == "pad" and set(payload["metrics"]) == {"alpha_mask", "alpha_box", "clip_whole"}
    assert payload["metrics"]["clip_whole"]["top1"] == pytest.approx(50.0)
    # other class names: refused as well
    rc = alphaclip_main(common + ["--mode", "pad", "--methods", "alpha_mask", "alpha_box", "clip_whole",
                                  "--names", "openai"])
    assert rc == 2 and "names:" in capsys.readouterr().err


def test_cli_default_out_is_a_run_folder_and_no_random_init_warning(tmp_path, monkeypatch, caplog):
    write_imagenet_s(tmp_path)
    torch.manual_seed(0)
    toy, _ = aoc.build("alpha-ViT-Tiny-8")
    save_safetensors(toy, tmp_path / "alpha.safetensors")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    caplog.set_level(logging.WARNING)
    rc = alphaclip_main(["eval", "imagenet-s", str(tmp_path), "--categories", str(tmp_path / "categories.txt"),
                         "--names", str(tmp_path / "names.txt"), "--model", "alpha-ViT-Tiny-8", "--checkpoint",
                         str(tmp_path / "alpha.safetensors"), "--plain-base", str(tmp_path / "alpha.safetensors"),
                         "--methods", "alpha_mask", "clip_whole", "--mode", "reference", "--workers", "0"])
    assert rc == 0
    assert not (work / "benchmarks").exists()
    (run,) = work.iterdir()
    assert run.name == "imagenet_s-alpha-ViT-Tiny-8-alpha-reference-names.txt"
    assert sorted(p.name for p in run.iterdir()) == ["imagenet_s_alpha-ViT-Tiny-8.json", "imagenet_s_alpha-ViT-Tiny-8.md",
                                                     "imagenet_s_alpha-ViT-Tiny-8.state.jsonl"]
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]


# ------------------------------------------------------------------------------------------------ speed paths
def write_random_imagenet_s(root: Path, n: int = 7) -> ImageNetS:
    """Photos-like noise of assorted sizes; regions: off-centre blobs, a full-image one, a thin strip."""
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (64, 40), (50, 50), (37, 71), (64, 64), (30, 90), (41, 33)]
    for k in range(n):
        h, w = sizes[k % len(sizes)]
        wnid = list(WNIDS.values())[k % 3]
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        ids = np.zeros((h, w), np.int64)
        cid = sorted(WNIDS.values()).index(wnid) + 1
        if k == 4:
            ids[:] = cid                                           # the whole image
        elif k == 5:
            ids[:, :6] = cid                                       # a strip the centre crop drops
        else:
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            ids[y:y + h // 3, x:x + w // 4] = cid
        for sub, obj, ext in (("validation", Image.fromarray(img), "png"), ("validation-segmentation", _seg_png(ids), "png")):
            (root / sub / wnid).mkdir(parents=True, exist_ok=True)
            obj.save(root / sub / wnid / f"{k}.{ext}")
    for w in WNIDS.values():
        (root / "validation" / w).mkdir(parents=True, exist_ok=True)
    return ImageNetS(root)


@pytest.fixture(scope="module")
def random_models():
    torch.manual_seed(0)
    alpha = randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval(), seed=2, scale=1.0)
    torch.manual_seed(1)
    plain = AlphaCLIP(**TINY_CFG).eval()
    return alpha, plain


@pytest.mark.parametrize("mode,workers", [("crop", 2), ("reference", 0)])
def test_batched_with_workers_equals_one_image_at_a_time(tmp_path, random_models, mode, workers):
    alpha, plain = random_models
    ds = write_random_imagenet_s(tmp_path / "data")
    cls = text_classifier(alpha, tokenizer(), NAMES, [TEMPLATE])
    plain_cls = text_classifier(plain, tokenizer(), NAMES, [TEMPLATE])
    runs = {}
    for name, kw in {"one": dict(batch_size=1, num_workers=0, dedupe=False),
                     "batched": dict(batch_size=3, num_workers=workers, rows_per_forward=5)}.items():
        state = tmp_path / f"{name}.jsonl"
        res = evaluate(ds, cls, alpha, plain, plain_cls, mode=mode, state_path=state, progress=False, **kw)
        runs[name] = (res, {r["i"]: r for r in state_lines(state)[1:]})
    (one, one_recs), (batched, batched_recs) = runs["one"], runs["batched"]
    assert one_recs == batched_recs                        # every image's top-5 of every method, and the flags
    assert one["metrics"] == batched["metrics"] and len(one_recs) == 7
    assert one["rows"]["alpha"] == [21, 21] and one["rows"]["plain"] == [35, 35]
    assert batched["rows"]["alpha"][0] == 21 and batched["rows"]["alpha"][1] < 21     # identical rows encoded once
    assert batched["rows"]["plain"][1] < 35
    assert one["n_pad_fallback"] == (1 if mode == "crop" else 0)


def test_identical_rows_are_encoded_once(tmp_path, color_models):
    """Image E is all object: whole == box == mask alpha, and the crop / masked / blurred views are the image."""
    alpha, plain = color_models
    ds = ImageNetS(tmp_path, write_imagenet_s(tmp_path))
    ds.samples = [s for s in ds.samples if s.image.stem == "E"]
    cls = text_classifier(alpha, tokenizer(), NAMES, [TEMPLATE])
    res = evaluate(ds, cls, alpha, plain, progress=False)
    assert res["rows"] == {"alpha": [3, 1], "plain": [5, 2]}                        # red circle is the other one
    assert res["metrics"] == evaluate(ds, cls, alpha, plain, progress=False, dedupe=False)["metrics"]
    assert all(m["top1"] == 100.0 for k, m in res["metrics"].items() if k != "clip_red_circle")


def test_bad_image_in_a_worker_is_a_clean_error(tmp_path, color_models):
    alpha, _ = color_models
    ds = ImageNetS(tmp_path, write_imagenet_s(tmp_path))
    (tmp_path / "ImageNetS919" / "validation" / WNIDS["red"] / "A.JPEG").write_bytes(b"not a jpeg")
    cls = text_classifier(alpha, tokenizer(), NAMES, [TEMPLATE])
    with pytest.raises(ValueError, match=r"^image: .*A\.JPEG: not an image PIL can read"):
        evaluate(ds, cls, alpha, num_workers=1, progress=False)


# ------------------------------------------------------------------------------------------------ reference mode
def reference_pipeline(image: np.ndarray, mask: np.ndarray, size: int):
    """The reference ImageNet-S script's steps, spelled out with torchvision's own transforms: square centre
    crop of the RGBA array (start n//2 - side//2), then ToTensor + Resize((S, S)) without antialias (paper-era
    tensors) + Normalize, for the image (bicubic) and mask*255 (bilinear)."""
    h, w = mask.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    image, mask = image[top:top + side, left:left + side], mask[top:top + side, left:left + side]
    img_tf = transforms.Compose([transforms.ToTensor(), transforms.Resize(
        (size, size), interpolation=transforms.InterpolationMode.BICUBIC, antialias=False),
        transforms.Normalize(OPENAI_MEAN, OPENAI_STD)])
    mask_tf = transforms.Compose([transforms.ToTensor(), transforms.Resize((size, size), antialias=False),
                                  transforms.Normalize(0.5, 0.26)])
    return img_tf(image), mask_tf((mask * 255).astype(np.uint8))


@pytest.mark.parametrize("hw", [(375, 500), (500, 333), (64, 129), (90, 90)])
def test_reference_mode_is_the_reference_geometry(hw):
    h, w = hw
    rng = np.random.default_rng(h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4:h // 2, w // 5:w // 2] = 1
    pix, alpha = PairedTransform(224, "reference")(image, mask)
    ref_pix, ref_alpha = reference_pipeline(image, mask, 224)
    torch.testing.assert_close(pix[0], ref_pix, atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha[0], ref_alpha, atol=1e-6, rtol=0)
    assert pix.max() > (1 - OPENAI_MEAN[0]) / OPENAI_STD[0] + 1e-3 or h == w   # bicubic overshoot kept, not clamped


def test_reference_mode_keeps_the_crop_for_a_region_outside_it(tmp_path, color_models):
    mask = np.zeros((64, 128), bool)
    mask[:, :32] = True                                              # outside the centre square
    _, alpha = PairedTransform(32, "reference")(np.zeros((64, 128, 3), np.uint8), mask)
    assert torch.allclose(alpha, torch.full_like(alpha, -0.5 / 0.26))  # all background, like the reference
    with pytest.raises(ValueError, match="outside the centre crop"):
        PairedTransform(32, "crop")(np.zeros((64, 128, 3), np.uint8), mask)

    alpha_model, _ = color_models
    img = np.zeros((64, 128, 3), np.uint8)
    img[:] = COLORS["blue"]
    img[:, :32] = COLORS["red"]
    ids = np.where(mask, 1, 0)
    for sub, obj in (("validation", Image.fromarray(img)), ("validation-segmentation", _seg_png(ids))):
        (tmp_path / sub / WNIDS["red"]).mkdir(parents=True)
        obj.save(tmp_path / sub / WNIDS["red"] / "x.png")
    (tmp_path / "validation" / WNIDS["blue"]).mkdir()
    ds = ImageNetS(tmp_path)
    cls = text_classifier(alpha_model, tokenizer(), ["red", "blue"], [TEMPLATE])
    ref = evaluate(ds, cls, alpha_model, methods=["alpha_mask"], mode="reference", progress=False)
    crop = evaluate(ds, cls, alpha_model, methods=["alpha_mask"], mode="crop", progress=False)
    assert ref["n_pad_fallback"] == 0 and ref["metrics"]["alpha_mask"]["top1"] == 0.0    # sees only the blue crop
    assert crop["n_pad_fallback"] == 1 and crop["metrics"]["alpha_mask"]["top1"] == 100.0


# ------------------------------------------------------------------------------------------------ REC
def test_rec_resume_records_settings_and_workers_change_nothing(tmp_path):
    from alphaclip_train.eval.rec import RecScorer, evaluate_rec, load_refer
    from test_eval import write_refer

    write_refer(tmp_path)
    samples = load_refer(tmp_path, "refcoco", splits=("val", "testA", "testB"))
    models = [(build_color_clip({c: c for c in NAMES}), tokenizer())]
    state = tmp_path / "rec.jsonl"
    first = evaluate_rec(samples, RecScorer(models, views=["image"]), state_path=state, progress=False)
    with pytest.raises(SettingsMismatch, match=r'scorer.views: \["image"\] -> \["image", "blur"\]'):
        evaluate_rec(samples, RecScorer(models), state_path=state, progress=False)
    both = evaluate_rec(samples, RecScorer(models), state_path=state, progress=False, restart=True)
    assert both == evaluate_rec(samples, RecScorer(models), progress=False, num_workers=2)
    assert first["val"]["n"] == both["val"]["n"] == 3
    with pytest.raises(SettingsMismatch, match=r"samples: "):
        evaluate_rec(samples[:2], RecScorer(models), state_path=state, progress=False)


# ------------------------------------------------------------------------------------------------ docs
def test_docs_evaluation_python_blocks_run(tmp_path, monkeypatch):
    from conftest import doc_blocks

    blocks = doc_blocks("docs/evaluation.md", "Quick start")   # the where-is block: tests/test_eval.py
    assert blocks, "no python block in docs/evaluation.md's Quick start"
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(["n02930766", "n01484850", "n02930766"]):       # cab, great_white_shark
        img = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
        ids = np.zeros((40, 56), np.int64)
        ids[5:30, 10:40] = sorted({"n02930766", "n01484850"}).index(wnid) + 1
        for sub, obj, ext in (("validation", Image.fromarray(img), "JPEG"), ("validation-segmentation", _seg_png(ids), "png")):
            (tmp_path / "ImageNetS919" / sub / wnid).mkdir(parents=True, exist_ok=True)
            obj.save(tmp_path / "ImageNetS919" / sub / wnid / f"{k}.{ext}")
    scope = {"__name__": "docs"}
    for block in blocks:
        exec(compile(block, "docs/evaluation.md", "exec"), scope)
    assert scope["names"] == ["great_white_shark", "cab"]
    assert scope["result"]["n"] == 3 and set(scope["result"]["metrics"]) == {"alpha_mask", "alpha_whole"}
    assert state_lines(tmp_path / "imagenet_s_run" / "progress.jsonl")[0]["settings"]["mode"] == "reference"
