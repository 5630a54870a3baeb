"""The README's detection section: every python block runs (the detectron2 one where detectron2 is built)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from PIL import Image

from conftest import readme_blocks

HEADING = "Open-vocabulary detection"



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


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = readme_blocks(HEADING)
    assert len(blocks) == 4, "expected the classifier, pseudo-label, detectron2 and mmengine examples"
    write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    has_d2 = importlib.util.find_spec("detectron2") is not None
    scope: dict = {"__name__": "readme"}
    ran = 0
    for block in blocks:
        if "detectron2" in block and not has_d2:
            continue  # runs where detectron2 is built (tests/test_detect_detectron2.py covers the same API)
        exec(compile(block, "README.md", "exec"), scope)
        ran += 1
    assert ran == (4 if has_d2 else 3)
    out = capsys.readouterr().out
    assert "torch.Size([2, 3])" in out
    assert "[(1, 64, 8, 8), (1, 64, 8, 8)]" in out
    assert (tmp_path / "pseudo" / "pseudo_labels.json").is_file()
    assert len(scope["coco"].getAnnIds()) == 2  # one region per labelled image
