"""No code runs from a weight file (issue 11 §1): TorchScript archives are read by a restricted
unpickler, never torch.jit.load; every loader refuses a hostile archive or pickle and no marker appears;
real TorchScript archives of an OpenAI-layout CLIP still load with identical tensors."""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP
from PIL import Image

import alphaclip_integrations.open_clip  # noqa: F401  (registers the tiny config)
from alphaclip_core.checkpoints import CheckpointError, describe, load_pickled, read_state_dict
from alphaclip_core.cli import main
from conftest import (TINY_CFG, MakeDir, openai_state_dict, reference_state_dict, write_hostile_torchscript,
                      write_torchscript_archive)

TINY = "alpha-ViT-Tiny-8"
ROOT = Path(__file__).resolve().parents[1]
REFUSED_TS = r"refused to read a TorchScript class \(__torch__\.\S+\) with its own __setstate__"
REFUSED_PICKLE = r"holds the object posix\.mkdir, not only tensors and plain containers; refusing to unpickle it"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    with torch.no_grad():
        model.visual.conv1_alpha.weight.normal_(0, 0.1)
    torch.save(reference_state_dict(model), d / "alpha.pth")
    torch.save(openai_state_dict(model), d / "base.pt")
    marker = d / "MARKER"
    write_hostile_torchscript(d / "evil.pt", marker)
    torch.save({"conv1.weight": torch.ones(1), "x": MakeDir(marker)}, d / "evil.pth")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "scene.png")
    return d, marker


def _no_marker(marker: Path) -> None:
    assert not marker.exists(), "loading ran code from the file"


def test_the_hostile_archive_really_runs_code_under_torch_jit_load(tmp_path):
    """The fixture is hostile for real: torch.jit.load (what the loaders used to call) creates the marker.
    This test is the one place that calls torch.jit.load, on a file it wrote, to prove the point."""
    marker = tmp_path / "MARKER"
    write_hostile_torchscript(tmp_path / "evil.pt", marker)
    torch.jit.load(str(tmp_path / "evil.pt"))
    assert marker.read_bytes() == b"A" * 8


def test_openai_layout_torchscript_archive_loads_with_identical_tensors(tmp_path):
    torch.manual_seed(0)
    model = CLIP(**TINY_CFG).eval()
    sd = openai_state_dict(model)
    write_torchscript_archive(sd, tmp_path / "params.pt", parameters=True)   # OpenAI keeps weights as parameters
    write_torchscript_archive(sd, tmp_path / "buffers.pt")
    want = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    for name in ("params.pt", "buffers.pt"):
        got = read_state_dict(tmp_path / name)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    info = describe(tmp_path / "params.pt")
    assert info["container"] == "TorchScript archive" and info["format"] == "clip"


def test_traced_clip_archive_keeps_parameters_and_buffers_only(tmp_path):
    """A torch.jit.trace of a whole CLIP (real module classes, code/ declarations, half storages):
    exactly the parameters and buffers the archive declares, bit-identical."""
    torch.manual_seed(0)
    model = CLIP(**TINY_CFG).eval().half()
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32, dtype=torch.half), torch.zeros(1, 77, dtype=torch.long)),
                             check_trace=False)
    traced.save(str(tmp_path / "traced.pt"))
    got = read_state_dict(tmp_path / "traced.pt")
    want = dict(model.state_dict())
    want["attn_mask"] = model.attn_mask  # a (non-persistent) buffer: TorchScript keeps every buffer
    assert got.keys() == want.keys()
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)


def test_hostile_archive_and_pickle_refused_by_the_readers(files):
    d, marker = files
    with pytest.raises(CheckpointError, match=REFUSED_TS):
        read_state_dict(d / "evil.pt")
    with pytest.raises(CheckpointError, match=REFUSED_PICKLE):
        read_state_dict(d / "evil.pth")
    with pytest.raises(CheckpointError, match="is a TorchScript archive, not a torch.save file"):
        load_pickled(d / "evil.pt", "resume")
    with pytest.raises(CheckpointError, match=REFUSED_PICKLE):
        load_pickled(d / "evil.pth", "resume")
    (d / "evil.pkl").write_bytes(pickle.dumps(MakeDir(marker)))   # a bare pickle, not torch.save
    with pytest.raises(CheckpointError, match=REFUSED_PICKLE):
        read_state_dict(d / "evil.pkl")
    _no_marker(marker)


def _archive(path: Path, data_pkl: bytes, storages=None, code: str = "") -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/version", "3\n")
        if code:
            z.writestr("archive/code/__torch__.py", code)
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)


def test_restricted_unpickler_refuses_anything_but_tensors_and_module_attributes(tmp_path):
    marker = tmp_path / "MARKER"
    # an unknown global in data.pkl (what a crafted archive would carry instead of a module)
    _archive(tmp_path / "global.pt", pickle.dumps(MakeDir(marker), protocol=2))
    with pytest.raises(CheckpointError, match=r"refused to read the global posix\.mkdir"):
        read_state_dict(tmp_path / "global.pt")
    # BUILD on something that is not a TorchScript module (would call its __setstate__ in pickle's C unpickler)
    build = b"\x80\x02ccollections\nOrderedDict\n)R}b."
    _archive(tmp_path / "build.pt", build)
    with pytest.raises(CheckpointError, match="sets the state of a OrderedDict"):
        read_state_dict(tmp_path / "build.pt")
    # a module object whose state is not a dict (a custom __getstate__'s tuple)
    obj = b"\x80\x02c__torch__\nM\n)\x81K\x01\x85b."
    _archive(tmp_path / "tuple.pt", obj)
    with pytest.raises(CheckpointError, match=r"__torch__\.M whose state is not a dict"):
        read_state_dict(tmp_path / "tuple.pt")
    # a class whose code defines __setstate__, even with a dict state
    _archive(tmp_path / "setstate.pt", b"\x80\x02c__torch__\nM\n)\x81}b.",
             code="class M(Module):\n  __parameters__ = []\n  def __setstate__(self: __torch__.M, state: int) -> None:\n"
                  "    return None\n")
    with pytest.raises(CheckpointError, match=r"__torch__\.M\) with its own __setstate__"):
        read_state_dict(tmp_path / "setstate.pt")
    assert not marker.exists()


