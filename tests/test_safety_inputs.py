"""No silent wrong results (issue 11 §4) and output hygiene (§5) at the library level: NaN/inf alpha
rejected, 16-bit images scaled instead of turned white, zero-size images named, folders written
atomically; plus the error vocabulary the command line maps to exit codes."""
from __future__ import annotations

import errno
import io
import os
import pickle

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core import prepare
from alphaclip_core.alpha import decode_image_bytes, open_image, to_8bit
from alphaclip_core.checkpoints import CheckpointError, atomic_folder
from alphaclip_core.errors import InputError, RunError, closest, describe_error

TINY = "alpha-ViT-Tiny-8"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_alpha_is_rejected(bad):
    model = open_clip.create_model(TINY).eval()
    alpha = torch.full((2, 1, 64, 64), 1.9231)
    alpha[1, 0, 5, 7] = bad
    want = "alpha: holds NaN values" if bad != bad else r"alpha: values must lie in \[-1\.9231, 1\.9231\]"
    with pytest.raises(ValueError, match=want):
        model.encode_image(torch.zeros(2, 3, 64, 64), alpha)


def test_non_finite_alpha_values_are_rejected_by_the_transformers_model(tmp_path):
    from alphaclip_integrations.hf import convert_to_hf
    from alphaclip_integrations.hf.modeling_alpha_clip import AlphaCLIPVisionModel

    convert_to_hf(open_clip.create_model(TINY).eval(), tmp_path / "hf")
    vision = AlphaCLIPVisionModel.from_pretrained(str(tmp_path / "hf")).eval()
    for bad in (float("nan"), float("inf")):
        alpha = torch.full((1, 1, 64, 64), -1.9231)
        alpha[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"alpha_values: values must lie in \[-1\.9231, 1\.9231\].*got \[.*(nan|inf)"):
            vision(pixel_values=torch.zeros(1, 3, 64, 64), alpha_values=alpha)


def _i16_gradient() -> Image.Image:
    grad = np.linspace(0, 65535, 64).round().astype(np.uint16)[None, :].repeat(8, 0)
    im = Image.fromarray(grad)
    assert im.mode == "I;16"
    return im


def test_16_bit_images_are_scaled_not_turned_white(tmp_path):
    im = _i16_gradient()
    assert (np.asarray(im.convert("RGB")) == 255).mean() > 0.95  # what PIL alone does: (almost) all white
    rgb = np.asarray(to_8bit(im)).astype(int)
    want = np.rint(np.asarray(im, dtype=np.float64) / 257).astype(int)
    assert rgb.shape == (8, 64, 3) and np.array_equal(rgb[..., 0], want) and np.array_equal(rgb[..., 2], want)
    im.save(tmp_path / "g.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "g.png"))[..., 1], want)
    from alphaclip_train.schema import decode_image  # training data goes through the same scaling
    assert np.array_equal(np.asarray(decode_image((tmp_path / "g.png").read_bytes()))[..., 0], want)
    # prepare: the same pixels as the 8-bit image
    a, _ = prepare(im, size=16, mode="squash")
    b, _ = prepare(Image.fromarray(want.astype(np.uint8)).convert("RGB"), size=16, mode="squash")
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    # 32-bit integer images holding 16-bit values, float images in [0, 1]
    i32 = Image.fromarray(np.asarray(im).astype(np.int32))
    assert i32.mode == "I" and np.array_equal(np.asarray(to_8bit(i32, "L")), want)
    f = Image.fromarray((np.asarray(im, dtype=np.float32) / 65535))
    assert f.mode == "F" and np.abs(np.asarray(to_8bit(f, "L")).astype(int) - want).max() <= 1
    # a 16-bit mask (0 / 65535) is a mask, not an error and not clipped
    m = np.zeros((8, 64), np.uint16)
    m[2:6, 10:30] = 65535
    _, alpha = prepare(Image.new("RGB", (64, 8)), mask=Image.fromarray(m), size=8, mode="squash")
    assert alpha.max() == pytest.approx(1.9231, abs=1e-3)


def test_images_without_pixels_are_named():
    for image in (np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0, 3), np.uint8), torch.zeros(3, 0, 10)):
        with pytest.raises(ValueError, match=r"image: has no pixels \(height \d+, width \d+\)"):
            prepare(image)
    with pytest.raises(InputError, match=r"^x\.png: the file is empty \(0 bytes\)"):
        decode_image_bytes(b"", "x.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    with pytest.raises(InputError, match=r"^y: the image does not decode \(truncated or corrupt\?\)"):
        decode_image_bytes(buf.getvalue()[: len(buf.getvalue()) // 2], "y")


def test_atomic_folder_replaces_or_leaves_alone(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert sorted(os.listdir(tmp_path)) == ["model"] and (out / "a.txt").read_text() == "1"
    with pytest.raises(OSError, match="No space left|no space left") as e:
        with atomic_folder(out) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534: "
                               "No space left on device")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    assert sorted(os.listdir(tmp_path)) == ["model"] and sorted(os.listdir(out)) == ["a.txt"]  # untouched
    with atomic_folder(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(os.listdir(out)) == ["c.txt"] and sorted(os.listdir(tmp_path)) == ["model"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        with atomic_folder(tmp_path / "file"):
            pass


def test_error_vocabulary_and_exit_codes():
    from PIL import UnidentifiedImageError

    assert issubclass(InputError, ValueError) and issubclass(CheckpointError, InputError)
    assert issubclass(RunError, RuntimeError)
    assert describe_error(InputError("--x: bad")) == (2, "--x: bad")
    assert describe_error(RunError("data: ran dry")) == (1, "data: ran dry")
    assert describe_error(FileNotFoundError(2, "No such file or directory", "/a/b.png")) == \
        (2, "/a/b.png: no such file or folder")
    assert describe_error(IsADirectoryError(21, "Is a directory", "/a")) == (2, "/a: is a folder, expected a file")
    assert describe_error(OSError(errno.ENOSPC, "No space left on device", "/o/x.pt")) == \
        (1, "/o/x.pt: no space left on the device")
    assert describe_error(OSError(errno.EROFS, "Read-only file system", "/o")) == (1, "/o: the file system is read-only")
    assert describe_error(pickle.UnpicklingError("refs x: refused"))[0] == 2
    assert describe_error(UnidentifiedImageError("cannot identify image file 'x'"))[0] == 2
    code, msg = describe_error(Image.DecompressionBombError("Image size (4 pixels) exceeds limit"))
    assert code == 2 and "ALPHACLIP_MAX_IMAGE_PIXELS" in msg
    code, msg = describe_error(RuntimeError("Found no NVIDIA driver on your system. Please check"))
    assert code == 2 and msg.startswith("--device: Found no NVIDIA driver") and "--device cpu" in msg
    code, msg = describe_error(KeyError("x"))
    assert code == 1 and msg.startswith("KeyError: 'x' (an unexpected error")
    worker = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1\nValueError: data: no usable sample")
    assert describe_error(worker) == (2, "data: no usable sample")
    assert closest("alpha-ViT-B-61", ["alpha-ViT-B-16", "coca_ViT-B-32", "RN50"])[0] == "alpha-ViT-B-16"
