"""Bad inputs, hostile files, killed runs and full disks, tried the way a new user would (issue 11).

Every case runs the real ``alphaclip`` command in this process (``alphaclip_core.cli.main``), or a
library call a user makes, and is sorted into one outcome:

- ``clear``: the command ended with a non-zero exit code and a one-line ``error: ...`` (argparse's
  usage errors count: they name the flag), no traceback;
- ``handled``: the input is odd but usable and the result is right (a 16-bit PNG scaled to 8 bits, a
  torn log line tolerated, stale temp files cleaned);
- ``traceback``: a Python exception escaped (the console would show a traceback), or the library
  call raised something that is not a ValueError/TypeError with a message;
- ``silent``: the command succeeded although the input was bad, or the result is wrong;
- ``unsafe``: loading a file ran code (a marker file appeared);
- ``unclear``: non-zero exit without an ``error:`` line, an error line that is the library's message
  with "an unexpected error", or a failure where the input should have been handled.

The disk cases mount small tmpfs folders (a full one and a read-only one) and run only as root.

    python benchmarks/bad_inputs.py --label after          # writes benchmarks/results/bad_inputs_after.{json,md}
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import describe, machine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import MakeDir as _MakeDir, write_hostile_torchscript, write_torchscript_archive  # noqa: E402

TINY = "alpha-ViT-Tiny-8"


# ------------------------------------------------------------------------------------------------ hostile files
# ------------------------------------------------------------------------------------------------ fixtures
def _png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (CRC fixed up), pixel data of a 1x1 image."""
    import struct
    import zlib
    data = bytearray(_png_bytes(1, 1))
    ihdr = 8 + 8  # signature, length + type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:12 + 4 + 13])) & 0xFFFFFFFF
    data[12 + 4 + 13:12 + 4 + 13 + 4] = struct.pack(">I", crc)
    return bytes(data)


@dataclass
class Fixtures:
    root: Path
    marker: Path
    files: Dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return str(self.files[key])