def test_storage_records_are_checked(tmp_path):
    write_torchscript_archive({"w": torch.arange(6, dtype=torch.float32)}, tmp_path / "ok.pt")
    assert torch.equal(read_state_dict(tmp_path / "ok.pt")["w"], torch.arange(6, dtype=torch.float32))
    with zipfile.ZipFile(tmp_path / "ok.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    storage = next(n for n in members if "/data/" in n and not n.endswith(".pkl"))
    members[storage] = members[storage][:8]  # 2 floats where the pickle says 6
    with zipfile.ZipFile(tmp_path / "short.pt", "w") as z:
        for n, raw in members.items():
            z.writestr(n, raw)
    with pytest.raises(CheckpointError, match=r"refused to read the storage .* of 8 bytes where 6 x torch.float32 need 24"):
        read_state_dict(tmp_path / "short.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pt"):
        read_state_dict(tmp_path / "cut.pt")


def _cli(argv, capsys):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_every_cli_entry_point_refuses_the_hostile_archive(files, tmp_path, capsys):
    """info, convert (source and --base), train --init, classify --checkpoint, eval --plain-base, SAM
    checkpoints: exit 2, one line naming the file, no marker."""
    d, marker = files
    ins = tmp_path / "imagenet_s"
    for sub in ("validation/n01440764", "validation-segmentation/n01440764"):
        (ins / sub).mkdir(parents=True)
    Image.open(d / "scene.png").save(ins / "validation/n01440764/a.JPEG")
    Image.fromarray(np.ones((40, 48, 3), np.uint8)).save(ins / "validation-segmentation/n01440764/a.png")
    from alphaclip_train.synthetic import MICRO_CFG, init_model_dir, write_shards
    init_model_dir(tmp_path / "micro", MICRO_CFG, seed=0)
    write_shards(tmp_path / "data", 4, per_shard=4, seed=1, size=32)
    for evil, pattern in ((d / "evil.pt", REFUSED_TS), (d / "evil.pth", REFUSED_PICKLE)):
        cases = [
            ["info", evil],
            ["convert", evil, "--arch", TINY, "-o", tmp_path / "c.safetensors"],
            ["convert", d / "alpha.pth", "--base", evil, "--arch", TINY, "-o", tmp_path / "c.safetensors"],
            ["train", tmp_path / "data", "-o", tmp_path / "run", "--model", f"local-dir:{tmp_path / 'micro'}",
             "--init", evil, "--steps", "1", "--batch-size", "2", "--no-progress"],
            ["classify", d / "scene.png", "--labels", "a", "b", "--model", TINY, "--checkpoint", evil],
            ["eval", "imagenet-s", ins, "--no-alpha", "--plain-base", evil, "--model", TINY, "--out", tmp_path / "ev"],
            ["data", "prepare-grounding", tmp_path / "data", "-o", tmp_path / "prep", "--sam-type", "tiny",
             "--sam-checkpoint", evil, "--device", "cpu", "--no-progress"],
        ]
        for argv in cases:
            rc, err = _cli(argv, capsys)
            assert rc == 2, (argv, err)
            assert len(err) == 1 and err[0].startswith("error: ") and str(evil) in err[0], (argv, err)
            assert __import__("re").search(pattern, err[0]), (argv, err)
            _no_marker(marker)
    assert not (tmp_path / "c.safetensors").exists()


def test_library_loaders_refuse_the_hostile_archive(files):
    """SAM, mmengine and both LLaVA loaders share the reader."""
    d, marker = files
    from alphaclip_integrations.llava.weights import load_alpha_visual, read_visual
    from alphaclip_integrations.mmengine import AlphaCLIPViT
    from alphaclip_train.sam import load_sam

    for evil, pattern in ((d / "evil.pt", REFUSED_TS), (d / "evil.pth", REFUSED_PICKLE)):
        for load in (lambda p: load_sam("tiny", p), lambda p: AlphaCLIPViT(TINY, checkpoint=str(p)),
                     lambda p: read_visual(p), lambda p: load_alpha_visual(p),
                     lambda p: read_visual(d / "alpha.pth", base=p)):
            with pytest.raises(CheckpointError, match=pattern):
                load(evil)
            _no_marker(marker)


def test_the_real_command_prints_one_line_and_no_traceback(files):
    """The installed entry point in a fresh process: exit code 2, stderr one line, no marker."""
    d, marker = files
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "alphaclip_core.cli", "info", str(d / "evil.pt")], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint: {d / 'evil.pt'}: refused to read"), proc.stderr
    assert "Traceback" not in proc.stderr
    _no_marker(marker)
