"""Detection pieces that need no detectron2 (always tested): class names as Detic names them, vocabulary
files, the class-embedding .npy and its sidecar, checks at load, raw proposals, the shipped yaml."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from alphaclip_core.model import AlphaCLIP
from alphaclip_core.region_classifier import (DETECTION_TEMPLATES, AlphaCLIPRegionClassifier, category_name,
                                              embedding_dim, load_text_classifier, read_vocabulary,
                                              save_text_classifier, snap_boxes)

from conftest import TINY_CFG, randomize_alpha_conv

ROOT = Path(__file__).resolve().parents[1]
LVIS = {"categories": [{"id": 2, "name": "bull", "synonyms": ["horned_cow", "bull"], "synset": "bull.n.11"},
                       {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"]},
                       {"id": 3, "name": "hot_dog", "synonyms": ["hot_dog", "frank"]}]}


@pytest.fixture
def model() -> AlphaCLIP:
    torch.manual_seed(0)
    return randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval(), seed=3, scale=1.0)


def test_class_names_follow_detic_not_synonyms(tmp_path):
    # Detic's LVIS classifier files and metadata are built from "name"; synonyms[0] would say "horned cow"
    assert category_name(LVIS["categories"][0]) == "bull"
    assert category_name({"id": 1, "name": "aerosol_can"}) == "aerosol can"
    (tmp_path / "lvis.json").write_text(json.dumps(LVIS))
    assert read_vocabulary(str(tmp_path / "lvis.json")) == ["aerosol can", "bull", "hot dog"]  # sorted by id
    assert read_vocabulary(tmp_path / "lvis.json") == ["aerosol can", "bull", "hot dog"]
    with pytest.raises(ValueError, match="category: expected a COCO/LVIS category dict with a 'name'"):
        category_name({"id": 1, "synonyms": ["x"]})


def test_vocabulary_sources_and_errors(tmp_path):
    (tmp_path / "v.txt").write_text("cat\n\n dog \n")
    (tmp_path / "v.json").write_text(json.dumps(["cat", "dog"]))
    assert read_vocabulary(str(tmp_path / "v.txt")) == ["cat", "dog"]
    assert read_vocabulary(str(tmp_path / "v.json")) == ["cat", "dog"]
    assert read_vocabulary("cat, dog,bird") == ["cat", "dog", "bird"]
    assert read_vocabulary(("cat", "dog")) == ["cat", "dog"]
    with pytest.raises(FileNotFoundError, match="MODEL.X: no such file: .*missing.txt"):
        read_vocabulary(str(tmp_path / "missing.txt"), arg="MODEL.X")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="vocabulary: .*bad.json is not valid JSON"):
        read_vocabulary(str(tmp_path / "bad.json"))
    (tmp_path / "obj.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="neither a list of names nor a COCO/LVIS file"):
        read_vocabulary(str(tmp_path / "obj.json"))
    for bad in ([], " , ", ["cat", ""]):
        with pytest.raises(ValueError, match="vocabulary: expected a non-empty list of non-empty class names"):
            read_vocabulary(bad)


def test_embeddings_file_round_trip_with_sidecar(tmp_path, model):
    w = torch.nn.functional.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    path = save_text_classifier(tmp_path / "zs.npy", w, ["cat", "dog", "bird"], model="alpha-ViT-B-16",
                                templates=list(DETECTION_TEMPLATES))
    arr = np.load(path)  # Detic reads it like this: [C, D] float32
    assert arr.shape == (3, 32) and arr.dtype == np.float32
    meta = json.loads((tmp_path / "zs.npy.json").read_text())
    assert meta["vocabulary"] == ["cat", "dog", "bird"] and meta["model"] == "alpha-ViT-B-16"
    got = load_text_classifier(path, ["cat", "dog", "bird"], embedding_dim(model), "alpha-ViT-B-16")
    torch.testing.assert_close(got, w, atol=1e-6, rtol=0)
    # each mismatch is caught at load, naming the argument / config key
    key = "MODEL.ALPHA_CLIP.TEXT_EMBEDDINGS"
    with pytest.raises(ValueError, match=f"{key}: .* has 32-d rows but the model's embedding size is 64"):
        load_text_classifier(path, ["cat", "dog", "bird"], 64, arg=key)
    with pytest.raises(ValueError, match=f"{key}: .* has 3 rows but the vocabulary has 2 classes"):
        load_text_classifier(path, ["cat", "dog"], arg=key)
    with pytest.raises(ValueError, match=r"another vocabulary \(class 1: 'dog' in the file, 'cow' in use\)"):
        load_text_classifier(path, ["cat", "cow", "bird"], arg=key)
    with pytest.raises(ValueError, match="holds alpha-ViT-B-16 text embeddings, but the model in use is alpha-ViT-L-14"):
        load_text_classifier(path, ["cat", "dog", "bird"], model_name="alpha-ViT-L-14", arg=key)
    with pytest.raises(FileNotFoundError, match=f"{key}: no such file"):
        load_text_classifier(tmp_path / "nope.npy", arg=key)
    # rewritten without names: the old sidecar goes, it no longer describes the file
    save_text_classifier(path, w)
    assert not (tmp_path / "zs.npy.json").exists()
    with pytest.raises(ValueError, match=r"vocabulary: 2 names for 3 rows"):
        save_text_classifier(path, w, ["a", "b"])


def test_foreign_or_bad_npy_files(tmp_path, caplog):
    # a file from elsewhere (e.g. Detic's own float16 CLIP ViT-B/32 rows) loads, with a warning saying why
    # it cannot be checked
    np.save(tmp_path / "detic_clip_a+cname.npy", np.ones((2, 8), np.float16))
    with caplog.at_level(logging.WARNING):
        got = load_text_classifier(tmp_path / "detic_clip_a+cname.npy", ["a", "b"], 8, arg="text")
    assert got.dtype == torch.float32 and torch.equal(got, torch.ones(2, 8))
    assert "has no sidecar" in caplog.text and "CLIP ViT-B/32" in caplog.text
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="text: .*obj.npy is not a plain numeric .npy array"):
        load_text_classifier(tmp_path / "obj.npy", arg="text")  # never unpickled
    np.save(tmp_path / "ints.npy", np.ones((2, 8), np.int64))
    with pytest.raises(ValueError, match=r"text: expected a float \[C, D\] array .* int64 of shape \[2, 8\]"):
        load_text_classifier(tmp_path / "ints.npy", arg="text")


def test_classifier_checks_text_features_against_the_model(model):
    assert embedding_dim(model) == 32
    with pytest.raises(ValueError, match=r"text_features: expected \[C=2, D=32\] .* got \[2, 64\]"):
        AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=torch.randn(2, 64))


def test_raw_proposals_are_snapped_not_rejected(model):
    clf = AlphaCLIPRegionClassifier(model, None, ["a", "b"], text_features=torch.randn(2, 32))
    image = torch.rand(3, 48, 80, generator=torch.Generator().manual_seed(0))
    # thinner than a pixel (no pixel centre inside), zero-area, and on the image border, as RPN/cascade
    # boxes can be after clipping; ordinary boxes keep pixel-centre rasterisation
    raw = torch.tensor([[40.6, 10.0, 40.9, 30.0], [12.0, 5.0, 12.0, 20.0], [80.0, 0.0, 80.0, 48.0],
                        [10.4, 10.4, 20.6, 20.6]])
    snapped = torch.tensor([[40.0, 10.0, 41.0, 30.0], [12.0, 5.0, 13.0, 20.0], [79.0, 0.0, 80.0, 48.0],
                            [10.4, 10.4, 20.6, 20.6]])
    torch.testing.assert_close(snap_boxes(raw[:3], 48, 80), snapped[:3])
    torch.testing.assert_close(clf.cosine(image, boxes=raw), clf.cosine(image, boxes=snapped), atol=1e-6, rtol=0)
    # still errors: inverted (x0 > x1) and outside boxes
    with pytest.raises(ValueError, match=r"box 0 \[30.0, 5.0, 20.0, 9.0\] is degenerate"):
        clf.cosine(image, boxes=[[30.0, 5.0, 20.0, 9.0]])
    with pytest.raises(ValueError, match="lies entirely outside the 80x48"):
        clf.cosine(image, boxes=[[90.0, 5.0, 95.0, 9.0]])


def test_shipped_yaml_leaves_the_detector_alone():
    data = yaml.safe_load((ROOT / "integrations/detectron2/configs/alphaclip_rescore.yaml").read_text())
    assert set(data) == {"VERSION", "MODEL"} and set(data["MODEL"]) == {"ALPHA_CLIP"}
    c = data["MODEL"]["ALPHA_CLIP"]
    assert "PROMPTS" not in c  # one default: DETECTION_TEMPLATES, as the dump CLI
    assert c["VOCABULARY"] == [] and "ZERO_SHOT_WEIGHT_PATH" not in c
