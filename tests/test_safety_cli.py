"""One error boundary for the `alphaclip` command (issue 11 §3): every subcommand ends bad input with ONE
line ``error: <what>: <why>`` on stderr, exit code 2 for bad input and 1 for a run that could not go on;
``--debug`` / ``ALPHACLIP_DEBUG=1`` add the traceback. Each case runs the real ``main(argv)``."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import alphaclip_integrations.open_clip  # noqa: F401  (registers the tiny config)
from alphaclip_core import cli as cli_module
from alphaclip_core.cli import main
from conftest import MakeDir, openai_state_dict, reference_state_dict

TINY = "alpha-ViT-Tiny-8"


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says ``width x height`` (CRC fixed): a decompression bomb's shape, or 0x0."""
    import io
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_safety")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    torch.save(reference_state_dict(model), d / "alpha.pth")
    torch.save(openai_state_dict(model), d / "base.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "scene.png")
    png = (d / "scene.png").read_bytes()
    (d / "notes.png").write_text("not an image\n")
    (d / "empty.png").write_bytes(b"")
    (d / "zero.png").write_bytes(_png_claiming(0, 0))
    (d / "trunc.png").write_bytes(png[: len(png) // 2])
    (d / "bomb.png").write_bytes(_png_claiming(20000, 20000))
    (d / "folder").mkdir()
    return d


def run(argv, capsys, env=None, monkeypatch=None):
    """``alphaclip ARGV`` in this process: (exit code, stderr lines)."""
    if env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    # progress bars (tqdm, e.g. transformers writing shards) are not messages
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "%|" not in ln]
    return rc, err


def assert_error(rc, err, code: int, pattern: str) -> str:
    """Exit ``code``, exactly one stderr line ``error: ...`` matching ``pattern``, no traceback."""
    assert not any("Traceback" in ln for ln in err), err
    assert rc == code, (rc, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(pattern, err[0]), err[0]
    return err[0]


MODEL = ["--model", TINY]
CKPT = ["--checkpoint", "{d}/alpha.pth", "--base", "{d}/base.pt"]
IMAGES = {
    "notes.png": r"notes\.png: not an image PIL can read",
    "empty.png": r"empty\.png: the file is empty \(0 bytes\)",
    "zero.png": r"zero\.png: not an image PIL can read \(an unknown format, or a broken header such as a 0x0 size\)",
    "trunc.png": r"trunc\.png: the image does not decode \(truncated or corrupt\?\): OSError: image file is truncated",
    "bomb.png": r"bomb\.png: Image size \(400000000 pixels\) exceeds limit.*set ALPHACLIP_MAX_IMAGE_PIXELS to a larger",
    "folder": r"folder is a folder; expected an image file",
    "missing.png": r"no such file: .*missing\.png",
}


@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize("where", ["classify", "classify --mask", "locate"])
def test_bad_images(fx, capsys, name, where):
    image = fx / name
    if where == "classify":
        argv, arg = ["classify", image, "--labels", "a", "b"], "image"
    elif where == "classify --mask":
        argv, arg = ["classify", fx / "scene.png", "--mask", image, "--labels", "a", "b"], "--mask"
    else:
        argv, arg = ["locate", image, "a thing", "--box", "1,1,9,9"], "image"
    rc, err = run(argv + MODEL + [a.format(d=fx) for a in CKPT], capsys)
    assert_error(rc, err, 2, rf"^error: {re.escape(arg)}: .*{IMAGES[name]}")


def test_large_images_are_allowed_on_request(fx, capsys, monkeypatch):
    """ALPHACLIP_MAX_IMAGE_PIXELS lifts PIL's bomb guard (0 = no limit): the header check passes and the
    1x1 payload then fails to decode; a bad value is named."""
    argv = ["classify", fx / "bomb.png", "--labels", "a"] + MODEL + [a.format(d=fx) for a in CKPT]
    before = Image.MAX_IMAGE_PIXELS
    try:
        rc, err = run(argv, capsys, {"ALPHACLIP_MAX_IMAGE_PIXELS": "0"}, monkeypatch)
        assert_error(rc, err, 2, r"bomb\.png: the image does not decode")
        rc, err = run(argv, capsys, {"ALPHACLIP_MAX_IMAGE_PIXELS": "lots"}, monkeypatch)
        assert_error(rc, err, 2, r"^error: ALPHACLIP_MAX_IMAGE_PIXELS: expected a whole number of pixels")
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_unknown_model_names_suggest_the_closest(fx, capsys, tmp_path):
    rc, err = run(["classify", fx / "scene.png", "--labels", "a", "--model", "alpha-ViT-B-61", "--checkpoint", "x"],
                  capsys)
    line = assert_error(rc, err, 2, r"^error: --model: unknown model 'alpha-ViT-B-61'; did you mean alpha-ViT-B-16")
    assert len(line) < 400 and "coca" not in line  # a few suggestions, not open_clip's 200 names
    rc, err = run(["convert", fx / "alpha.pth", "--base", fx / "base.pt", "--arch", "alpha-ViT-Tyni-8", "-o",
                   tmp_path / "x.safetensors"], capsys)
    assert_error(rc, err, 2, r"^error: --arch: unknown model 'alpha-ViT-Tyni-8'; did you mean alpha-ViT-Tiny-8")
    rc, err = run(["train", fx / "scene.png", "-o", tmp_path / "run", "--model", "alpha-ViT-L14"], capsys)
    assert_error(rc, err, 2, r"^error: model: unknown model 'alpha-ViT-L14'; did you mean alpha-ViT-L-14")
    rc, err = run(["classify", fx / "scene.png", "--labels", "a", "--model", f"local-dir:{tmp_path / 'nowhere'}"],
                  capsys)
    assert_error(rc, err, 2, r"^error: --model: local-dir:.*nowhere: expected a folder holding open_clip_config\.json")


def test_checkpoint_and_tag_errors(fx, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHACLIP_CACHE", str(tmp_path / "cache"))
    base = ["classify", fx / "scene.png", "--labels", "a", "--model", "alpha-ViT-B-16"]
    rc, err = run(base + ["--checkpoint", "grit1m"], capsys)
    line = assert_error(rc, err, 2, r"^error: --checkpoint: pretrained tag 'grit1m' of alpha-ViT-B-16 needs .*cache/"
                                    r"alpha-ViT-B-16-grit1m\.safetensors, which does not exist")
    assert "alphaclip convert clip_b16_grit1m_fultune_8xe.pth --base ViT-B-16.pt" in line  # still says how
    rc, err = run(base + ["--checkpoint", "grit9m"], capsys)
    assert_error(rc, err, 2, r"'grit9m' is neither a file nor a pretrained tag of alpha-ViT-B-16 \(its tags: grit1m")
    rc, err = run(base + ["--checkpoint", tmp_path / "missing.pth"], capsys)
    assert_error(rc, err, 2, r"^error: --checkpoint: no such file: .*missing\.pth")
    rc, err = run(base + ["--checkpoint", fx / "folder"], capsys)
    assert_error(rc, err, 2, r"^error: --checkpoint: .*folder is a folder; expected a weights file")
    rc, err = run(["classify", fx / "scene.png", "--labels", "a"] + MODEL, capsys)
    assert_error(rc, err, 2, r"^error: --checkpoint: required")


def test_devices_this_machine_does_not_have(fx, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    model = MODEL + [a.format(d=fx) for a in CKPT]
    for argv in (["classify", fx / "scene.png", "--labels", "a"] + model,
                 ["locate", fx / "scene.png", "a", "--box", "1,1,9,9"] + model,
                 ["demo", "--overlay", tmp_path / "d.png"],
                 ["data", "prepare-grounding", fx, "-o", tmp_path / "p", "--sam-type", "tiny"]):
        rc, err = run(argv + ["--device", "cuda"], capsys)
        assert_error(rc, err, 2, r"^error: --device: cuda: this machine has no usable CUDA GPU .*use --device cpu")
    rc, err = run(["train", fx, "-o", tmp_path / "run", "--device", "cuda:1"], capsys)
    assert_error(rc, err, 2, r"^error: device: cuda:1: this machine has no usable CUDA GPU")
    rc, err = run(["classify", fx / "scene.png", "--labels", "a", "--device", "banana"] + model, capsys)
    assert_error(rc, err, 2, r"^error: --device: 'banana' is not a torch device")


def test_info_on_folders(fx, capsys, tmp_path):
    rc, err = run(["info", fx / "folder"], capsys)
    assert_error(rc, err, 2, r"^error: checkpoint: .*folder is a folder without a weights file; expected a weights "
                             r"file or a model folder holding one of \['open_clip_model\.safetensors'")
    # a model folder is described by its weights file
    import alphaclip_integrations.open_clip as aoc
    aoc.save_pretrained(open_clip.create_model(TINY), tmp_path / "model")
    assert main(["info", str(tmp_path / "model"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"].endswith("open_clip_model.safetensors") and info["format"] == "open_clip-alpha"
    assert info["container"] == "safetensors"


def test_eval_and_pseudolabel_inputs(fx, capsys, tmp_path):
    marker = tmp_path / "MARKER"
    refer = tmp_path / "refer" / "refcoco"
    refer.mkdir(parents=True)
    (refer / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    (refer / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 1, "x": MakeDir(marker)}]))
    model = MODEL + [a.format(d=fx) for a in CKPT]
    rc, err = run(["eval", "rec", tmp_path / "refer", "--datasets", "refcoco", "--out", tmp_path / "ev"] + model, capsys)
    assert_error(rc, err, 2, r"^error: refs .*refs\(unc\)\.p: refused to load the global '(posix|os|nt)\.mkdir'")
    assert not marker.exists()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "d.json").write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "cat"}]}))
    argv = ["pseudolabel", "--dataset", tmp_path / "d.json", "--image-root", tmp_path, "--candidates",
            tmp_path / "d.json", "--out-dir", tmp_path / "pl"] + model
    rc, err = run(argv + ["--text-features", tmp_path / "obj.npy"], capsys)
    assert_error(rc, err, 2, r"^error: --text-features: .*obj\.npy is not a plain numeric \.npy array \(Object arrays "
                             r"cannot be loaded when allow_pickle=False\)")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY junk")
    rc, err = run(argv + ["--text-features", tmp_path / "bad.npy"], capsys)
    assert_error(rc, err, 2, r"^error: --text-features: .*bad\.npy is not a plain numeric \.npy array")
    rc, err = run(["locate", fx / "scene.png", "a thing"] + model, capsys)  # a SystemExit("error: ...") inside
    assert_error(rc, err, 2, r"^error: give --box/--mask regions or --sam-checkpoint")


