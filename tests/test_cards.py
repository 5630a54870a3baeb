"""Model cards: every exported folder (open_clip, transformers Alpha-CLIP / Alpha-SigLIP, alpha LLaVA, and
``alphaclip convert``) gets a README.md whose metadata block reads back with ``yaml.safe_load``, whose
loading examples run on the folder it describes, and which quotes the paper's numbers only for a
released checkpoint; a README.md the user wrote is kept unless asked."""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoModelForImageTextToText

import alphaclip_integrations.hf as ah
import alphaclip_integrations.open_clip as aoc
import backbones_kit as kit
from alphaclip_core.cli import main as cli_main
from alphaclip_core.model import AlphaCLIP
from alphaclip_integrations.cards import (PAPER_IMAGENET_S, Provenance, Tower, model_card, released_checkpoint,
                                          write_model_card)
from conftest import TINY_CFG, doc_blocks, openai_state_dict, randomize_alpha_conv, reference_state_dict
from test_llava_hf import TOWER_CFG, tiny_tokenizer, write_fixtures

L14_336 = Tower("CLIP", image_size=336, patch_size=14, width=1024, layers=24, embed_dim=768)
B16 = Tower("CLIP", image_size=224, patch_size=16, width=768, layers=12, embed_dim=512)


def read_card(folder) -> tuple:
    """``(metadata dict, body)`` of ``folder/README.md``: the block between the first two ``---`` lines."""
    text = (Path(folder) / "README.md").read_text()
    assert text.startswith("---\n"), "the card must open with the metadata block"
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def blocks(body: str, lang: str = "python") -> list:
    return re.findall(rf"```{lang}\n(.*?)```", body, flags=re.S)


def run_python_blocks(body: str, cwd: Path) -> dict:
    """Exec the card's python blocks in order, in one namespace, from ``cwd`` (where the folder and photo.jpg are)."""
    scope: dict = {"__name__": "card"}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        for block in blocks(body):
            exec(compile(block, "README.md", "exec"), scope)
    finally:
        os.chdir(old)
    return scope


def photo(folder: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(folder / "photo.jpg")


def run_llava_convert(argv: list, cwd: Path) -> None:
    """``python -m alphaclip_integrations.llava convert ARGV`` in-process, from ``cwd``."""
    from alphaclip_integrations.llava.convert import main as llava_main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert llava_main(argv) == 0
    finally:
        os.chdir(old)


def common_checks(meta: dict, body: str, library: str, pipeline: str, tags: set) -> None:
    assert meta["library_name"] == library and meta["pipeline_tag"] == pipeline
    assert tags <= set(meta["tags"]) and "alpha-clip" in meta["tags"]
    assert isinstance(meta["license"], str) and meta["license"]
    assert "foreground is +1.9231 and background -1.9231" in body
    assert "all-ones mask through the same normalisation (+1.9231 everywhere)" in body
    assert "## Where the weights and numbers come from" in body and "## How to load it" in body


@pytest.fixture(scope="module", autouse=True)
def toys(tmp_path_factory):
    kit.register(tmp_path_factory.mktemp("toy_configs"))


@pytest.fixture
def tiny() -> AlphaCLIP:
    torch.manual_seed(0)
    return randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval())


