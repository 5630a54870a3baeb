"""docs/backbones.md runs, and `alphaclip info` lists the supported backbones."""
from __future__ import annotations

import json
import shlex

import open_clip
import pytest
import torch

import alphaclip_integrations.open_clip  # noqa: F401
import backbones_kit as kit
from alphaclip_core.cli import build_parser, main
from conftest import doc_blocks

PAGE = "docs/backbones.md"


@pytest.fixture(scope="module", autouse=True)
def toys(tmp_path_factory):
    kit.register(tmp_path_factory.mktemp("toy_configs"))


def _run(heading, scope=None, capsys=None):
    blocks = doc_blocks(PAGE, heading)
    assert len(blocks) == 1, heading
    scope = dict(scope or {})
    exec(compile(blocks[0], f"{PAGE}:{heading}", "exec"), scope)
    return scope


def test_list_and_build_sections_run(capsys):
    scope = _run("List them")
    assert len(scope["names"]) > 80 and "alpha-ViT-SO400M-14-SigLIP" in scope["names"]
    scope = _run("Build one")
    assert tuple(scope["so400m"].visual.conv1_alpha.weight.shape) == (1152, 1, 14, 14)
    out = capsys.readouterr().out
    assert "AlphaCLIP (1280, 1, 14, 14)" in out and "['visual.trunk.patch_embed.conv1_alpha.weight']" in out


def test_any_config_section_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope = _run("Any config")
    assert capsys.readouterr().out.strip().endswith("True")
    assert scope["region"].shape == (1, 32) and (tmp_path / "my-vit-8.pt").is_file()


def test_normalisation_section_runs(capsys):
    _run("Alpha and image normalisation")
    assert capsys.readouterr().out.split() == ["1.0", "1.9230769872665405", "-1.9230769872665405", "1.9231"]


def test_transformers_section_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = open_clip.create_model("alpha-Toy-SL-8").eval()
    with torch.no_grad():
        model.visual.conv1_alpha.weight.normal_(0, 0.5)
    scope = _run("transformers: Alpha-SigLIP", {"model": model})
    assert scope["features"].shape == (2, 32)
    for k, v in model.state_dict().items():
        assert torch.equal(scope["back"].state_dict()[k], v), k


def test_llava_section_runs(capsys):
    from test_backbones_llava import tiny_siglip_llava

    scope = _run("LLaVA with a SigLIP tower", {"llava": tiny_siglip_llava(layer=-2)})
    assert capsys.readouterr().out.split() == ["AlphaSiglipVisionModel", "-2"]
    assert torch.count_nonzero(scope["tower"].embeddings.patch_embedding_alpha.weight) == 0


def test_documented_commands_parse():
    for block in doc_blocks(PAGE, lang="bash"):
        argv = shlex.split(block.replace("\\\n", " "))
        assert argv[0] == "alphaclip"
        args = build_parser().parse_args(argv[1:])
        if args.command == "train":
            assert args.model == "alpha-ViT-SO400M-14-SigLIP" and args.init == "webli" and args.loss == "auto"


def test_info_lists_the_backbones(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("alpha-")}
    assert "open_clip ViT (width 1280, patch 14, 32 layers)" in rows["alpha-ViT-H-14"]
    assert "timm vit_so400m_patch14_siglip_224" in rows["alpha-ViT-SO400M-14-SigLIP"] and "webli" in \
        rows["alpha-ViT-SO400M-14-SigLIP"]
    assert "grit1m, grit20m, grit1m_mim" in rows["alpha-ViT-B-16"]
    assert "alpha-RN50" not in rows and "alpha-convnext_base" not in rows
    assert "Start one: open_clip.create_model_and_transforms('alpha-<name>'" in out
    assert main(["info", "--backbones", "--json"]) == 0
    data = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert data["alpha-EVA02-L-14"]["tower"] == "timm eva02_large_patch14_clip_224"
    assert data["alpha-EVA02-L-14"]["text"] == "CustomText" and data["alpha-ViT-L-14"]["text"] == "CLIP"


def test_info_describes_a_timm_alpha_checkpoint(tmp_path, capsys):
    from alphaclip_core.checkpoints import save_safetensors

    torch.manual_seed(0)
    model = open_clip.create_model("alpha-Toy-SL-8")
    with torch.no_grad():
        model.visual.conv1_alpha.weight.fill_(0.25)
    save_safetensors(model, tmp_path / "sl.safetensors")
    assert main(["info", str(tmp_path / "sl.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "open_clip-alpha" and info["has_conv1_alpha"] is True
    assert info["vision"] == "timm ViT width 32, patch 8, 2 blocks, attention pooling (SigLIP-style)"
    assert info["conv1_alpha_abs_mean"] == pytest.approx(0.25) and info["has_text_tower"] is True
