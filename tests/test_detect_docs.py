"""docs/detection.md: every python block runs (the detectron2 one where detectron2 is built, the Detic one
where Detic is importable, from its checkout as the page says)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import open_clip
import pytest
import torch

import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core.checkpoints import save_safetensors

from conftest import doc_blocks

PAGE = "docs/detection.md"


def tiny_alphaclip(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "tiny_alphaclip.safetensors"
    save_safetensors(open_clip.create_model("alpha-ViT-Tiny-8").eval(), path)
    return path


def test_class_names_block(capsys):
    (block,) = doc_blocks(PAGE, "Class names")
    exec(compile(block, PAGE, "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.splitlines() == ["bull", "['person', 'bicycle', 'car']"]


def test_detectron2_block(tmp_path, monkeypatch, capsys):
    pytest.importorskip("detectron2")
    (block,) = doc_blocks(PAGE, "Rescore a Detectron2 detector")
    tiny_alphaclip(tmp_path)
    (tmp_path / "coco_classes.txt").write_text("\n".join(f"class {i}" for i in range(80)))
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "docs"}
    exec(compile(block, PAGE, "exec"), scope)
    assert capsys.readouterr().out.strip() == "AlphaCLIPStandardROIHeads 80"
    assert scope["cfg"].MODEL.ALPHA_CLIP.VOCABULARY_FILE == "coco_classes.txt"


def test_detic_block(tmp_path, monkeypatch, capsys):
    spec = importlib.util.find_spec("detic")
    if spec is None or importlib.util.find_spec("detectron2") is None:
        pytest.skip("needs detectron2 and Detic's checkout on sys.path (not installable from a registry)")
    from detectron2.modeling import ROI_HEADS_REGISTRY

    if getattr(ROI_HEADS_REGISTRY.get("DeticCascadeROIHeads") if "DeticCascadeROIHeads" in ROI_HEADS_REGISTRY
               else None, "stand_in", False):
        pytest.skip("test_detect_detic.py's stand-in holds Detic's heads name in this process; run this file alone")
    root = Path(spec.origin).parents[1]  # Detic's checkout: configs/, datasets/metadata/, third_party/
    (block,) = doc_blocks(PAGE, "Rescore Detic")
    block = block.replace('"tiny_alphaclip.safetensors"', repr(str(tiny_alphaclip(tmp_path))))
    monkeypatch.chdir(root)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    exec(compile(block, PAGE, "exec"), {"__name__": "docs"})
    out = capsys.readouterr().out  # (Detic's reset_cls_test prints too)
    assert "AlphaCLIPDeticCascadeROIHeads\n" in out and out.split()[-1] == "1203"
