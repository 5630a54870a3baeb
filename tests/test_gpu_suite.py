"""benchmarks/gpu_suite.py on CPU: its reference-attention baseline computes what open_clip's tower computes,
and --tiny runs every section (the code paths a GPU run takes) and writes the result files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from alphaclip_core.model import AlphaCLIP
from conftest import TINY_CFG, randomize_alpha_conv

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_reference_attention_equals_open_clip_attention_paths():
    """The explicit q.kT softmax baseline, open_clip's inference fast path (nn.MultiheadAttention's native
    kernel) and the SDPA path (fast path off, as in training) agree in fp32 on CPU."""
    from gpu_suite import explicit_attention

    torch.manual_seed(0)
    model = randomize_alpha_conv(AlphaCLIP(**TINY_CFG).eval())
    x = torch.randn(3, 3, 32, 32)
    alpha = torch.where(torch.rand(3, 1, 32, 32) > 0.5, 1.9231, -1.9231)
    with torch.inference_mode():
        fast = model.encode_image(x, alpha)
        with explicit_attention(model):
            ref = model.encode_image(x, alpha)
        assert not any("attention" in vars(b) for b in model.visual.transformer.resblocks)  # restored
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            sdpa = model.encode_image(x, alpha)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    assert (ref - fast).abs().max() < 1e-5 and (sdpa - fast).abs().max() < 1e-5
    assert (ref - fast).abs().max() > 0 or (sdpa - fast).abs().max() > 0 or torch.equal(ref, fast)


def test_tiny_suite_runs_every_section(tmp_path, monkeypatch):
    import gpu_suite

    monkeypatch.setenv("ALPHACLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    rc = gpu_suite.main(["--tiny", "--device", "cpu", "--reps", "1", "--out", str(tmp_path / "out")])
    assert rc == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted([f"gpu-{s}.json" for s in gpu_suite.SECTIONS] + ["gpu-suite.json", "gpu-suite.md"])
    summary = json.loads((tmp_path / "out" / "gpu-suite.json").read_text())
    sections = summary["sections"]
    assert not [n for n, s in sections.items() if "error" in s or "skipped" in s]
    assert sections["system"]["auto_precision"]["reason"].startswith("auto: ")
    for arch in ("B/16", "L/14@336"):
        rows = {r["variant"]: r for r in sections["encode"]["archs"][arch]["rows"]}
        assert rows["reference fp16 (explicit q.kT softmax)"]["vs_reference_fp16"] == 1.0
        assert all(r["images_per_s"] > 0 and r["min_cosine_to_fp32"] > 0.999 for r in rows.values())
    assert "open_clip fp16 + torch.compile" in {r["variant"] for r in sections["encode"]["archs"]["B/16"]["rows"]}
    assert [r["K"] for r in sections["regions"]["rows"]] == [1, 8]
    assert {r["precision"] for r in sections["train"]["rows"]} == {"fp32", "bf16-autocast", "bf16-weights"}
    assert all(r["samples_per_s"] > 0 for r in sections["train"]["rows"])
    assert [r["regions"] for r in sections["pseudolabel"]["rows"]] == ["boxes", "masks (RLE)"]
    llava = sections["llava"]["attn_implementations"]
    assert set(llava) == {"sdpa", "eager"} and llava["sdpa"]["attn_implementation"]["transformers"] == "sdpa"
    assert all(v < 1e-4 for r in llava.values() for v in r["max_abs_diff"].values())
    md = (tmp_path / "out" / "gpu-suite.md").read_text()
    assert "TINY MODE" in md and "| L/14@336 encode, bf16 + SDPA" in md


def test_suite_refuses_cpu_without_tiny(tmp_path):
    import gpu_suite

    with pytest.raises(SystemExit, match="needs --device cuda"):
        gpu_suite.main(["--device", "cpu", "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device here"):
            gpu_suite.main(["--out", str(tmp_path)])


def test_region_batch_size_from_memory():
    from alphaclip_core.regions import DEFAULT_REGION_BATCH, batch_from_memory, region_batch_size

    assert region_batch_size(AlphaCLIP(**TINY_CFG)) == DEFAULT_REGION_BATCH  # CPU: the default
    gib = 2 ** 30
    assert batch_from_memory(40 * gib, gib / 8) == 160                        # half of 40 GiB at 1/8 GiB each
    assert batch_from_memory(40 * gib, gib / 8, max_batch=128) == 128
    assert batch_from_memory(gib, gib / 8) == 4 and batch_from_memory(0, 1.0) == 1
    assert batch_from_memory(10 * gib, gib / 20) == 96                        # 100 -> a multiple of 8
    with pytest.raises(ValueError, match="bytes_per_region"):
        batch_from_memory(1.0, 0)
    assert sys.modules["alphaclip_core.regions"].DEFAULT_REGION_BATCH == 32
