"""The README's examples run: its python blocks of the main-job and open_clip sections, and the
`alphaclip classify` command, on files written here under the names the README uses
(random-init ViT-B/16 weights in the reference formats)."""
import os
import shlex

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core.cli import main
from conftest import openai_state_dict, randomize_alpha_conv, readme_blocks, reference_state_dict





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


def test_main_job_demo_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cmd = [b for b in readme_blocks("The main job", "bash") if "alphaclip demo" in b]
    assert len(cmd) == 1
    argv = shlex.split(cmd[0].split("#")[0])
    assert argv == ["alphaclip", "demo"]
    assert main(argv[1:]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 4   # one row per region
    assert (tmp_path / "alphaclip-demo.png").is_file()


def test_open_clip_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = readme_blocks("open_clip")
    assert len(code) == 1
    scope: dict = {}
    exec(compile(code[0], "README:open_clip", "exec"), scope)
    assert tuple(scope["text"].shape) == (1, 512)
    assert os.path.isfile(tmp_path / "alpha-b16" / "open_clip_model.safetensors")
