"""``alphaclip train`` / ``alphaclip demo``, the shipped toy model, and docs/training.md's example."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core.cli import main
from conftest import doc_blocks
from alphaclip_train.synthetic import ASSETS, LABELS, MICRO_CFG, demo_scene, init_model_dir, load_tiny, write_shards



def test_shipped_model_is_small_and_loads_both_ways():
    weights = ASSETS / "open_clip_model.safetensors"
    assert weights.stat().st_size < 15 * 2**20
    model, tokenizer = load_tiny()
    via_open_clip = open_clip.create_model(f"local-dir:{ASSETS}")
    a, b = model.state_dict(), via_open_clip.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model.visual.conv1_alpha.weight.abs().sum() > 0  # fine-tuned: the alpha conv is not zero
    assert tokenizer(["a red circle"]).shape == (1, model.context_length)


def test_demo_prints_a_table_and_writes_an_overlay(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--overlay", str(out)]) == 0
    text = capsys.readouterr().out
    image, masks, truth, _ = demo_scene()
    assert len(truth) == masks.shape[0] == 4 and all(t in LABELS for t in truth)
    assert main(["demo", "--overlay", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["truth"] for r in rows] == truth
    for i, (t, r) in enumerate(zip(truth, rows)):  # the table and the JSON agree, and each row says ok or WRONG
        best = r["top"][0][0]
        assert r["correct"] == (best == t)
        verdict = "ok" if r["correct"] else "WRONG"
        assert re.search(rf"^{i + 1}: {t}\s+{best} \d\.\d{{3}}, .*   {verdict}$", text, re.M), text
        assert (f"region {i + 1} is a {t}, but the toy calls it a {best}" in text) == (not r["correct"])
    assert f"top-1 correct: {sum(r['correct'] for r in rows)}/4" in text
    png = Image.open(out)
    scale = png.width // image.width
    assert scale >= 1 and png.size == (image.width * scale, image.height * scale)
    big = np.asarray(image.resize(png.size, Image.NEAREST), int)
    diff = np.abs(np.asarray(png.convert("RGB"), int) - big).sum(-1)
    inside = masks.repeat(scale, axis=1).repeat(scale, axis=2).any(0)
    assert (diff[inside] > 0).mean() > 0.9  # every region is tinted


def test_demo_says_so_when_a_region_is_wrong(tmp_path, capsys, monkeypatch):
    import alphaclip_train.synthetic as synthetic
    from alphaclip_core.model import AlphaCLIP
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(0)
    untrained = AlphaCLIP(**{k: v for k, v in MICRO_CFG.items() if k != "alpha_clip"}).eval()
    monkeypatch.setattr(synthetic, "load_tiny", lambda device="cpu": (untrained, SimpleTokenizer(context_length=16)))
    assert main(["demo", "--overlay", str(tmp_path / "demo.png")]) == 0
    text = capsys.readouterr().out
    _, _, truth, _ = demo_scene()
    wrong = [i for i, t in enumerate(truth) if not re.search(rf"^{i + 1}: {t}\s+{t} ", text, re.M)]
    assert wrong, "an untrained model got all 4 regions right"
    assert f"top-1 correct: {4 - len(wrong)}/4" in text
    for i in wrong:
        assert re.search(rf"^{i + 1}: {truth[i]}\s+.*   WRONG$", text, re.M)
        assert f"region {i + 1} is a {truth[i]}, but the toy calls it a " in text


def test_train_command(tmp_path, capsys):
    write_shards(tmp_path / "data", 16, per_shard=8, size=32)
    init_model_dir(tmp_path / "model", MICRO_CFG)
    rc = main(["train", str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--model",
               f"local-dir:{tmp_path / 'model'}", "--steps", "2", "--batch-size", "4", "--warmup", "1",
               "--threads", "1", "--no-progress", "--unfreeze-last", "0"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 2 and Path(result["files"]["reference"]).is_file()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["unfreeze_last"] == 0 and cfg["lr"] == 2e-4 and cfg["logit_scale"] == 100.0
    init = open_clip.create_model(f"local-dir:{tmp_path / 'model'}").state_dict()
    final = open_clip.create_model(f"local-dir:{tmp_path / 'run' / 'final'}").state_dict()
    changed = {k for k in init if not torch.equal(init[k], final[k])}
    assert changed == {"visual.conv1_alpha.weight"}  # --unfreeze-last 0: only the alpha conv trains
    assert main(["train", str(tmp_path / "nothing"), "-o", str(tmp_path / "r2"), "--model",
                 f"local-dir:{tmp_path / 'model'}"]) == 2
    assert "no .tar shard or .jsonl file found" in capsys.readouterr().err



def test_docs_training_example_runs(tmp_path, monkeypatch):
    """docs/training.md's example (the README's training section until issue 16; its toy-model block is
    docs/alpha.md's "Classify regions", run by tests/test_readme.py)."""
    (block,) = doc_blocks("docs/training.md", "Train in a few lines")
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "docs"}
    exec(compile(block, "docs/training.md", "exec"), scope)
    assert scope["result"]["step"] == 2
    assert scope["result"]["files"] == {"reference": "toy-run/final/visual.pth",
                                        "open_clip": "toy-run/final/open_clip_model.safetensors",
                                        "open_clip_config": "toy-run/final/open_clip_config.json"}
    assert (tmp_path / "toy-run" / "final" / "visual.pth").is_file()
