"""The `alphaclip` command end to end on tiny checkpoints written in the real formats."""
import json
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import alphaclip_integrations.open_clip  # noqa: F401  (registers the tiny config)
from alphaclip_core.checkpoints import detect_format, read_state_dict
from alphaclip_core.cli import main
from conftest import openai_state_dict, randomize_alpha_conv, reference_state_dict

TINY = "alpha-ViT-Tiny-8"


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    model = randomize_alpha_conv(open_clip.create_model(TINY).eval(), seed=2, scale=0.2)
    torch.save(reference_state_dict(model), tmp_path / "alpha.pth")
    torch.save(openai_state_dict(model), tmp_path / "base.pt")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "scene.png")
    mask = np.zeros((90, 120), np.uint8)
    mask[20:60, 30:80] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path, model


def test_classify_prints_a_ranked_table_and_writes_an_overlay(files, capsys):
    d, model = files
    rc = main(["classify", str(d / "scene.png"), "--mask", str(d / "mask.png"), "--box", "10,10,50,40",
               "--labels", "cat", "dog", "tree", "--model", TINY, "--checkpoint", str(d / "alpha.pth"),
               "--base", str(d / "base.pt"), "--overlay", str(d / "out.png"), "--json", "--precision", "fp32"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["region"] for r in rows] == ["mask mask.png", "box 0"]
    for r in rows:
        probs = [p for _, p in r["top"]]
        assert probs == sorted(probs, reverse=True) and len(probs) == 3
        assert abs(sum(probs) - 1) < 1e-4  # 3 labels, top 3 = all of them
    # the same numbers as the library call
    from alphaclip_core import classify_regions
    ref = classify_regions(model, open_clip.get_tokenizer(TINY), Image.open(d / "scene.png"), ["cat", "dog", "tree"],
                           mask=[np.asarray(Image.open(d / "mask.png"))], box=[[10, 10, 50, 40]])
    assert rows[1]["top"][0][0] == ref.top(1, 1)[0][0]
    assert abs(rows[1]["top"][0][1] - ref.top(1, 1)[0][1]) < 1e-5
    overlay = Image.open(d / "out.png")
    assert overlay.size == (120, 90)
    # the region is tinted: pixels inside the mask changed, far corner pixel not
    before, after = np.asarray(Image.open(d / "scene.png")).astype(int), np.asarray(overlay).astype(int)
    assert np.abs(after[40, 55] - before[40, 55]).sum() > 20
    assert np.abs(after[85, 115] - before[85, 115]).sum() == 0


def test_classify_table_text(files, capsys):
    d, _ = files
    assert main(["classify", str(d / "scene.png"), "--labels", "cat", "dog", "--model", TINY,
                 "--checkpoint", str(d / "alpha.pth"), "--base", str(d / "base.pt"),
                 "--overlay", str(d / "o.png")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("whole image") and "cat" in out[0] and "dog" in out[0]


def test_convert_and_info(files, capsys):
    d, model = files
    assert main(["convert", str(d / "alpha.pth"), "--base", str(d / "base.pt"), "--arch", TINY,
                 "-o", str(d / "whole.safetensors")]) == 0
    assert detect_format(read_state_dict(d / "whole.safetensors")) == "open_clip-alpha"
    assert main(["convert", str(d / "whole.safetensors"), "--to", "reference", "--arch", TINY,
                 "-o", str(d / "back.pth")]) == 0
    back = torch.load(d / "back.pth", weights_only=True)
    ref = reference_state_dict(model)
    assert back.keys() == ref.keys()
    assert all(torch.equal(back[k], ref[k]) for k in ref)
    assert main(["convert", str(d / "base.pt"), "--arch", TINY, "-o", str(d / "init.safetensors")]) == 0
    init = read_state_dict(d / "init.safetensors")
    assert torch.count_nonzero(init["visual.conv1_alpha.weight"]) == 0
    assert main(["convert", str(d / "alpha.pth"), "--base", str(d / "base.pt"), "--arch", TINY, "--to", "local-dir",
                 "-o", str(d / "folder")]) == 0
    assert (d / "folder" / "open_clip_config.json").is_file()
    capsys.readouterr()
    assert main(["info", str(d / "alpha.pth"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "alpha-reference" and info["has_conv1_alpha"] is True
    assert info["has_text_tower"] is False and info["vision"].startswith("ViT width 64, patch 8, 2 layers, 64px")


def test_cli_errors_are_clear(files, capsys):
    d, _ = files
    (d / "junk.pth").write_bytes(b"junk")
    assert main(["info", str(d / "junk.pth")]) == 2
    assert "is not a readable PyTorch/safetensors checkpoint" in capsys.readouterr().err
    assert main(["convert", str(d / "alpha.pth"), "--arch", TINY, "-o", str(d / "x.safetensors")]) == 2
    assert "base: the reference Alpha-CLIP file holds only the vision tower" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", str(d / "scene.png"), "--box", "1,2,3", "--labels", "a"])
    assert "--box: expected 4 numbers" in capsys.readouterr().err


def test_console_script_entry_point_runs(files):
    d, _ = files
    out = subprocess.run([sys.executable, "-m", "alphaclip_core.cli", "info", str(d / "base.pt")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "format" in out.stdout and "clip" in out.stdout
