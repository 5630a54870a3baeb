"""Data preparation: grounding + classification pipelines, sharding, resume, check/show, CLI, README."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alphaclip_core.alpha import rle_decode, rle_encode
from alphaclip_train.prepare import (check_shards, list_images, parse_grit_regions, partition, prepare_classification,
                                     prepare_grounding, read_class_names, sample_overlay, score_crops,
                                     write_webdataset)
from alphaclip_train.prepare.common import iter_webdataset
from alphaclip_train.sam import load_sam, predict_boxes, tiny_sam
from alphaclip_train.schema import iter_shard, validate_record

from conftest import doc_blocks, TINY_CFG, randomize_alpha_conv

REPO = Path(__file__).resolve().parents[1]
CAPTION = "a brown dog on a red sofa"
# [start, end, x0, y0, x1, y1, score], boxes normalised
DOG = [0, 11, 0.1, 0.1, 0.5, 0.9, 0.8]
SOFA = [15, 25, 0.4, 0.5, 1.0, 1.0, 0.7]
FLAT = [0, 3, 0.5, 0.5, 0.5, 0.9, 0.1]        # zero width: degenerate
AWAY = [2, 7, 0.2, 0.2, 1.3, 0.9, 0.5]         # x1 = 1.3: outside the image


def _jpeg(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _grit(key, seed, spans=(DOG, SOFA, FLAT), w=64, h=48, **extra):
    meta = {"caption": CAPTION, "ref_exps": [list(s) for s in spans], "url": f"http://x/{key}.jpg", **extra}
    return key, {"jpg": _jpeg(w, h, seed), "txt": CAPTION, "json": meta}


def _grit_inputs(folder: Path, n_shards: int = 3, per_shard: int = 2) -> list:
    paths = []
    for s in range(n_shards):
        samples = [_grit(f"{s:03d}{j:03d}", 10 * s + j) for j in range(per_shard)]
        paths.append(write_webdataset(folder / f"{s:05d}.tar", samples))
    return paths


@pytest.fixture(scope="module")
def sam():
    return tiny_sam()


# ------------------------------------------------------------------------------------------------
# partition and GRIT parsing
def test_partition_is_disjoint_and_complete():
    assert partition(5, 0, 2) == [0, 2, 4] and partition(5, 1, 2) == [1, 3]
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            parts = [partition(n, r, world) for r in range(world)]
            flat = [i for p in parts for i in p]
            assert sorted(flat) == list(range(n)) and len(flat) == len(set(flat))
    with pytest.raises(ValueError, match="rank: expected 0 <= rank < world=2, got 2"):
        partition(4, 2, 2)
    with pytest.raises(ValueError, match="world: expected >= 1"):
        partition(4, 0, 0)


def test_parse_grit_regions_boxes_and_drops():
    meta = {"ref_exps": [DOG, SOFA, FLAT, AWAY, [3, 99, 0, 0, 1, 1, 0.1], ["x"], DOG,
                         [0, 11, -0.005, 0.0, 0.5, 1.004, 0.9]],
            "noun_chunks": [[2, 7, 0.1, 0.1, 0.5, 0.9, 0.8]]}
    regions, dropped = parse_grit_regions(meta, CAPTION, 64, 48)
    assert regions == [("a brown dog", [6.4, 4.8, 32.0, 43.2]), ("a red sofa", [25.6, 24.0, 64.0, 48.0]),
                       ("a brown dog", [0.0, 0.0, 32.0, 48.0])]   # last: within tolerance, clipped
    assert dropped == Counter(degenerate_box=1, outside_image=1, bad_span=1, malformed_span=1, duplicate=1)
    both, _ = parse_grit_regions(meta, CAPTION, 64, 48, spans=("ref_exps", "noun_chunks"))
    assert both[-1] == ("brown", [6.4, 4.8, 32.0, 43.2])
    small, dropped = parse_grit_regions({"ref_exps": [[0, 3, 0.0, 0.0, 0.02, 0.5, 1]]}, CAPTION, 64, 48)
    assert small == [] and dropped == Counter(degenerate_box=1)   # 1.28 px wide < min_box_size 2
    flat, dropped = parse_grit_regions({"ref_exps": [FLAT]}, CAPTION, 64, 48, min_box_size=0)
    assert flat == [] and dropped == Counter(degenerate_box=1)    # zero width is degenerate at any min_box_size
    with pytest.raises(ValueError, match="spans: expected names from"):
        parse_grit_regions(meta, CAPTION, 64, 48, spans=("boxes",))


# ------------------------------------------------------------------------------------------------
# SAM
def test_batched_prompts_match_one_at_a_time(sam):
    from segment_anything import SamPredictor

    image = np.asarray(Image.open(io.BytesIO(_jpeg(64, 48, 3))).convert("RGB"))
    boxes = np.array([[6.4, 4.8, 32, 43.2], [25.6, 24, 64, 48], [0, 0, 64, 48]], np.float32)
    p = SamPredictor(sam)
    m1, s1 = predict_boxes(p, image, boxes)
    m2, s2 = predict_boxes(p, image, boxes, one_at_a_time=True)
    assert m1.shape == (3, 48, 64) and m1.dtype == bool
    assert (m1 == m2).mean() > 0.999                    # same prompts, same masks (float noise at the threshold)
    torch.testing.assert_close(torch.from_numpy(s1), torch.from_numpy(s2), atol=1e-5, rtol=1e-5)
    empty_m, empty_s = predict_boxes(p, image, np.zeros((0, 4)))
    assert empty_m.shape == (0, 48, 64) and empty_s.shape == (0,)
    with pytest.raises(ValueError, match=r"image: expected \[H, W, 3\] uint8 RGB"):
        predict_boxes(p, image.astype(np.float32), boxes)


def test_load_sam_reads_weights_safely(tmp_path):
    src = tiny_sam(seed=5)
    path = tmp_path / "tiny.pth"
    torch.save(src.state_dict(), path)
    loaded = load_sam("tiny", path)
    for (k, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="checkpoint: SAM vit_b needs its weights file"):
        load_sam("vit_b")
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file: .*nope.pth"):
        load_sam("tiny", tmp_path / "nope.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"SAM tiny checkpoint .*bad.pth does not fit the model.*missing: \["):
        load_sam("tiny", tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="sam_type: expected one of"):
        load_sam("vit_x")


# ------------------------------------------------------------------------------------------------
# grounding pipeline
def test_grounding_pipeline_records_masks_and_counts(tmp_path, sam):
    from segment_anything import SamPredictor

    good = [_grit("000000", 1), _grit("000001", 2, spans=(DOG, AWAY), w=50, h=70)]
    bad = [("000002", {"jpg": b"\xff\xd8\xffnot a jpeg", "json": {"caption": CAPTION, "ref_exps": [DOG]}}),
           ("000003", {"jpg": _jpeg(20, 20, 0), "json": "{not json"}),
           ("000004", {"txt": CAPTION, "json": {"ref_exps": [DOG]}}),
           _grit("000005", 4, spans=(FLAT,))]
    write_webdataset(tmp_path / "in" / "00000.tar", good[:1] + bad[:2])
    write_webdataset(tmp_path / "in" / "00001.tar", good[1:] + bad[2:])
    summary = prepare_grounding([tmp_path / "in"], tmp_path / "out", sam, sam_name="tiny", progress=False)
    assert {k: summary[k] for k in ("images", "regions", "dropped", "failed", "skipped_images", "shards_done",
                                    "complete")} == {"images": 2, "regions": 3, "dropped": 3, "failed": 3,
                                                     "skipped_images": 1, "shards_done": 2, "complete": True}
    assert summary["dropped_by_reason"] == {"degenerate_box": 2, "outside_image": 1}
    assert summary["failed_by_reason"] == {"corrupt_image": 1, "bad_json": 1, "missing_image": 1}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary

    samples = list(iter_shard(tmp_path / "out" / "00000.tar")) + list(iter_shard(tmp_path / "out" / "00001.tar"))
    assert [k for k, _, _ in samples] == ["000000", "000001"]
    predictor = SamPredictor(sam)
    for (key, data, record), (_, parts) in zip(samples, good):
        assert validate_record(record) == []
        assert data == parts["jpg"]                           # original bytes kept, not re-encoded
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert (record["width"], record["height"]) == (image.shape[1], image.shape[0])
        boxes = np.array([r["box"] for r in record["regions"]])
        want, scores = predict_boxes(predictor, image, boxes)   # the same SAM, called directly
        for r, m, s in zip(record["regions"], want, scores):
            assert r["source"] == "sam-tiny" and r["score"] == pytest.approx(float(s), abs=1e-4)
            assert r["mask"] == rle_encode(m) and np.array_equal(rle_decode(r["mask"]), m)
        assert record["meta"] == {"source": "grounding", "input_shard": "0000%d.tar" % int(key[-1]),
                                  "url": f"http://x/{key}.jpg"}
    assert [r["phrase"] for r in samples[0][2]["regions"]] == ["a brown dog", "a red sofa"]
    assert samples[1][2]["regions"][0]["box"] == [5.0, 7.0, 25.0, 63.0]   # DOG on a 50x70 image

    write_webdataset(tmp_path / "other" / "00000.tar", good[:1])
    with pytest.raises(ValueError, match=r"inputs: input shards must have distinct file names .* \['00000.tar'\]"):
        prepare_grounding([tmp_path / "in", tmp_path / "other"], tmp_path / "out2", sam)
    with pytest.raises(FileNotFoundError, match="inputs: .*nowhere is neither a file nor a folder"):
        prepare_grounding([tmp_path / "nowhere"], tmp_path / "out2", sam)
    with pytest.raises(ValueError, match=r"inputs: no input shards \(\*.tar\) found"):
        prepare_grounding([(tmp_path / "empty").mkdir() or tmp_path / "empty"], tmp_path / "out3", sam)


def test_truncated_input_shard_keeps_what_is_readable(tmp_path, sam):
    path = write_webdataset(tmp_path / "in" / "00000.tar", [_grit(f"{j:06d}", j) for j in range(3)])
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        cut = tar.getmember("000002.jpg").offset_data + 100
    path.write_bytes(data[:cut])                                   # cuts into the third sample's image
    keys = []
    with pytest.raises(tarfile.TarError):
        for key, _ in iter_webdataset(path):
            keys.append(key)
    assert keys == ["000000", "000001"]
    summary = prepare_grounding([path], tmp_path / "out", sam, progress=False)
    assert summary["failed_by_reason"] == {"corrupt_shard": 1} and summary["images"] == 2
    assert check_shards([tmp_path / "out"]).ok


def _predictor(sam, kill_at=None):
    from segment_anything import SamPredictor

    class Predictor(SamPredictor):
        """Counts image embeddings; dies (like a killed process) on the ``kill_at``-th."""

        calls = 0

        def set_image(self, image, image_format="RGB"):
            self.calls += 1
            if self.calls == kill_at:
                raise KeyboardInterrupt("killed")
            super().set_image(image, image_format)

    return Predictor(sam)


def test_resume_after_kill_redoes_only_unfinished_shards(tmp_path, sam, caplog):
    _grit_inputs(tmp_path / "in", n_shards=3, per_shard=2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_grounding([tmp_path / "in"], out, _predictor(sam, kill_at=4), progress=False)  # 2nd image of shard 1
    assert sorted(p.name for p in out.iterdir()) == ["00000.index.json", "00000.stats.json", "00000.tar"]  # in flight: gone
    first = (out / "00000.tar").stat()
    # a hard kill (SIGKILL) can also leave a partial file, or a shard renamed before its stats were written
    (out / ".00001.tar.partial").write_bytes(b"half a tar")
    write_webdataset(out / "00002.tar", [_grit("999999", 0)])

    counting = _predictor(sam)
    summary = prepare_grounding([tmp_path / "in"], out, counting, progress=False)
    assert counting.calls == 4                                        # shards 1 and 2 only, 2 images each
    assert (out / "00000.tar").stat().st_mtime_ns == first.st_mtime_ns
    assert summary["complete"] and summary["images"] == 6 and summary["regions"] == 12
    assert [k for k, _, _ in iter_shard(out / "00002.tar")] == ["002000", "002001"]
    assert not (out / ".00001.tar.partial").exists() and check_shards([out]).ok

    again = prepare_grounding([tmp_path / "in"], out, counting, progress=False)
    assert counting.calls == 4 and {k: v for k, v in again.items() if k != "config"} == {
        k: v for k, v in summary.items() if k != "config"}                 # everything finished: nothing redone
    # the folder index (rank 0, at the end) holds every shard's counts: training needs no pass over the shards
    index = json.loads((out / "index.json").read_text())["shards"]
    assert sorted(index) == ["00000.tar", "00001.tar", "00002.tar"]
    assert sum(e["samples"] for e in index.values()) == 6 and sum(e["regions"] for e in index.values()) == 12
    # other settings: refused before any work, naming what differs; --restart redoes the shards
    with pytest.raises(ValueError, match=r"3 finished shard\(s\) made with other settings \(spans differ\).*--restart"):
        prepare_grounding([tmp_path / "in"], out, counting, spans=("noun_chunks",), progress=False)
    assert counting.calls == 4
    with caplog.at_level(logging.WARNING, logger="alphaclip.prepare"):
        redone = prepare_grounding([tmp_path / "in"], out, counting, spans=("noun_chunks",), progress=False,
                                   restart=True)
    assert redone["complete"] and redone["config"]["spans"] == ["noun_chunks"] and redone["shards_done"] == 3
    assert "restart: redoing 3 shard(s) made with other settings (spans)" in caplog.text
    stats = [json.loads(p.read_text())["config"]["spans"] for p in sorted(out.glob("*.stats.json"))]
    assert stats == [["noun_chunks"]] * 3
    index = json.loads((out / "index.json").read_text())["shards"]
    assert {n: e["samples"] for n, e in index.items()} == {n: len(list(iter_shard(out / n))) for n in index}


def test_inputs_from_pipe_commands_and_brace_ranges(tmp_path, sam):
    """prepare-grounding and check read any source: here open_clip-style pipe: commands with a brace range."""
    _grit_inputs(tmp_path / "in", n_shards=2, per_shard=2)
    direct = prepare_grounding([tmp_path / "in"], tmp_path / "a", sam, sam_name="tiny", progress=False)
    piped = prepare_grounding([f"pipe:cat {tmp_path / 'in'}/{{00000..00001}}.tar"], tmp_path / "b", sam,
                              sam_name="tiny", progress=False)
    assert piped["images"] == direct["images"] == 4 and piped["regions"] == direct["regions"]
    for name in ("00000.tar", "00001.tar"):                    # output shards keep the piped files' names
        assert [r for _, _, r in iter_shard(tmp_path / "b" / name)] == [r for _, _, r in iter_shard(tmp_path / "a" / name)]
    report = check_shards([f"pipe:cat {tmp_path / 'b'}/{{00000..00001}}.tar"])
    assert report.ok and report.shards == 2 and report.samples == 4
    bad = check_shards([f"pipe:cat {tmp_path / 'b'}/missing.tar"])    # the command fails: an unreadable shard
    assert not bad.ok and bad.problems[0].startswith("missing.tar: unreadable shard")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_ranks_split_the_shards(tmp_path):
    _grit_inputs(tmp_path / "in", n_shards=5, per_shard=1)
    env = {**os.environ, "PYTHONPATH": str(REPO / ".dev"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "alphaclip_core.cli", "data", "prepare-grounding", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
           "--sam-type", "tiny", "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {json.loads(p.read_text())["shard"]: json.loads(p.read_text())["rank"]
             for p in (tmp_path / "out").glob("*.stats.json")}
    assert ranks == {f"{i:05d}.tar": i % 2 for i in range(5)}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete"] and summary["images"] == 5 and summary["regions"] == 10
    assert json.loads(proc.stdout)["images"] == 5            # printed once, by rank 0


# ------------------------------------------------------------------------------------------------
# classification pipeline
@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    """A tiny random-init BLIP captioner saved to a local folder; biased to say 'dog'."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "dog", "cat", "photo", "of", "the"]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=32, encoder_hidden_size=32, bos_token_id=5,
                pad_token_id=0, sep_token_id=3, eos_token_id=3)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[7] = 100.0        # always "dog"
    folder = tmp_path_factory.mktemp("captioner")
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
                  ).save_pretrained(folder)
    return folder


