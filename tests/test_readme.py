"""The README's examples run (its first command after the install is `alphaclip demo`, the main job in
Python and as `alphaclip classify`, the open_clip example), and so do the pages docs/open_clip.md and
docs/alpha.md: on files written here under the names they use (random-init ViT-B/16 weights in the
reference formats)."""
import os
import re
import shlex

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import alphaclip_core
import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core.cli import main
from conftest import README, doc_blocks, openai_state_dict, randomize_alpha_conv, readme_blocks, reference_state_dict


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = randomize_alpha_conv(open_clip.create_model("alpha-ViT-B-16"), seed=1, scale=0.01)
    half = lambda sd: {k: v.half() for k, v in sd.items()}  # noqa: E731  (smaller files, same code path)
    torch.save(half(reference_state_dict(model)), d / "clip_b16_grit1m_fultune_8xe.pth")
    torch.save(half(openai_state_dict(model)), d / "ViT-B-16.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(d / "cat.jpg")
    mask = np.zeros((240, 320), np.uint8)
    mask[60:200, 100:260] = 255
    Image.fromarray(mask).save(d / "cat_mask.png")
    return d


def test_main_job_example_runs(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    code = readme_blocks("The main job")
    assert len(code) == 1
    scope: dict = {}
    exec(compile(code[0], "README:main-job", "exec"), scope)
    assert tuple(scope["features"].shape) == (1, 512)
    assert tuple(scope["alpha"].shape) == (1, 1, 224, 224)
    assert scope["scores"].probs.shape == (2, 3)
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_main_job_command_runs(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    cmd = [b for b in readme_blocks("The main job", "bash") if "alphaclip classify" in b]
    assert len(cmd) == 1
    argv = shlex.split(cmd[0].replace("\\\n", " "))
    assert argv[0] == "alphaclip"
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("mask cat_mask.png") and out[1].startswith("box 0")
    assert Image.open(workdir / "cat.regions.png").size == (320, 240)


def test_first_command_after_the_install_is_the_demo():
    text = README.read_text()
    after_install = text[text.index("## Install"):]
    fences = re.findall(r"```bash\n(.*?)```", after_install, flags=re.S)
    assert "pip install -c constraints.txt" in fences[0]             # the Install block itself
    first = fences[1].strip().splitlines()[0].split("#")[0].strip()
    assert first == "alphaclip demo"


def test_demo_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (block,) = readme_blocks("Try it", "bash")
    argv = shlex.split(block.splitlines()[0].split("#")[0])
    assert argv == ["alphaclip", "demo"]
    assert main(argv[1:]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 4   # one row per region
    assert (tmp_path / "alphaclip-demo.png").is_file()


def test_open_clip_example_runs(workdir, tmp_path, monkeypatch):
    """The README's pretrained-tag example, after `alphaclip convert` put the file where the tag points."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("ALPHACLIP_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "alpha-ViT-B-16-grit1m.safetensors"
    assert main(["convert", "clip_b16_grit1m_fultune_8xe.pth", "--base", "ViT-B-16.pt", "--arch", "alpha-ViT-B-16",
                 "--output", str(target)]) == 0
    (code,) = readme_blocks("open_clip")
    scope: dict = {}
    exec(compile(code, "README:open_clip", "exec"), scope)
    assert tuple(scope["text"].shape) == (1, 512)
    ref = torch.load(workdir / "clip_b16_grit1m_fultune_8xe.pth", weights_only=True)
    assert torch.equal(scope["model"].visual.conv1_alpha.weight, ref["conv1_alpha.weight"].float())


def test_docs_open_clip_page_runs(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("clip_b16_grit1m_fultune_8xe.pth", "ViT-B-16.pt"):
        os.symlink(workdir / name, tmp_path / name)
    monkeypatch.setenv("ALPHACLIP_CACHE", "unused")   # the page sets its own; restored after the test
    blocks = doc_blocks("docs/open_clip.md")
    assert len(blocks) == 3
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "docs/open_clip.md", "exec"), scope)
    assert tuple(scope["text"].shape) == (1, 512)
    assert os.path.isfile(tmp_path / "alpha-b16" / "open_clip_model.safetensors")
    assert isinstance(scope["model"], alphaclip_core.AlphaCLIP) and not scope["model"].training  # aoc.load
    out = capsys.readouterr().out
    assert "('clip_b16_grit1m_fultune_8xe.pth', 'ViT-B-16.pt')" in out
    assert "weights/alpha-ViT-B-16-grit1m.safetensors" in out
    assert "alphaclip convert clip_b16_grit1m_fultune_8xe.pth --base ViT-B-16.pt" in out


def test_docs_alpha_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = doc_blocks("docs/alpha.md")
    assert len(blocks) == 3
    scopes = []
    for block in blocks:
        scopes.append({})
        exec(compile(block, "docs/alpha.md", "exec"), scopes[-1])
    regions, transform, classify = scopes
    assert tuple(regions["masks"].shape) == (3, 48, 64)
    assert (regions["ac"].rle_decode(regions["rle"]) == (regions["mask"] > 0)).all()
    assert tuple(transform["pixels"].shape) == (1, 3, 32, 32) and tuple(transform["alpha"].shape) == (1, 1, 32, 32)
    assert classify["scores"].probs.shape == (4, len(classify["LABELS"]))
    out = capsys.readouterr().out
    assert "tensor([-1.9231,  1.9231])" in out and "tensor([1.9231])" in out
    assert "lies entirely outside the centre crop" in out
    assert out.count("\n") >= 4 + 4   # the prints above + one table row per region
