"""The detection examples run: docs/detection.md's region classifier, pseudo-labeller and mmengine blocks
(once the README's detection section, moved there by issue 16), and the README's Detectron2 / Detic block
where detectron2 is built."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import doc_blocks, readme_blocks

PAGE = "docs/detection.md"

def write_files(folder: Path) -> None:
    """The tiny files the examples name: an image-labelled LVIS-style dataset and its candidate boxes."""
    (folder / "images" / "n01").mkdir(parents=True)
    images, proposals = [], []
    for i in (1, 2):
        Image.new("RGB", (80, 60), (40 * i, 90, 120)).save(folder / "images" / "n01" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"n01/{i}.jpg", "width": 80, "height": 60, "pos_category_ids": [i]})
        proposals += [{"image_id": i, "bbox": [5, 5, 30, 30], "score": 0.9},
                      {"image_id": i, "bbox": [40, 20, 35, 35], "score": 0.8}]
    cats = [{"id": 1, "name": "tench"}, {"id": 2, "name": "goldfish"}]
    (folder / "imagenet_lvis.json").write_text(json.dumps({"images": images, "categories": cats}))
    (folder / "proposals.json").write_text(json.dumps(proposals))


def test_detection_page_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = [*doc_blocks(PAGE, "Classify regions over a vocabulary"), *doc_blocks(PAGE, "Pseudo-label image-labelled"),
              *doc_blocks(PAGE, "mmengine")]
    assert len(blocks) == 3, "expected the classifier, pseudo-label and mmengine examples"
    write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "docs"}
    for block in blocks:                      # one scope: the pseudo-labeller uses the classifier's model
        exec(compile(block, PAGE, "exec"), scope)
    out = capsys.readouterr().out
    assert "torch.Size([2, 3])" in out
    assert torch.allclose(scope["out"].probs.sum(-1), torch.ones(2), atol=1e-5)
    assert "[(1, 64, 8, 8), (1, 64, 8, 8)]" in out
    assert (tmp_path / "pseudo" / "pseudo_labels.json").is_file()
    assert len(scope["coco"].getAnnIds()) == 2  # one region per labelled image


def test_readme_detectron2_block_runs(capsys):
    pytest.importorskip("detectron2", reason="the README's Detectron2 example needs detectron2 built from source")
    (block,) = readme_blocks("Detectron2 / Detic")
    scope: dict = {"__name__": "readme"}
    exec(compile(block, "README.md", "exec"), scope)
    assert capsys.readouterr().out.strip() == "AlphaCLIPStandardROIHeads"
    assert scope["cfg"].MODEL.ROI_HEADS.NUM_CLASSES == 80