def test_captioner_runs_a_blip2_folder_and_strips_its_prompt(tmp_path):
    """The default captioner family (BLIP-2 + OPT), tiny and random, loaded by path like a hub model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (BlipImageProcessor, Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              OPTConfig, PreTrainedTokenizerFast)

    from alphaclip_train.prepare import Captioner

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "<image>", "a", "dog", "cat", "photo", "of"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="</s>",
                                  unk_token="<unk>", additional_special_tokens=["<image>"])
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg = Blip2Config(vision_config=dict(small, image_size=32, patch_size=8),
                      qformer_config=dict(small, encoder_hidden_size=32, vocab_size=30),
                      text_config=OPTConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, ffn_dim=64, max_position_embeddings=64,
                                            word_embed_proj_dim=32, bos_token_id=1, eos_token_id=1,
                                            pad_token_id=0).to_dict(),
                      num_query_tokens=4, image_token_index=3)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(cfg)
    with torch.no_grad():       # make the random LM say "dog": constant final hidden state, one lm_head row
        norm = model.language_model.model.decoder.final_layer_norm
        norm.weight.zero_()
        norm.bias.fill_(1.0)
        model.language_model.lm_head.weight.zero_()
        model.language_model.lm_head.weight[vocab["dog"]] = 1.0
    model.save_pretrained(tmp_path)
    Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                   num_query_tokens=4).save_pretrained(tmp_path)
    crops = [Image.new("RGB", (30, 20)), Image.new("RGB", (12, 40), (200, 0, 0))]
    assert Captioner(str(tmp_path), max_new_tokens=2)(crops) == ["dog dog"] * 2
    assert Captioner(str(tmp_path), max_new_tokens=2, prompt="a photo of", batch_size=1)(crops) == ["dog dog"] * 2


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (root / c).mkdir()
        for k in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / c / f"{c}_{k}.JPEG", "JPEG")
    (root / "n02" / "broken.JPEG").write_bytes(b"\xff\xd8\xff truncated")
    (root / "names.txt").write_text("n01 dog, domestic dog\nn02 cat\n")
    return root


AMG = dict(points_per_side=2, pred_iou_thresh=-10.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def _tiny_clip():
    from alphaclip_core.model import AlphaCLIP

    torch.manual_seed(0)
    return randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval())


def test_classification_pipeline_keeps_top_scored_masks_with_captions(tmp_path, sam, captioner_dir, image_folder):
    import open_clip
    from segment_anything import SamAutomaticMaskGenerator

    from alphaclip_core.regions import text_classifier
    from alphaclip_train.prepare import Captioner
    from alphaclip_train.prepare.classification import crop_box

    clip, tok = _tiny_clip(), open_clip.get_tokenizer("ViT-B-32")
    captioner = Captioner(str(captioner_dir), max_new_tokens=2)
    names = read_class_names(image_folder / "names.txt")
    summary = prepare_classification(image_folder, tmp_path / "out", sam, clip, tok, captioner, class_names=names,
                                     images_per_shard=3, top_k=2, min_score=0.0, amg_kwargs=AMG, sam_name="tiny",
                                     progress=False)
    assert summary["images"] == 4 and summary["regions"] == 8 and summary["shards_total"] == 2
    assert summary["failed_by_reason"] == {"corrupt_image": 1}
    records = [r for p in sorted((tmp_path / "out").glob("*.tar")) for _, _, r in iter_shard(p)]
    assert [r["meta"]["label"] for r in records] == ["dog", "dog", "cat", "cat"]
    assert check_shards([tmp_path / "out"]).ok

    # recompute independently: the same masks, crops and CLIP probabilities; kept = the 2 best
    amg = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **AMG)
    classifier = text_classifier(clip, tok, ["cat", "dog"])
    beyond = 0
    for r in records:
        image = Image.open(image_folder / r["meta"]["path"]).convert("RGB")
        anns = [a for a in amg.generate(np.asarray(image)) if a["segmentation"].sum() >= 0.01 * 56 * 40]
        beyond += len(anns) - 2
        wins = [crop_box(a["bbox"], image.width, image.height, 0.1) for a in anns]
        probs = score_crops(clip, [image.crop(w) for w in wins],
                            [a["segmentation"][w[1]:w[3], w[0]:w[2]] for a, w in zip(anns, wins)], classifier)
        col = probs[:, ["cat", "dog"].index(r["meta"]["label"])]
        best = col.argsort(descending=True)[:2].tolist()
        assert [reg["score"] for reg in r["regions"]] == pytest.approx(col[best].tolist(), abs=1e-4)
        for reg, k in zip(r["regions"], best):
            assert np.array_equal(rle_decode(reg["mask"]), anns[k]["segmentation"])
            assert reg["phrase"] == f"dog dog, {r['meta']['label']}" and reg["source"] == "sam-tiny+clip"
        assert r["caption"] == f"a photo of a {r['meta']['label']}." and r["meta"]["captions"] == ["dog dog"] * 2
    assert beyond > 0 and summary["dropped_by_reason"] == {"beyond_top_k": beyond}

    strict = prepare_classification(image_folder, tmp_path / "strict", sam, clip, tok, lambda ims: [""] * len(ims),
                                    class_names=names, min_score=0.9999, amg_kwargs=AMG, progress=False)
    assert strict["images"] == 0 and strict["skipped_images"] == 4
    assert strict["dropped_by_reason"] == {"low_score": beyond + 2 * 4}
    with pytest.raises(ValueError, match=r"min_score: expected a probability in \[0, 1\], got 1.5"):
        prepare_classification(image_folder, tmp_path / "x", sam, clip, tok, captioner, min_score=1.5)
    with pytest.raises(ValueError, match="phrase_template: expected both"):
        prepare_classification(image_folder, tmp_path / "x", sam, clip, tok, captioner, phrase_template="{label}")


def test_score_crops_reads_the_mask_only_with_an_alpha_model():
    from open_clip.model import CLIP

    from alphaclip_core.regions import text_classifier

    import open_clip
    tok = open_clip.get_tokenizer("ViT-B-32")
    crop = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    left, right = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    left[:, :20], right[:, 20:] = True, True
    alpha_model = _tiny_clip()
    feats = text_classifier(alpha_model, tok, ["cat", "dog", "sofa"])
    p = score_crops(alpha_model, [crop, crop], [left, right], feats)
    assert p.shape == (2, 3) and torch.allclose(p.sum(-1), torch.ones(2), atol=1e-5)
    assert (p[0] - p[1]).abs().max() > 1e-4                          # the alpha changes the answer
    torch.manual_seed(0)
    plain = CLIP(**TINY_CFG).eval()
    q = score_crops(plain, [crop, crop], [left, right], text_classifier(plain, tok, ["cat", "dog", "sofa"]))
    torch.testing.assert_close(q[0], q[1], atol=1e-6, rtol=0)          # a plain CLIP sees the crop only
    with pytest.raises(ValueError, match="crop_masks: expected 2"):
        score_crops(plain, [crop, crop], [left], feats)


def test_label_file_and_class_names(tmp_path, image_folder):
    names = read_class_names(image_folder / "names.txt")
    assert names == {"n01": "dog", "0": "dog", "n02": "cat", "1": "cat"}
    (tmp_path / "names.json").write_text(json.dumps(["tench", "goldfish"]))
    assert read_class_names(tmp_path / "names.json") == {"0": "tench", "1": "goldfish"}
    items = list_images(image_folder, class_names=names)
    assert items[0] == ("n01/n01_0.JPEG", "dog", "n01") and len(items) == 5
    labels = tmp_path / "labels.tsv"
    labels.write_text("n02/n02_1.JPEG\t0\nn01/n01_0.JPEG\tgolden_retriever\n")
    assert list_images(image_folder, labels, names) == [("n01/n01_0.JPEG", "golden retriever", "golden_retriever"),
                                                        ("n02/n02_1.JPEG", "dog", "0")]
    labels.write_text("just-a-path\n")
    with pytest.raises(ValueError, match="label_file: line 1 'just-a-path': expected"):
        list_images(image_folder, labels)
    with pytest.raises(FileNotFoundError, match="root: image folder .*missing does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty" / "c").mkdir(parents=True)
    with pytest.raises(ValueError, match="root: no images found"):
        list_images(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------
# check / show / CLI
def _tamper(src: Path, dst: Path) -> None:
    samples = list(iter_shard(src))
    with tarfile.open(dst, "w") as tar:
        for i, (key, data, record) in enumerate(samples):
            if i == 0:
                record["regions"][0]["box"] = [0, 0, 999, 10]
                record["width"] += 1
            for name, blob in ((f"{key}.jpg", data), (f"{key}.json", json.dumps(record).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


def test_cli_prepare_check_show(tmp_path, sam, capsys):
    from alphaclip_core.cli import main

    _grit_inputs(tmp_path / "in", n_shards=2, per_shard=2)
    torch.save(sam.state_dict(), tmp_path / "sam_tiny.pth")
    rc = main(["data", "prepare-grounding", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--sam-type", "tiny",
               "--sam-checkpoint", str(tmp_path / "sam_tiny.pth"), "--spans", "ref_exps", "noun_chunks",
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 4 and printed["regions"] == 8 and printed["dropped_by_reason"] == {"degenerate_box": 4}

    assert main(["data", "check", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("shards 2  samples 4  regions 8 (masks 8, box only 0)  problems 0")
    _tamper(tmp_path / "out" / "00000.tar", tmp_path / "bad.tar")
    assert main(["data", "check", str(tmp_path / "bad.tar"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == 4 and report["first_problems"] == [
        "bad.tar/000000: region 0: box [0, 0, 999, 10] is degenerate or outside the 65x48 image",
        "bad.tar/000000: region 0: mask size [48, 64] != image [48, 65]",
        "bad.tar/000000: region 1: mask size [48, 64] != image [48, 65]",
        "bad.tar/000000: image is 64x48 but the record says 65x48"]

    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 40)
    assert main(["data", "check", str(tmp_path / "junk.tar"), str(tmp_path / "out" / "00000.tar")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("shards 2  samples 2  regions 4 (masks 4, box only 0)  problems 1")
    assert "junk.tar: unreadable shard" in out

    png = tmp_path / "show.png"
    assert main(["data", "show", str(tmp_path / "out" / "00000.tar"), "000000", "-o", str(png)]) == 0
    shown = np.asarray(Image.open(png).convert("RGB")).astype(int)
    _, data, record = next(iter_shard(tmp_path / "out" / "00000.tar"))
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert shown.shape == original.shape
    inside = rle_decode(record["regions"][0]["mask"]).astype(bool)
    assert np.abs(shown - original)[inside].mean() > 20          # tinted where the region is
    assert main(["data", "show", str(tmp_path / "out" / "00000.tar"), "nokey", "-o", str(png)]) == 2
    assert "no sample 'nokey'" in capsys.readouterr().err


def test_cli_prepare_classification_with_local_models(tmp_path, sam, captioner_dir, image_folder, capsys):
    import alphaclip_integrations.open_clip as aoc
    from alphaclip_core.cli import main

    aoc.save_pretrained(_tiny_clip(), tmp_path / "clip")
    torch.save(sam.state_dict(), tmp_path / "sam_tiny.pth")
    rc = main(["data", "prepare-classification", str(image_folder), "-o", str(tmp_path / "out"),
               "--class-names", str(image_folder / "names.txt"), "--captioner", str(captioner_dir),
               "--max-new-tokens", "1", "--sam-type", "tiny", "--sam-checkpoint", str(tmp_path / "sam_tiny.pth"),
               "--model", f"local-dir:{tmp_path / 'clip'}", "--points-per-side", "2", "--pred-iou-thresh", "-10",
               "--stability-score-thresh", "0", "--box-nms-thresh", "1", "--top-k", "1", "--min-score", "0",
               "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 4 and printed["regions"] == 4 and printed["failed"] == 1
    phrases = [r["regions"][0]["phrase"] for _, _, r in iter_shard(tmp_path / "out" / "000000.tar")]
    assert phrases == ["dog, dog", "dog, dog", "dog, cat", "dog, cat"]


# ------------------------------------------------------------------------------------------------
# docs

def test_docs_grounding_example_runs(tmp_path, monkeypatch):
    """docs/data.md's Python example (the README's data preparation section until issue 16)."""
    blocks = doc_blocks("docs/data.md", "Grounding data in Python")
    assert blocks, "docs/data.md's grounding section has no python example"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "docs/data.md", "exec"), scope)
    assert (tmp_path / "grit_out" / "summary.json").is_file()


def test_score_crops_reads_the_mask_with_any_alpha_backbone(tmp_path):
    """A timm-tower Alpha-CLIP (SigLIP style, AlphaCustomTextCLIP) also reads the crop's mask."""
    import backbones_kit as kit
    import open_clip

    import alphaclip_integrations.open_clip  # noqa: F401  (the alpha- rule)
    from alphaclip_core.regions import text_classifier
    from conftest import randomize_alpha_conv

    kit.register(tmp_path / "configs")
    torch.manual_seed(0)
    model = randomize_alpha_conv(open_clip.create_model("alpha-Toy-SL-8")).eval()
    tok = open_clip.get_tokenizer("alpha-Toy-SL-8")
    crop = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    left, right = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    left[:, :20], right[:, 20:] = True, True
    p = score_crops(model, [crop, crop], [left, right], text_classifier(model, tok, ["cat", "dog", "sofa"]))
    assert (p[0] - p[1]).abs().max() > 1e-4                          # the alpha changes the answer