# ------------------------------------------------------------------------------------------------ open_clip folder
def test_open_clip_folder_card_reads_back_and_its_examples_run(tmp_path):
    torch.manual_seed(0)
    model = randomize_alpha_conv(AlphaCLIP(**TOWER_CFG).eval())  # the tiny LLaVA fixture's tower shape
    folder = aoc.save_pretrained(model, tmp_path / "alpha-tiny")
    meta, body = read_card(folder)
    common_checks(meta, body, "open_clip", "zero-shot-image-classification", {"clip", "open_clip"})
    assert meta["license"] == "unknown" and "base_model" not in meta  # nothing known, nothing claimed
    assert "was not recorded" in body and "No evaluation numbers are attached" in body
    assert not re.search(r"\d\d\.\d\d", body), "no number may appear on a card without a released checkpoint"
    photo(tmp_path)
    scope = run_python_blocks(body, tmp_path)
    assert scope["features"].shape == (1, TOWER_CFG["embed_dim"])
    assert scope["scores"].probs.shape == (1, 2)
    assert type(scope["hf_model"]).__name__ == "AlphaCLIPModel"
    assert (tmp_path / "alpha-tiny-hf" / "README.md").is_file()  # the converted folder has its own card
    # the LLaVA line, with a (tiny) LLaVA folder whose tower has this architecture
    write_fixtures(tmp_path, llava_name="llava-tiny")
    (line,) = blocks(body, "bash")
    args = shlex.split(line.replace("LLAVA_FOLDER", "llava-tiny"))
    assert args[:4] == ["python", "-m", "alphaclip_integrations.llava", "convert"]
    run_llava_convert(args[4:], tmp_path)
    tower = AutoModelForImageTextToText.from_pretrained(tmp_path / "alpha-llava").model.vision_tower
    assert torch.equal(tower.embeddings.patch_embedding_alpha.weight, model.visual.conv1_alpha.weight)


