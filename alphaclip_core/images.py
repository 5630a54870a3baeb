"""Image files decoded fully and safely: one decoder for every command and loader.

A truncated or corrupt file fails when it is read (not later, in a worker), 16-bit and float images
keep their range (:func:`to_8bit`; PIL's ``convert`` would clip them), and PIL's decompression-bomb
guard applies, adjustable with ``ALPHACLIP_MAX_IMAGE_PIXELS``. Errors are :class:`InputError`
naming the argument and the file.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

__all__ = ["to_8bit", "decode_image_bytes", "open_image", "MAX_PIXELS_ENV"]

#: environment variable: the most pixels an image file may have (PIL's decompression-bomb guard);
#: ``0`` lifts the limit. Unset: PIL's default (about 179 million pixels fail, 89 million warn).
MAX_PIXELS_ENV = "ALPHACLIP_MAX_IMAGE_PIXELS"


def _apply_pixel_limit() -> None:
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None or not value.strip():
        return
    try:
        limit = int(value)
    except ValueError:
        raise InputError(f"{MAX_PIXELS_ENV}: expected a whole number of pixels (0 = no limit), got {value!r}") from None
    # PIL fails above twice this value and warns above it; the user's number is where it should fail
    Image.MAX_IMAGE_PIXELS = None if limit <= 0 else max(1, limit // 2)


def to_8bit(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """An 8-bit ``RGB`` (or ``L``) copy of any PIL image, with the full range of deeper images kept.

    PIL's own ``convert`` clips 16-bit grey (``I;16``, ``I``) to 255, which turns a 16-bit PNG
    all white; here 16-bit images are scaled (65535 -> 255), 32-bit integer images likewise when
    their values exceed 255, and float (``F``) images in [0, 1] are scaled by 255 (others clipped
    to [0, 255]).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode: expected 'RGB' or 'L', got {mode!r}")
    if image.mode.startswith("I") or image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        if image.mode.startswith("I;16") or (image.mode == "I" and hi > 255):
            a = a / 257.0 if hi <= 65535 else a * (255.0 / hi)
        elif image.mode == "F" and hi <= 1.0:
            a = a * 255.0
        grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return grey if mode == "L" else grey.convert("RGB")
    return image.convert(mode)


def decode_image_bytes(data: bytes, what: str = "image", mode: str = "RGB") -> Image.Image:
    """Decode an image file's bytes fully (a truncated file fails here, not later) to 8-bit ``mode``.

    ``what`` names the input in errors (e.g. ``"--mask: a.png"``). Raises :class:`InputError` (a
    ValueError) for empty bytes, bytes PIL cannot identify or decode (truncated, corrupt), images with
    no pixels, and images above the decompression-bomb limit (``ALPHACLIP_MAX_IMAGE_PIXELS`` raises it).
    """
    if not data:
        raise InputError(f"{what}: the file is empty (0 bytes); expected an image")
    _apply_pixel_limit()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width == 0 or im.height == 0:
                raise InputError(f"{what}: the image has no pixels ({im.width}x{im.height})")
            im.load()
            return to_8bit(im, mode)
    except Image.DecompressionBombError as e:
        raise InputError(f"{what}: {e}; if you trust the file set {MAX_PIXELS_ENV} to a larger pixel count "
                         "(0 = no limit)") from None
    except UnidentifiedImageError:
        raise InputError(f"{what}: not an image PIL can read (an unknown format, or a broken header such as a "
                         "0x0 size)") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for bad data
        raise InputError(f"{what}: the image does not decode (truncated or corrupt?): {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None


def open_image(path: Any, arg: str = "image", mode: str = "RGB") -> Image.Image:
    """Read and fully decode an image file to 8-bit ``RGB`` (or ``L`` for masks), see :func:`decode_image_bytes`.

    Raises FileNotFoundError or :class:`InputError` naming ``arg`` and the file.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{arg}: {path} is a folder; expected an image file")
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: no such file: {path}")
    return decode_image_bytes(path.read_bytes(), f"{arg}: {path}", mode)