def build_fixtures(root: Path) -> Fixtures:
    import open_clip

    import alphaclip_integrations.open_clip  # noqa: F401
    from alphaclip_core.checkpoints import open_clip_to_reference
    from alphaclip_train.schema import ShardWriter
    from alphaclip_train.synthetic import MICRO_CFG, init_model_dir, write_shards

    root.mkdir(parents=True, exist_ok=True)
    fx = Fixtures(root, root / "MARKER")
    f = fx.files
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    with torch.no_grad():
        model.visual.conv1_alpha.weight.normal_(0, 0.1)
    sd = model.state_dict()
    f["alpha"] = root / "alpha.pth"
    torch.save({k: v.clone() for k, v in open_clip_to_reference(sd).items()}, f["alpha"])
    base = {k: v.clone() for k, v in sd.items() if "conv1_alpha" not in k}
    f["base"] = root / "base.pt"
    torch.save(base, f["base"])
    f["base_ts"] = root / "base_ts.pt"
    write_torchscript_archive(base, f["base_ts"], parameters=True)
    f["whole"] = root / "whole.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, str(f["whole"]))
    other = open_clip.create_model("alpha-ViT-B-16")  # another architecture
    f["other_arch"] = root / "other_arch.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(f["other_arch"]))
    del other

    # hostile and broken weight files
    f["evil_ts"] = root / "evil_ts.pt"
    write_hostile_torchscript(f["evil_ts"], fx.marker)
    f["evil_pickle"] = root / "evil_pickle.pth"
    torch.save({"conv1.weight": torch.ones(1), "x": _MakeDir(str(fx.marker))}, f["evil_pickle"])
    f["evil_plain_pickle"] = root / "evil_plain.pkl"
    f["evil_plain_pickle"].write_bytes(pickle.dumps(_MakeDir(str(fx.marker))))
    raw = Path(f["alpha"]).read_bytes()
    f["trunc"] = root / "trunc.pth"
    f["trunc"].write_bytes(raw[: len(raw) // 2])
    f["empty"] = root / "empty.pth"
    f["empty"].write_bytes(b"")
    f["junk"] = root / "junk.pth"
    f["junk"].write_bytes(os.urandom(4096))
    f["bad_st"] = root / "bad.safetensors"
    f["bad_st"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    f["json_ckpt"] = root / "weights.json"
    f["json_ckpt"].write_text("{}")
    f["notensors"] = root / "notensors.pth"
    torch.save({"epoch": 3}, f["notensors"])
    f["folder"] = root / "a_folder"
    f["folder"].mkdir()
    f["zip_no_pkl"] = root / "archive.pt"
    with zipfile.ZipFile(f["zip_no_pkl"], "w") as z:
        z.writestr("archive/constants.pkl", b"junk")
    ts_raw = Path(f["base_ts"]).read_bytes()
    f["ts_trunc"] = root / "ts_trunc.pt"
    f["ts_trunc"].write_bytes(ts_raw[: len(ts_raw) * 2 // 3])

    # images
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "scene.png")
    f["scene"] = root / "scene.png"
    mask = np.zeros((60, 80), np.uint8)
    mask[10:40, 20:60] = 255
    Image.fromarray(mask).save(root / "mask.png")
    f["mask"] = root / "mask.png"
    f["not_image"] = root / "notes.png"
    f["not_image"].write_text("this is not an image\n")
    f["zero_bytes"] = root / "zero.png"
    f["zero_bytes"].write_bytes(b"")
    f["zero_size"] = root / "zero_size.png"
    f["zero_size"].write_bytes(_png_with_size(0, 0))
    png = Path(f["scene"]).read_bytes()
    f["trunc_png"] = root / "trunc.png"
    f["trunc_png"].write_bytes(png[: len(png) // 2])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, format="JPEG")
    f["trunc_jpg"] = root / "trunc.jpg"
    f["trunc_jpg"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    f["bomb"] = root / "bomb.png"
    f["bomb"].write_bytes(_png_with_size(20000, 20000))
    grad = (np.linspace(0, 65535, 80)[None, :].repeat(60, 0)).astype(np.uint16)
    Image.fromarray(grad).save(root / "i16.png")  # mode I;16
    f["i16"] = root / "i16.png"
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(root / "small_mask.png")
    f["small_mask"] = root / "small_mask.png"
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(root / "empty_mask.png")
    f["empty_mask"] = root / "empty_mask.png"
    f["text_features_obj"] = root / "text_obj.npy"
    np.save(f["text_features_obj"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    f["text_features_bad"] = root / "text_bad.npy"
    f["text_features_bad"].write_bytes(b"\x93NUMPY garbage")

    # training data
    init_model_dir(root / "micro", MICRO_CFG, seed=0)
    f["micro"] = root / "micro"
    write_shards(root / "data", 16, per_shard=8, seed=1, size=32)
    f["data"] = root / "data"
    rec = json.loads(json.dumps({"key": "k", "width": 32, "height": 32, "caption": "a scene",
                                 "regions": [{"phrase": "a thing", "box": [2, 2, 20, 20]}]}))
    (root / "corrupt").mkdir()
    with ShardWriter(root / "corrupt" / "bad-00000.tar") as w:
        for i in range(8):
            w.write(b"\xff\xd8\xff garbage" * 3, {**rec, "key": f"bad{i:03d}"})
    f["corrupt_shard"] = root / "corrupt" / "bad-00000.tar"
    (root / "missing").mkdir()
    with open(root / "missing" / "records.jsonl", "w") as fh:
        for i in range(8):
            fh.write(json.dumps({**rec, "key": f"m{i}", "image": f"nope/{i}.jpg"}) + "\n")
    f["missing_jsonl"] = root / "missing" / "records.jsonl"
    f["empty_jsonl"] = root / "empty.jsonl"
    f["empty_jsonl"].write_text("")
    f["txt_data"] = root / "data.txt"
    f["txt_data"].write_text("x")
    tar_raw = (root / "data" / "shard-00000.tar").read_bytes()
    (root / "truncshard").mkdir()
    (root / "truncshard" / "t.tar").write_bytes(tar_raw[: len(tar_raw) // 3])
    f["trunc_shard"] = root / "truncshard" / "t.tar"

    # a one-image ImageNet-S folder (so --plain-base is what fails)
    ins = root / "imagenet_s"
    for sub in ("validation/n01440764", "validation-segmentation/n01440764"):
        (ins / sub).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(ins / "validation/n01440764/a.JPEG")
    seg = np.zeros((40, 40, 3), np.uint8)
    seg[5:30, 5:30, 0] = 1
    Image.fromarray(seg).save(ins / "validation-segmentation/n01440764/a.png")
    f["imagenet_s"] = ins

    # REC data with a refused pickle
    refd = root / "refer" / "refcoco"
    refd.mkdir(parents=True)
    (refd / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    (refd / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 1, "x": _MakeDir(str(fx.marker))}]))
    f["refer"] = root / "refer"
    return fx


# ------------------------------------------------------------------------------------------------ running
@dataclass
class Case:
    group: str
    name: str
    run: Callable[[Fixtures, Path], Tuple[Optional[int], str, str, Optional[BaseException]]]
    check: Optional[Callable[[Fixtures, Path], bool]] = None  #: for inputs that should work: is the result right?
    needs_root: bool = False


def cli(*argv: str, env: Optional[Dict[str, str]] = None):
    """A case body: ``alphaclip ARGV`` in this process; returns (rc, stdout, stderr, escaped exception)."""
    def run(fx: Fixtures, work: Path):
        from alphaclip_core.cli import main
        args = [a.format(**{k: str(v) for k, v in fx.files.items()}, work=str(work), marker=str(fx.marker))
                for a in argv]
        out, err = io.StringIO(), io.StringIO()
        old_env = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        rc: Optional[int] = None
        exc: Optional[BaseException] = None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(args)
                except SystemExit as e:
                    if isinstance(e.code, str):
                        print(e.code, file=sys.stderr)
                        rc = 1
                    else:
                        rc = int(e.code or 0)
        except Exception as e:  # noqa: BLE001 - this is what the case measures
            exc = e
            err.write(traceback.format_exc())
        finally:
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return rc, out.getvalue(), err.getvalue(), exc
    return run


def lib(fn: Callable[[Fixtures, Path], Any]):
    """A case body: a library call; ValueError/TypeError with a message = a clear error."""
    def run(fx: Fixtures, work: Path):
        try:
            fn(fx, work)
        except (ValueError, TypeError, FileNotFoundError) as e:
            return 2, "", f"error: {e}", None
        except Exception as e:  # noqa: BLE001
            return None, "", traceback.format_exc(), e
        return 0, "", "", None
    return run


def classify(case: Case, fx: Fixtures, work: Path) -> Dict[str, Any]:
    if fx.marker.exists():
        shutil.rmtree(fx.marker) if fx.marker.is_dir() else fx.marker.unlink()
    rc, out, err, exc = case.run(fx, work)
    first = next((ln for ln in err.splitlines() if "error:" in ln), err.strip().splitlines()[-1] if err.strip() else "")
    if fx.marker.exists():
        outcome = "unsafe"
    elif exc is not None or "Traceback (most recent call last)" in err:
        outcome = "traceback"
    elif rc == 0:
        try:
            ok = case.check is not None and bool(case.check(fx, work))
        except Exception:  # noqa: BLE001 - a check that cannot run means the result is not right
            ok = False
        outcome = "handled" if ok else "silent"
    elif case.check is not None:
        outcome = "unclear"  # an input that should have been handled stopped the command
    elif "an unexpected error" in first:
        outcome = "unclear"  # the boundary caught it, but the message is the library's, not an explanation
    elif any(ln.startswith("error:") or ": error:" in ln for ln in err.splitlines()):
        outcome = "clear"
    else:
        outcome = "unclear"
    if exc is not None:
        first = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return {"group": case.group, "case": case.name, "outcome": outcome, "rc": rc, "message": first[:300]}


# ------------------------------------------------------------------------------------------------ the cases
MODEL = ("--model", TINY, "--checkpoint", "{alpha}", "--base", "{base}")


def _cases() -> List[Case]:
    c: List[Case] = []
    add = lambda g, n, r, **kw: c.append(Case(g, n, r, **kw))  # noqa: E731

    # --- images: classify, --mask, locate
    images = [("not an image", "not_image"), ("0 bytes", "zero_bytes"), ("0x0 pixels", "zero_size"),
              ("truncated PNG", "trunc_png"), ("truncated JPEG", "trunc_jpg"), ("decompression bomb", "bomb"),
              ("missing file", None), ("a folder", "folder")]
    for label, key in images:
        path = "{%s}" % key if key else "{work}/nope.png"
        add("images", f"classify: image {label}", cli("classify", path, "--labels", "a", "b",
                                                    "--overlay", "{work}/o.png", *MODEL))
        add("images", f"classify --mask: {label}", cli("classify", "{scene}", "--mask", path, "--labels", "a", "b",
                                                     "--overlay", "{work}/o.png", *MODEL))
        add("images", f"locate: image {label}", cli("locate", path, "a thing", "--box", "1,1,20,20",
                                                   "--overlay", "{work}/o.png", "--heatmap", "{work}/h.png", *MODEL))
    add("images", "classify --mask of another size", cli("classify", "{scene}", "--mask", "{small_mask}", "--labels",
                                                         "a", "b", "--overlay", "{work}/o.png", *MODEL))
    add("images", "classify --mask all zero", cli("classify", "{scene}", "--mask", "{empty_mask}", "--labels", "a", "b",
                                                  "--overlay", "{work}/o.png", *MODEL))
    add("images", "classify --box outside the image", cli("classify", "{scene}", "--box", "500,500,600,600",
                                                           "--labels", "a", "b", "--overlay", "{work}/o.png", *MODEL))
    add("images", "classify --box degenerate", cli("classify", "{scene}", "--box", "30,30,10,10", "--labels", "a", "b",
                                                   "--overlay", "{work}/o.png", *MODEL))
    add("images", "classify --box not numbers", cli("classify", "{scene}", "--box", "a,b,c,d", "--labels", "a",
                                                    *MODEL))
    add("images", "classify --top 0", cli("classify", "{scene}", "--labels", "a", "b", "--top", "0",
                                          "--overlay", "{work}/o.png", *MODEL))
    add("images", "classify --overlay into a missing folder", cli("classify", "{scene}", "--labels", "a", "b",
                                                                  "--overlay", "{work}/no/such/dir/o.png", *MODEL),
        check=lambda fx, w: (w / "no/such/dir/o.png").is_file())
    add("images", "classify --template without {}", cli("classify", "{scene}", "--labels", "a", "b", "--template",
                                                        "a photo", "--overlay", "{work}/o.png", *MODEL))

    def i16_check(fx: Fixtures, work: Path) -> bool:
        from alphaclip_core.alpha import open_image
        arr = np.asarray(open_image(fx["i16"]))
        return arr.max() == 255 and arr.min() == 0 and len(np.unique(arr[..., 0])) > 50

    add("images", "classify: 16-bit PNG (I;16)", cli("classify", "{i16}", "--labels", "a", "b",
                                                      "--overlay", "{work}/o.png", *MODEL), check=i16_check)

    def i16_prepare(fx: Fixtures, work: Path) -> None:
        from alphaclip_core.alpha import prepare
        img, _ = prepare(Image.open(fx["i16"]), size=32)
        if float(img.std()) < 0.1:  # a gradient must not come out as a flat (all-white) image
            raise RuntimeError("silent: the 16-bit image became flat")

    add("images", "prepare(16-bit PNG)", lib(i16_prepare), check=lambda fx, w: True)

    def decode_i16(fx: Fixtures, work: Path) -> None:
        from alphaclip_train.schema import decode_image
        arr = np.asarray(decode_image(Path(fx["i16"]).read_bytes()))
        if len(np.unique(arr)) < 50:
            raise RuntimeError("silent: the 16-bit training image became flat")

    add("images", "training decode of a 16-bit PNG", lib(decode_i16), check=lambda fx, w: True)
    add("images", "prepare(np.zeros((0, 0, 3)))",
        lib(lambda fx, w: __import__("alphaclip_core").prepare(np.zeros((0, 0, 3), np.uint8))))
    add("images", "prepare(torch.zeros(3, 0, 10))",
        lib(lambda fx, w: __import__("alphaclip_core").prepare(torch.zeros(3, 0, 10))))

    # --- alpha values
    def nan_alpha(value: float, hf: bool = False):
        def fn(fx: Fixtures, work: Path) -> None:
            import open_clip
            m = open_clip.create_model(TINY).eval()
            img = torch.zeros(1, 3, 64, 64)
            alpha = torch.full((1, 1, 64, 64), 1.9231)
            alpha[0, 0, 0, 0] = value
            if hf:
                from alphaclip_integrations.hf import convert_to_hf
                from alphaclip_integrations.hf.modeling_alpha_clip import AlphaCLIPVisionModel
                convert_to_hf(m, work / "hf")
                v = AlphaCLIPVisionModel.from_pretrained(str(work / "hf"))
                out = v(pixel_values=img, alpha_values=alpha).pooler_output
            else:
                out = m.encode_image(img, alpha)
            if not torch.isfinite(out).all():
                raise RuntimeError("silent: non-finite features")
        return fn

    for v in (float("nan"), float("inf"), float("-inf")):
        add("alpha", f"encode_image(alpha with {v})", lib(nan_alpha(v)))
    add("alpha", "HF alpha_values with nan", lib(nan_alpha(float("nan"), hf=True)))
    add("alpha", "normalize_alpha(nan)",
        lib(lambda fx, w: __import__("alphaclip_core").normalize_alpha(torch.tensor([0.5, float("nan")]))))
    add("alpha", "prepare(mask with nan)",
        lib(lambda fx, w: __import__("alphaclip_core").prepare(
            Image.new("RGB", (8, 8)), mask=np.where(np.eye(8) > 0, np.nan, 1.0).astype(np.float32), size=8)))
    add("alpha", "prepare(float image with nan)",
        lib(lambda fx, w: __import__("alphaclip_core").prepare(torch.full((3, 8, 8), float("nan")), size=8)))

    # --- models
    add("models", "--model unknown", cli("classify", "{scene}", "--labels", "a", "--model", "alpha-ViT-B-61",
                                         "--checkpoint", "{alpha}", "--base", "{base}"))
    add("models", "--model nonsense", cli("classify", "{scene}", "--labels", "a", "--model", "resnet-9000",
                                          "--checkpoint", "{alpha}"))
    add("models", "convert --arch unknown", cli("convert", "{alpha}", "--base", "{base}", "--arch", "alpha-ViT-L-41",
                                                "-o", "{work}/x.safetensors"))
    add("models", "train --model unknown", cli("train", "{data}", "-o", "{work}/run", "--model", "alpha-ViT-Tyni-8",
                                               "--steps", "1", "--no-progress"))
    add("models", "pretrained tag not downloaded", cli("classify", "{scene}", "--labels", "a", "--model",
                                                        "alpha-ViT-B-16", "--checkpoint", "grit1m"),
        )
    add("models", "pretrained tag unknown", cli("classify", "{scene}", "--labels", "a", "--model", "alpha-ViT-B-16",
                                                "--checkpoint", "grit9m"))
    add("models", "--checkpoint missing file", cli("classify", "{scene}", "--labels", "a", "--model", TINY,
                                                   "--checkpoint", "{work}/missing.pth"))
    add("models", "--checkpoint without --base (reference .pth)", cli("classify", "{scene}", "--labels", "a",
                                                                      "--model", TINY, "--checkpoint", "{alpha}"))
    add("models", "--checkpoint of another architecture", cli("classify", "{scene}", "--labels", "a", "--model", TINY,
                                                              "--checkpoint", "{other_arch}"))
    add("models", "--checkpoint is a plain CLIP", cli("classify", "{scene}", "--labels", "a", "--model", TINY,
                                                      "--checkpoint", "{base}"))
    add("models", "--checkpoint is a folder", cli("classify", "{scene}", "--labels", "a", "--model", TINY,
                                                  "--checkpoint", "{folder}"))
    add("models", "no --checkpoint", cli("classify", "{scene}", "--labels", "a", "--model", TINY))
    add("models", "--model local-dir: missing folder", cli("classify", "{scene}", "--labels", "a", "--model",
                                                           "local-dir:{work}/nowhere"))
    add("models", "--model local-dir: empty folder", cli("classify", "{scene}", "--labels", "a", "--model",
                                                         "local-dir:{folder}"))
    add("models", "--base missing", cli("classify", "{scene}", "--labels", "a", "--model", TINY, "--checkpoint",
                                        "{alpha}", "--base", "{work}/nobase.pt"))
    add("models", "--base is the alpha file", cli("classify", "{scene}", "--labels", "a", "--model", TINY,
                                                  "--checkpoint", "{alpha}", "--base", "{alpha}"))

    # --- devices
    for dev in ("cuda", "cuda:3", "banana", "mps"):
        add("devices", f"classify --device {dev}", cli("classify", "{scene}", "--labels", "a", *MODEL, "--device", dev,
                                                       "--overlay", "{work}/o.png"))
    add("devices", "locate --device cuda", cli("locate", "{scene}", "a", "--box", "1,1,9,9", *MODEL, "--device", "cuda",
                                               "--overlay", "{work}/o.png", "--heatmap", "{work}/h.png"))
    add("devices", "train --device cuda", cli("train", "{data}", "-o", "{work}/run", "--model", "local-dir:{micro}",
                                              "--steps", "1", "--batch-size", "4", "--device", "cuda",
                                              "--no-progress"))
    add("devices", "train --device banana", cli("train", "{data}", "-o", "{work}/run", "--model", "local-dir:{micro}",
                                                "--steps", "1", "--batch-size", "4", "--device", "banana",
                                                "--no-progress"))
    add("devices", "data prepare-grounding --device cuda",
        cli("data", "prepare-grounding", "{data}", "-o", "{work}/prep", "--sam-type", "tiny", "--device", "cuda",
            "--no-progress"))
    add("devices", "pseudolabel --device cuda",
        cli("pseudolabel", "--dataset", "{json_ckpt}", "--image-root", "{work}", "--candidates", "{json_ckpt}",
            "--out-dir", "{work}/pl", *MODEL, "--device", "cuda"))

    # --- checkpoints: every reader, hostile and broken files
    readers = {
        "info": lambda p: cli("info", p),
        "convert source": lambda p: cli("convert", p, "--arch", TINY, "-o", "{work}/c.safetensors"),
        "convert --base": lambda p: cli("convert", "{alpha}", "--base", p, "--arch", TINY, "-o", "{work}/c.safetensors"),
        "train --init": lambda p: cli("train", "{data}", "-o", "{work}/run", "--model", "local-dir:{micro}", "--init", p,
                                      "--steps", "1", "--batch-size", "4", "--no-progress"),
        "--checkpoint": lambda p: cli("classify", "{scene}", "--labels", "a", "--model", TINY, "--checkpoint", p,
                                      "--overlay", "{work}/o.png"),
        "--plain-base": lambda p: cli("eval", "imagenet-s", "{imagenet_s}", "--no-alpha", "--plain-base", p, "--model",
                                      TINY, "--out", "{work}/ev"),
        "SAM checkpoint": lambda p: cli("data", "prepare-grounding", "{data}", "-o", "{work}/prep", "--sam-type", "tiny",
                                        "--sam-checkpoint", p, "--device", "cpu", "--no-progress"),
    }
    bad_files = [("hostile TorchScript", "evil_ts"), ("hostile pickle", "evil_pickle"), ("truncated", "trunc"),
                 ("0 bytes", "empty"), ("random bytes", "junk")]
    for reader, make in readers.items():
        for label, key in bad_files:
            add("checkpoints", f"{reader}: {label}", make("{%s}" % key))
    for label, key in (("broken safetensors", "bad_st"), ("a JSON file", "json_ckpt"), ("no tensors", "notensors"),
                       ("a folder", "folder"), ("zip with constants.pkl only", "zip_no_pkl"),
                       ("truncated TorchScript", "ts_trunc"), ("plain pickle with __reduce__", "evil_plain_pickle")):
        add("checkpoints", f"info: {label}", cli("info", "{%s}" % key))

    def mm(fx: Fixtures, work: Path) -> None:
        from alphaclip_integrations.mmengine import AlphaCLIPViT
        AlphaCLIPViT(TINY, checkpoint=fx["evil_ts"])

    def llava(fx: Fixtures, work: Path) -> None:
        from alphaclip_integrations.llava.weights import read_visual
        read_visual(fx["evil_ts"])

    add("checkpoints", "mmengine AlphaCLIPViT(checkpoint=hostile TorchScript)", lib(mm))
    add("checkpoints", "LLaVA tower alpha-clip:<hostile TorchScript>", lib(llava))

    # --- resume states (what kills leave behind), training data
    def run_then(mutate: Callable[[Path], None], *extra: str, check=None, group: str = "resume", name: str = ""):
        base_args = ("train", "{data}", "-o", "{work}/run", "--model", "local-dir:{micro}", "--steps", "2",
                     "--batch-size", "4", "--save-every", "1", "--log-every", "1", "--no-progress", "--threads", "1")

        def run(fx: Fixtures, work: Path):
            first = cli(*base_args)(fx, work)
            if first[0] != 0:
                return first
            mutate(work / "run")
            return cli(*base_args[:7], "4", *base_args[8:], *extra)(fx, work)
        add(group, name, run, check=check)

    def truncate(run: Path) -> None:
        p = run / "checkpoints" / "latest.pt"
        p.write_bytes(p.read_bytes()[:1000])

    def other_arch(run: Path) -> None:
        import open_clip
        m = open_clip.create_model(TINY)
        state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
        state["model"] = m.state_dict()
        torch.save(state, run / "checkpoints" / "latest.pt")

    def hostile_latest(run: Path, key: str):
        def mutate(r: Path) -> None:
            shutil.copy(_FX.files[key], r / "checkpoints" / "latest.pt")
        return mutate

    def torn_log(run: Path) -> None:
        with open(run / "log.jsonl", "a") as fh:
            fh.write('{"step": 3, "loss": 1.2')

    def stale_tmp(run: Path) -> None:
        for i in range(3):
            (run / "checkpoints" / f".latest.pt.abc{i}.tmp").write_bytes(b"\0" * 1000)

    run_then(truncate, name="resume: truncated latest.pt")
    run_then(other_arch, name="resume: latest.pt of another architecture")
    run_then(hostile_latest(None, "evil_ts"), name="resume: hostile TorchScript latest.pt")
    run_then(hostile_latest(None, "evil_pickle"), name="resume: hostile pickle latest.pt")
    run_then(lambda r: (r / "checkpoints" / "latest.pt").write_bytes(b""), name="resume: 0-byte latest.pt")
    run_then(lambda r: torch.save({"model": {}}, r / "checkpoints" / "latest.pt"),
             name="resume: latest.pt that is not a training state")
    run_then(torn_log, name="resume: torn last line of log.jsonl",
             check=lambda fx, w: all(json.loads(ln) for ln in (w / "run" / "log.jsonl").read_text().splitlines()))
    run_then(stale_tmp, name="resume: stale .latest.pt.*.tmp files after kills",
             check=lambda fx, w: not list((w / "run" / "checkpoints").glob(".latest.pt.*.tmp")))

    def counters_kept(fx: Fixtures, w: Path) -> bool:
        rows = [json.loads(ln) for ln in (w / "run" / "log.jsonl").read_text().splitlines()]
        return rows[-1]["step"] == 4 and rows[-1]["samples"] == 16  # 4 steps of 4 samples, not 2 of them

    run_then(lambda r: None, name="resume: samples/skipped counters continue", check=counters_kept)

    def tmp_mode(fx: Fixtures, w: Path) -> bool:
        return (os.stat(w / "run" / "checkpoints" / "latest.pt").st_mode & 0o777) == (0o666 & ~_umask())

    run_then(lambda r: None, name="atomic writes honour the umask", check=tmp_mode)

    tr = ("-o", "{work}/run", "--model", "local-dir:{micro}", "--steps", "3", "--batch-size", "4", "--no-progress",
          "--threads", "1")
    add("data", "train: JSONL whose images are all missing", cli("train", "{missing_jsonl}", *tr))
    add("data", "train: all-corrupt shard, --shuffle-buffer 1 (mixed with good data)",
        cli("train", "{data}", "{corrupt_shard}", *tr[:5], "12", *tr[6:], "--shuffle-buffer", "1", "--log-every", "1"),
        check=lambda fx, w: (w / "run" / "final" / "visual.pth").is_file())
    add("data", "train: only an all-corrupt shard", cli("train", "{corrupt_shard}", *tr, "--shuffle-buffer", "1"))
    add("data", "train: empty JSONL", cli("train", "{empty_jsonl}", *tr))
    add("data", "train: data path missing", cli("train", "{work}/nodata", *tr))
    add("data", "train: data of another kind (.txt)", cli("train", "{txt_data}", *tr))
    add("data", "train: truncated shard (its readable samples are used, the rest counted)",
        cli("train", "{trunc_shard}", *tr, "--log-every", "1"),
        check=lambda fx, w: json.loads((w / "run" / "log.jsonl").read_text().splitlines()[-1])["skipped"] > 0)
    add("data", "train --batch-size 0", cli("train", "{data}", *tr[:7], "0", *tr[8:]))
    add("data", "train --steps -1", cli("train", "{data}", *tr[:5], "-1", *tr[6:]))
    def check_report(fx: Fixtures, work: Path):
        rc, out, err, exc = cli("data", "check", "{trunc_shard}")(fx, work)
        # `data check` reports problems on stdout and exits 1 when it found some: that is its answer
        return (0 if rc == 1 and "problems 1" in out else rc), out, err, exc

    add("data", "data check: truncated shard (reports it, exit 1)", check_report, check=lambda fx, w: True)
    add("data", "data show: unknown key", cli("data", "show", "{data}/shard-00000.tar", "nokey", "-o", "{work}/s.png"))
    add("data", "data show: missing shard", cli("data", "show", "{work}/none.tar", "k", "-o", "{work}/s.png"))

    # --- eval inputs
    add("eval", "eval rec: refused (hostile) refs pickle", cli("eval", "rec", "{refer}", "--datasets", "refcoco",
                                                               *MODEL, "--out", "{work}/ev"))
    add("eval", "pseudolabel --text-features object .npy",
        cli("pseudolabel", "--dataset", "{json_ckpt}", "--image-root", "{work}", "--candidates", "{json_ckpt}",
            "--out-dir", "{work}/pl", *MODEL, "--text-features", "{text_features_obj}"))
    add("eval", "pseudolabel --text-features not a .npy",
        cli("pseudolabel", "--dataset", "{json_ckpt}", "--image-root", "{work}", "--candidates", "{json_ckpt}",
            "--out-dir", "{work}/pl", *MODEL, "--text-features", "{text_features_bad}"))
    add("eval", "pseudolabel --dataset missing",
        cli("pseudolabel", "--dataset", "{work}/none.json", "--image-root", "{work}", "--candidates", "{json_ckpt}",
            "--out-dir", "{work}/pl", *MODEL))
    add("eval", "eval imagenet-s: missing root", cli("eval", "imagenet-s", "{work}/nothing", *MODEL, "--out",
                                                     "{work}/ev"))
    add("eval", "locate: no regions and no SAM", cli("locate", "{scene}", "a thing", *MODEL))
    add("eval", "info on a folder", cli("info", "{folder}"))

    # --- disks (root only: tmpfs mounts)
    for to in ("open_clip", "reference", "local-dir", "hf"):
        name = "x.safetensors" if to == "open_clip" else ("x.pth" if to == "reference" else "x_dir")
        add("disks", f"convert --to {to} into a full disk",
            cli("convert", "{alpha}", "--base", "{base}", "--arch", TINY, "--to", to, "-o", "{work}/full/" + name),
            needs_root=True)
        add("disks", f"convert --to {to} into a read-only folder",
            cli("convert", "{alpha}", "--base", "{base}", "--arch", TINY, "--to", to, "-o", "{work}/ro/" + name),
            needs_root=True)
    add("disks", "train -o on a full disk", cli("train", "{data}", "-o", "{work}/full/run", *tr[2:]), needs_root=True)
    add("disks", "train -o on a read-only folder", cli("train", "{data}", "-o", "{work}/ro/run", *tr[2:]),
        needs_root=True)
    add("disks", "convert --to hf into a full disk leaves no half folder",
        cli("convert", "{alpha}", "--base", "{base}", "--arch", TINY, "--to", "hf", "-o", "{work}/full/hfdir"),
        needs_root=True)
    return c


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


_FX: Fixtures


def main(argv: Optional[Sequence[str]] = None) -> int:
    global _FX
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="after", help="results file suffix: bad_inputs_<label>.{json,md}")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("-k", help="only cases whose name contains this")
    p.add_argument("--commit", help="the commit of the code under test (default: this checkout's HEAD); to survey "
                                    "an older version put its packages first on PYTHONPATH")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import logging
    logging.disable(logging.WARNING)
    os.environ.setdefault("ALPHACLIP_CACHE", tempfile.mkdtemp())
    root = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    is_root = os.geteuid() == 0
    mounts: List[Path] = []
    try:
        _FX = build_fixtures(root / "fx")
        rows = []
        for case in _cases():
            if args.k and args.k not in case.name:
                continue
            work = root / f"w{len(rows)}"
            work.mkdir()
            if case.needs_root:
                if not is_root:
                    continue
                for name, opts in (("full", "size=96k"), ("ro", "ro,size=64k")):
                    (work / name).mkdir()
                    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(work / name)], check=True)
                    mounts.append(work / name)
            row = classify(case, _FX, work)
            if case.name.endswith("leaves no half folder") and row["outcome"] == "clear" and (work / "full" / "hfdir").exists():
                row["outcome"] = "silent"
                row["message"] += " (a half-written folder was left)"
            rows.append(row)
            print(f"{row['outcome']:<9} {row['group']:<12} {row['case']:<60} {row['message'][:110]}", flush=True)
    finally:
        for m in mounts:
            subprocess.run(["umount", str(m)], check=False)
        shutil.rmtree(root, ignore_errors=True)
    totals = {k: sum(r["outcome"] == k for r in rows) for k in
              ("clear", "handled", "traceback", "silent", "unsafe", "unclear")}
    info = machine()
    payload = {"label": args.label, "cases": len(rows), "totals": totals, "rows": rows, "machine": info,
               "commit": args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                       text=True, cwd=Path(__file__).parent).stdout.strip(),
               "code": str(Path(__import__("alphaclip_core").__file__).parent)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bad_inputs_{args.label}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [f"# Bad inputs ({args.label}, commit {payload['commit']})", "",
          f"{len(rows)} bad inputs tried: " + ", ".join(f"{v} {k}" for k, v in totals.items()), "",
          f"Machine: {describe(info)}.", "", "| group | case | outcome | first line |", "|---|---|---|---|"]
    md += [f"| {r['group']} | {r['case']} | {r['outcome']} | {r['message'].replace('|', '/')[:160]} |" for r in rows]
    (out / f"bad_inputs_{args.label}.md").write_text("\n".join(md) + "\n")
    print(json.dumps(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