def test_existing_readme_is_kept_unless_asked(tiny, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("my own notes\n")
    aoc.save_pretrained(tiny, folder)
    assert (folder / "README.md").read_text() == "my own notes\n"
    ah.save_hf(tiny, folder)
    assert (folder / "README.md").read_text() == "my own notes\n"
    aoc.save_pretrained(tiny, folder, overwrite_card=True)
    assert read_card(folder)[0]["library_name"] == "open_clip"
    aoc.save_pretrained(tiny, tmp_path / "none", card=False)
    assert not (tmp_path / "none" / "README.md").exists()
    assert write_model_card(folder, "x") is None and write_model_card(folder, "x", overwrite=True) == folder / "README.md"
    with pytest.raises(TypeError, match="card: expected True, False or an alphaclip_integrations.cards.Provenance"):
        aoc.save_pretrained(tiny, tmp_path / "bad", card="yes")


# ------------------------------------------------------------------------------------------------ transformers
def test_transformers_card_reads_back_and_its_examples_run(tmp_path):
    torch.manual_seed(0)
    model = randomize_alpha_conv(AlphaCLIP(**TOWER_CFG).eval())  # the tiny LLaVA fixture's tower shape
    folder = ah.save_hf(model, tmp_path / "alpha-hf", card=Provenance(tmp_path / "sub" / "mine.pth", "base.pt"))
    meta, body = read_card(folder)
    common_checks(meta, body, "transformers", "zero-shot-image-classification", {"clip", "transformers"})
    assert "converted with alpha-clip" in body and "from `mine.pth`, with the text tower of `base.pt`" in body
    assert str(tmp_path) not in body, "a card names files, never the local folders they were read from"
    photo(tmp_path)
    scope = run_python_blocks(body, tmp_path)
    assert scope["features"].shape == (1, TOWER_CFG["embed_dim"])
    probs = scope["out"].logits_per_image.softmax(-1)
    assert probs.shape == (1, 2) and torch.allclose(probs.sum(-1), torch.ones(1))
    for k, v in model.state_dict().items():  # the open_clip example gives the same weights back
        if k != "attn_mask":
            assert torch.equal(scope["oc_model"].state_dict()[k], v), k
    # the LLaVA lines, with a (tiny) LLaVA folder whose tower has this architecture
    write_fixtures(tmp_path, llava_name="llava-tiny")
    convert, llava = blocks(body, "bash")[0].strip().splitlines()
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert cli_main(shlex.split(convert)[1:]) == 0
    finally:
        os.chdir(old)
    args = shlex.split(llava.replace("LLAVA_FOLDER", "llava-tiny"))
    assert args[:4] == ["python", "-m", "alphaclip_integrations.llava", "convert"]
    run_llava_convert(args[4:], tmp_path)
    llava_meta, llava_body = read_card(tmp_path / "alpha-llava")
    assert llava_meta["pipeline_tag"] == "image-text-to-text"
    assert "the vision tower from `tower.safetensors`" in llava_body and "from `llava-tiny`" in llava_body


def test_siglip_card_reads_back_and_its_examples_run(tmp_path):
    from test_backbones_hf import NAME

    torch.manual_seed(0)
    model = open_clip.create_model(NAME).eval()
    with torch.no_grad():
        model.visual.conv1_alpha.weight.normal_(0, 0.5)
    folder = ah.save_siglip_hf(model, tmp_path / "alpha-siglip", tokenizer=tiny_tokenizer())
    meta, body = read_card(folder)
    common_checks(meta, body, "transformers", "zero-shot-image-classification", {"siglip", "transformers"})
    assert body.splitlines()[1] == "# Alpha-SigLIP (transformers)"
    assert "SigLIP: independent probabilities" in body
    photo(tmp_path)
    scope = run_python_blocks(body, tmp_path)
    assert scope["features"].shape == (1, 32)
    assert scope["out"].logits_per_image.shape == (1, 2)
    # without a tokenizer the card shows the image path only
    folder = ah.save_siglip_hf(model, tmp_path / "images-only")
    _, body = read_card(folder)
    assert "AutoProcessor" not in body and "get_image_features" in body
    # written under one name, published under another: the examples use the given name
    folder = ah.save_siglip_hf(model, tmp_path / ".tmp-123", card=Provenance(folder_name="alpha-siglip-toy"))
    assert 'folder = "alpha-siglip-toy"' in read_card(folder)[1] and ".tmp-123" not in read_card(folder)[1]
    # an open_clip SigLIP folder
    aoc.save_pretrained(model, tmp_path / "oc-siglip")
    meta, body = read_card(tmp_path / "oc-siglip")
    assert "siglip" in meta["tags"] and "classify_regions" not in body  # CLIP's softmax example is not shown
    assert f"timm `{kit.CONFIGS['Toy-SL-8']['vision_cfg']['timm_model_name']}`, width 32, 2 layers" in body


# ------------------------------------------------------------------------------------------------ alpha LLaVA
def test_llava_card_reads_back_and_its_example_runs(tmp_path):
    from alphaclip_integrations.llava import convert_llava

    write_fixtures(tmp_path)
    out = convert_llava(tmp_path / "llava", tmp_path / "ref.pth", tmp_path / "alpha-llava")
    meta, body = read_card(out)
    common_checks(meta, body, "transformers", "image-text-to-text", {"llava", "clip"})
    assert "the vision tower from `ref.pth`" in body and "from `llava`" in body
    assert "No evaluation numbers are attached" in body
    photo(tmp_path)
    scope = run_python_blocks(body, tmp_path)
    assert scope["inputs"]["alpha_values"].shape == (1, 1, 32, 32)
    assert scope["out"].shape[1] > scope["inputs"]["input_ids"].shape[1]  # it generated
    # the command line records the hub ids it is given
    from alphaclip_integrations.llava.convert import main as llava_main

    assert llava_main([str(tmp_path / "llava"), str(tmp_path / "ref.pth"), "-o", str(tmp_path / "cli"),
                       "--base-model", "llava-hf/llava-1.5-7b-hf"]) == 0
    assert read_card(tmp_path / "cli")[0]["base_model"] == ["llava-hf/llava-1.5-7b-hf"]
    assert llava_main([str(tmp_path / "llava"), str(tmp_path / "ref.pth"), "-o", str(tmp_path / "none"),
                       "--card", "none"]) == 0
    assert not (tmp_path / "none" / "README.md").exists()


# ------------------------------------------------------------------------------------------------ the command line
def test_alphaclip_convert_cards(tmp_path, capsys):
    torch.manual_seed(0)
    model = open_clip.create_model("alpha-ViT-Tiny-8").eval()
    src = tmp_path / "inputs"
    src.mkdir()
    torch.save(reference_state_dict(model), src / "visual.pth")
    torch.save(openai_state_dict(model), src / "base.pt")
    for to in ("hf", "local-dir"):
        assert cli_main(["convert", str(src / "visual.pth"), "--base", str(src / "base.pt"), "--arch",
                         "alpha-ViT-Tiny-8", "--to", to, "-o", str(tmp_path / to)]) == 0
        meta, body = read_card(tmp_path / to)
        assert meta["library_name"] == ("transformers" if to == "hf" else "open_clip")
        assert "from `visual.pth`, with the text tower of `base.pt`" in body and str(src) not in body
        assert body.splitlines()[1].startswith("# Alpha-CLIP alpha-ViT-Tiny-8")
    (tmp_path / "hf" / "README.md").write_text("mine\n")
    args = ["convert", str(src / "visual.pth"), "--base", str(src / "base.pt"), "--arch", "alpha-ViT-Tiny-8",
            "--to", "hf", "-o", str(tmp_path / "hf")]
    assert cli_main(args) == 0 and (tmp_path / "hf" / "README.md").read_text() == "mine\n"
    assert cli_main(args + ["--card", "overwrite"]) == 0 and read_card(tmp_path / "hf")[0]
    assert cli_main(args[:-1] + [str(tmp_path / "bare"), "--card", "none"]) == 0
    assert not (tmp_path / "bare" / "README.md").exists()
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------ numbers
def test_released_checkpoint_numbers_are_quoted_as_reported_by_the_paper():
    text = model_card("transformers", L14_336, Provenance("/some/where/clip_l14_336_grit_20m_4xe.pth", "ViT-L-14-336px.pt"))
    meta = yaml.safe_load(text[4:].split("\n---\n", 1)[0])
    assert meta["base_model"] == ["openai/clip-vit-large-patch14-336"] and meta["license"] == "cc-by-nc-4.0"
    assert "**Reported by the paper** (not measured on this folder)" in text
    assert "| `clip_l14_336_grit_20m_4xe.pth` | 79.61 | 95.31 |" in text
    assert "pretrained tag `grit20m`" in text and "/some/where" not in text
    # every released file maps to its architecture's numbers (the SPEC's table)
    assert len(PAPER_IMAGENET_S) == 8
    assert released_checkpoint(Provenance("clip_b16_grit+mim_fultune_4xe.pth"), B16).top1 == 69.40


def test_no_number_for_a_released_name_on_another_architecture_or_a_llava():
    # a file named like a B/16 release but holding an L/14@336 tower: the name alone proves nothing
    text = model_card("open_clip", L14_336, Provenance("clip_b16_grit1m_fultune_8xe.pth"))
    meta = yaml.safe_load(text[4:].split("\n---\n", 1)[0])
    assert "68.31" not in text and "Reported by the paper" not in text
    assert meta["license"] == "unknown" and "base_model" not in meta
    llava = model_card("llava", L14_336, Provenance("clip_l14@336_grit1m_fultune_8xe.pth", llava="llava-1.5-7b-hf"))
    assert "not as part of this LLaVA" in llava and "no numbers were measured for it" in llava
    assert yaml.safe_load(llava[4:].split("\n---\n", 1)[0])["license"] == "unknown"
    with pytest.raises(ValueError, match="kind: expected one of"):
        model_card("onnx", B16)


# ------------------------------------------------------------------------------------------------ docs/model-cards.md
def test_docs_page_examples(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (block,) = doc_blocks("docs/model-cards.md")
    exec(compile(block, "docs/model-cards.md", "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.strip() == "['---', 'library_name: \"transformers\"', 'pipeline_tag: " \
                                              "\"zero-shot-image-classification\"']"
    meta, body = read_card(tmp_path / "alpha-tiny-hf")
    assert meta["base_model"] == ["openai/clip-vit-base-patch16"] and meta["license"] == "mit"
    assert "from `visual.pth`" in body and "my_run" not in body
    assert "Trained with `alphaclip train` on 100k GRIT pairs for 2 epochs." in body
    # the commands parse with the options the page names
    from alphaclip_core.cli import build_parser
    from alphaclip_integrations.llava import convert as llava_convert

    (commands,) = doc_blocks("docs/model-cards.md", lang="bash")
    lines = commands.replace("\\\n", " ").strip().splitlines()
    for line in lines[:2]:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.command == "convert" and args.to == "hf" and args.card in ("write", "overwrite")
    argv = shlex.split(lines[2])
    assert argv[:4] == ["python", "-m", "alphaclip_integrations.llava", "convert"] and "--base-model" in argv
    with pytest.raises(FileNotFoundError, match="llava_folder: llava-1.5-7b-hf has no config.json"):
        llava_convert.main(argv[4:])  # parses; then says what is missing here