def test_usage_errors_stay_argparse_errors(fx, capsys):
    rc, err = run(["classify", fx / "scene.png", "--labels", "a", "--top", "0"], capsys)
    assert rc == 2 and err[-1] == "alphaclip classify: error: argument --top: expected a whole number >= 1, got 0"
    rc, err = run(["classify", fx / "scene.png", "--labels", "a", "--box", "1,2,3"], capsys)
    assert rc == 2 and err[-1].endswith("--box: expected 4 numbers x0,y0,x1,y1, got '1,2,3'")


def _fail_write(exc: BaseException):
    def write(*args, **kwargs):
        path = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, (str, os.PathLike))
                     and str(a).endswith(".tmp")), None)
        if path is not None:
            Path(path).write_bytes(b"\0" * 100)   # a partial file, as a real full disk leaves
        raise exc
    return write


@pytest.mark.parametrize("to", ["open_clip", "reference", "local-dir", "hf"])
def test_full_disk_is_said_in_words_and_leaves_nothing_half_written(fx, capsys, tmp_path, monkeypatch, to):
    """torch.save and safetensors raise their own errors on a full disk (torch: 'unexpected pos'); the
    command says 'no space left on the device' (exit 1) and no partial file or folder is left."""
    import safetensors.torch
    from safetensors import SafetensorError

    full = _fail_write(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    real = safetensors.torch.save_file
    if to == "hf":  # a first real save imports transformers' writers, which keep their own reference
        from alphaclip_integrations.hf import convert_to_hf
        convert_to_hf(open_clip.create_model(TINY), tmp_path / "warm")
        shutil.rmtree(tmp_path / "warm")
    for module in list(sys.modules.values()):  # every reference to safetensors' writer
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if value is real:
                monkeypatch.setattr(module, name, full)
    monkeypatch.setattr(torch, "save", _fail_write(OSError(errno.ENOSPC, "No space left on device")))
    out = tmp_path / "out" / ("x.pth" if to == "reference" else "x.safetensors" if to == "open_clip" else "x")
    rc, err = run(["convert", fx / "alpha.pth", "--base", fx / "base.pt", "--arch", TINY, "--to", to, "-o", out],
                  capsys)
    assert_error(rc, err, 1, rf"^error: {re.escape(str(out))}: no space left on the device$")
    assert os.listdir(out.parent) == []


def test_read_only_output(fx, capsys, tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(kwargs.get("dir", ""), ".x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    for to, name in (("open_clip", "x.safetensors"), ("hf", "hfdir")):
        rc, err = run(["convert", fx / "alpha.pth", "--base", fx / "base.pt", "--arch", TINY, "--to", to,
                       "-o", tmp_path / name], capsys)
        assert_error(rc, err, 1, rf"^error: {re.escape(str(tmp_path / name))}: the file system is read-only$")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_and_read_only_disks_for_real(fx, capsys, tmp_path):
    """The same on real file systems: a 96 KiB tmpfs fills up, a read-only tmpfs refuses (root only)."""
    mounts = []
    try:
        for name, opts in (("full", "size=96k"), ("ro", "ro,size=64k")):
            (tmp_path / name).mkdir()
            if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(tmp_path / name)]).returncode:
                pytest.skip("cannot mount tmpfs here")
            mounts.append(tmp_path / name)
        for to, name in (("reference", "x.pth"), ("open_clip", "x.safetensors"), ("hf", "hfdir")):
            rc, err = run(["convert", fx / "alpha.pth", "--base", fx / "base.pt", "--arch", TINY, "--to", to,
                           "-o", tmp_path / "full" / name], capsys)
            assert_error(rc, err, 1, rf"{re.escape(name)}: no space left on the device$")
            assert os.listdir(tmp_path / "full") == []
            rc, err = run(["convert", fx / "alpha.pth", "--base", fx / "base.pt", "--arch", TINY, "--to", to,
                           "-o", tmp_path / "ro" / name], capsys)
            assert_error(rc, err, 1, rf"{re.escape(name)}: the file system is read-only$")
    finally:
        for m in mounts:
            subprocess.run(["umount", str(m)])


def test_debug_shows_the_traceback_and_unexpected_errors_say_so(fx, capsys, monkeypatch):
    argv = ["info", fx / "notes.png"]
    rc, err = run(argv, capsys)
    assert_error(rc, err, 2, r"notes\.png is not a readable PyTorch checkpoint")
    for how in ("flag", "env"):
        if how == "flag":
            rc, err = run(["--debug"] + argv, capsys)
        else:
            rc, err = run(argv, capsys, {"ALPHACLIP_DEBUG": "1"}, monkeypatch)
            monkeypatch.delenv("ALPHACLIP_DEBUG")
        assert rc == 2 and err[0] == "Traceback (most recent call last):" and err[-1].startswith("error: checkpoint:")
    rc, err = run(argv + ["--debug"], capsys)  # anywhere on the line
    assert rc == 2 and err[0].startswith("Traceback")

    def boom(args):
        return 1 // 0

    monkeypatch.setattr(cli_module, "_cmd_info", boom)
    rc, err = run(argv, capsys)
    assert_error(rc, err, 1, r"^error: ZeroDivisionError: integer division or modulo by zero \(an unexpected error: "
                             r"run again with --debug")
