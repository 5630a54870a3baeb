"""Training data: shards and JSONL, r_s, corrupt samples, the fast path, deterministic resumable order."""
from __future__ import annotations

import io
import json
import os
import random
import tarfile

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from alphaclip_core.alpha import PairedTransform, rle_decode
from alphaclip_train.data import RegionBatches, expand_sources, iter_records, make_loader
from alphaclip_train.index import ShardCounts, load_counts
from alphaclip_train.schema import iter_shard, validate_record
from alphaclip_train.synthetic import COLOURS, render_scene, scene_record, write_shards

TOK = open_clip.tokenizer.SimpleTokenizer(context_length=16)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, 40, per_shard=10, seed=3, size=32)
    return folder


def _batches(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _keys(ds, n):
    it, keys = ds.batch_descriptors(), set()
    for _ in range(n):
        keys |= {d.record["key"] for d in next(it)[1]}
    return keys


def test_synthetic_scene_is_deterministic_and_masks_are_exact():
    a, b = render_scene(7), render_scene(7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.caption == b.caption
    assert len(a.objects) == a.masks.shape[0] >= 1
    pix = np.asarray(a.image).astype(int)
    for obj, m in zip(a.objects, a.masks):
        # every mask pixel has the object's colour (+-15 jitter), and masks do not overlap
        assert np.abs(pix[m] - np.array(COLOURS[obj["colour"]])).max() <= 15
        x0, y0, x1, y1 = obj["box"]
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        assert obj["colour"] in obj["phrase"] and obj["shape"] in obj["phrase"]
        assert f"{obj['colour']} {obj['shape']}" in a.caption
    assert a.masks.sum(0).max() == 1
    rec = scene_record(a, "k1")
    assert validate_record(rec) == []
    assert np.array_equal(rle_decode(rec["regions"][0]["mask"]).astype(bool), a.masks[0])


def test_shards_roundtrip_and_sources(shards, tmp_path):
    files = expand_sources(shards)
    assert [os.path.basename(f) for f in files] == [f"shard-{i:05d}.tar" for i in range(4)]
    assert expand_sources(str(shards / "shard-{00001..00002}.tar")) == files[1:3]
    assert expand_sources(str(shards / "*.tar")) == files
    samples = list(iter_shard(files[0]))
    assert len(samples) == 10 and all(validate_record(r) == [] for _, _, r in samples)
    with pytest.raises(FileNotFoundError, match="no .tar shard or .jsonl file found for"):
        expand_sources(str(tmp_path / "nothing-*.tar"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="neither a .tar shard nor a .jsonl"):
        expand_sources(str(tmp_path / "x.csv"))


def test_batch_contents_match_the_paired_transform(shards):
    ds = RegionBatches([shards], TOK, 8, 32, whole_image_ratio=0.0, shuffle_buffer=0)
    b = next(iter(ds))
    assert b["image"].shape == (8, 3, 32, 32) and b["alpha"].shape == (8, 1, 32, 32)
    assert b["text"].shape == (8, 16) and b["text"].dtype == torch.long
    assert b["skipped"] == 0 and not b["whole"].any()
    # the first samples are the first record's regions in order: recompute them with the core transform
    key, img_bytes, rec = next(iter_shard(sorted(shards.glob("*.tar"))[0]))
    first = next(ds.batch_descriptors())[1][0]
    img = np.array(Image.open(io.BytesIO(first.image)).convert("RGB"))
    mask = rle_decode(first.record["regions"][first.region]["mask"])
    pix, alpha = PairedTransform(32)(img, mask)
    assert torch.equal(pix[0], b["image"][0]) and torch.equal(alpha[0], b["alpha"][0])
    assert torch.equal(b["text"][0], TOK([first.record["regions"][first.region]["phrase"]])[0])
    # region alpha: +1.9231 inside, -1.9231 outside
    assert b["alpha"][0].max().item() == pytest.approx(1.9231, abs=1e-4)
    assert b["alpha"][0].min().item() == pytest.approx(-1.9231, abs=1e-4)


def test_whole_image_ratio(shards):
    all_whole = RegionBatches([shards], TOK, 40, 32, whole_image_ratio=1.0, shuffle_buffer=0)
    b = next(iter(all_whole))
    # r_s = 1: exactly one whole-image sample per record (40 records), alpha all +1.9231, caption text
    assert b["whole"].all() and b["image"].shape[0] == 40
    assert torch.allclose(b["alpha"], torch.full_like(b["alpha"], (1 - 0.5) / 0.26), atol=1e-6)
    d = next(all_whole.batch_descriptors())[1]
    assert [x.text for x in d[:3]] == [x.record["caption"] for x in d[:3]]
    some = RegionBatches([shards], TOK, 200, 32, whole_image_ratio=0.3, shuffle_buffer=0, seed=1)
    descs = next(some.batch_descriptors())[1]
    frac = np.mean([x.region < 0 for x in descs])
    assert 0.1 < frac < 0.4, frac  # ~0.3 of region draws become (deduplicated) whole-image samples
    assert len(descs) == 200 and all(x.region < len(x.record["regions"]) for x in descs)
    with pytest.raises(ValueError, match=r"whole_image_ratio: expected a fraction in \[0, 1\]"):
        RegionBatches([shards], TOK, 4, 32, whole_image_ratio=1.5)


def test_jsonl_source_and_corrupt_samples_are_skipped_and_counted(tmp_path):
    lines = []
    for i in range(6):
        scene = render_scene(100 + i, 32)
        scene.image.save(tmp_path / f"im{i}.png")
        rec = scene_record(scene, f"s{i}")
        rec["image"] = f"im{i}.png"
        lines.append(json.dumps(rec))
    (tmp_path / "im3.png").write_bytes(b"not an image")          # corrupt image
    bad = json.loads(lines[4])
    bad["regions"][0]["box"] = [5, 5, 1, 1]                          # invalid record
    lines[4] = json.dumps(bad)
    lines.insert(2, "{not json")                                     # not JSON
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    regions = [len(render_scene(100 + i, 32).objects) for i in range(6)]
    per_epoch = sum(regions) - regions[4] + 2  # region samples (incl. the corrupt image's) + 2 bad lines
    ds = RegionBatches([tmp_path / "data.jsonl"], TOK, per_epoch, 32, whole_image_ratio=0.0, shuffle_buffer=0)
    b = next(iter(ds))
    # skipped: the non-JSON line, the invalid record, every region of the corrupt image
    assert b["skipped"] == 2 + regions[3]
    assert b["image"].shape[0] == sum(regions) - regions[3] - regions[4]
    assert "not JSON" in b["reasons"][0] and "degenerate" in b["reasons"][1]
    assert "UnidentifiedImageError" in b["reasons"][2]
    assert torch.isfinite(b["image"]).all()


def test_order_is_deterministic_resumable_and_worker_independent(shards):
    kw = dict(whole_image_ratio=0.1, shuffle_buffer=16, seed=5)
    ref = _batches(RegionBatches([shards], TOK, 8, 32, **kw), 12)   # wraps into a second epoch
    assert [b["index"] for b in ref] == list(range(12))
    resumed = _batches(RegionBatches([shards], TOK, 8, 32, start_batch=7, **kw), 5)
    for a, b in zip(ref[7:], resumed):
        assert a["index"] == b["index"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["alpha"], b["alpha"])
        assert torch.equal(a["text"], b["text"])
    loader = make_loader(RegionBatches([shards], TOK, 8, 32, start_batch=3, **kw), num_workers=2)
    got = [b for _, b in zip(range(6), loader)]
    assert [b["index"] for b in got] == list(range(3, 9))
    for a, b in zip(ref[3:9], got):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])
    # the two ranks of a 2-process run read disjoint shards
    r0 = RegionBatches([shards], TOK, 8, 32, rank=0, world_size=2, **kw)
    r1 = RegionBatches([shards], TOK, 8, 32, rank=1, world_size=2, **kw)
    k0, k1 = _keys(r0, 2), _keys(r1, 2)
    assert k0 and k1 and not (k0 & k1)
    with pytest.raises(ValueError, match="rank: expected 0 <= rank < world_size=2"):
        RegionBatches([shards], TOK, 8, 32, rank=2, world_size=2)


def test_truncated_shard_gives_its_complete_samples(shards, tmp_path):
    good = sorted(shards.glob("*.tar"))[0]
    data = good.read_bytes()
    (tmp_path / "a.tar").write_bytes(data)
    with tarfile.open(good) as tar:
        member = tar.getmembers()[7]                                  # the 4th sample's record
    (tmp_path / "b.tar").write_bytes(data[: member.offset_data + member.size // 2])  # cut inside its data
    complete = []
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        for item in iter_records(tmp_path / "b.tar"):                # the samples before the damage, then the error
            complete.append(item)
    assert len(complete) == 3 and all(isinstance(r, dict) for _, r in complete)
    a, b = load_counts([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")])
    assert a.samples == 10 and a.error is None
    assert b.samples == len(complete) and b.error.startswith("ReadError: unexpected end of data")
    ds = RegionBatches([tmp_path], TOK, 4, 32, whole_image_ratio=0.0, shuffle_buffer=0)
    assert ds.epoch_items == a.regions + sum(len(r["regions"]) for _, r in complete)
    batches = _batches(ds, 12)
    assert sum(b["image"].shape[0] for b in batches) == 48 and all(b["skipped"] == 0 for b in batches)


def test_index_counts_equal_the_samples_the_stream_draws():
    """record_items (what an index predicts) == what RegionBatches makes of a record, for every kind of record."""
    rng = np.random.default_rng(0)
    ds = RegionBatches.__new__(RegionBatches)
    for whole_ratio in (0.0, 0.3, 0.99, 1.0):
        ds.whole_image_ratio, ds.whole_only = whole_ratio, whole_ratio >= 1.0
        counts = ShardCounts()
        drawn = 0
        for n in range(300):
            k = int(rng.integers(0, 4))
            rec = {"key": f"k{n}", "width": 8, "height": 8, "caption": ["", " ", "a scene"][n % 3],
                   "regions": [{"phrase": f"p{i}", "box": [0, 0, 4, 4]} for i in range(k)]}
            if n % 17 == 0:
                rec["regions"] = [{"phrase": "bad", "box": [5, 5, 1, 1]}]       # invalid record
            if n % 23 == 0:
                rec = f"member k{n}.json is not valid JSON"                       # unparseable record
            image = None if isinstance(rec, str) else b"x"
            out = ds._record_samples(image, rec, random.Random(n))
            counts.add(rec)
            drawn += len(out)
            whole = [d for d in out if not isinstance(d, str) and d.region < 0]
            assert len(whole) <= 1
            if ds.whole_only and isinstance(rec, dict) and rec["caption"].strip() and n % 17:
                assert len(out) == 1 and len(whole) == 1
        assert counts.items(ds.whole_only) == drawn, whole_ratio
