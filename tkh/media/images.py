"""Images in: any image file, bytes, PIL image or array as RGB uint8 (H, W, 3).

Grayscale, RGBA, palette, CMYK, 16-bit and float images and EXIF rotation are all handled here; PIL's
decompression-bomb limit is set here for every `Image.open` in tkh.media (videos and writers import this).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from tkh.errors import BadInputError
from tkh.media.constants import MAX_PIXELS

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def load_image(src: str | os.PathLike | bytes | BinaryIO | np.ndarray | Image.Image, name: str | None = None) -> np.ndarray:
    """Any image (path, bytes, PIL image or array) as RGB uint8 (H, W, 3).

    Grayscale is replicated, alpha is composited on white, 16-bit and float images are scaled,
    CMYK and palette images are converted, and EXIF orientation is applied.
    """
    if isinstance(src, np.ndarray):
        return to_rgb_uint8(src, name or "array")
    if isinstance(src, Image.Image):
        return _pil_to_rgb(src, name or "image")
    if hasattr(src, "read"):  # an open file, e.g. matplotlib.cbook.get_sample_data(...)
        name = name or getattr(src, "name", None)
        src = src.read()
    if isinstance(src, bytes):
        label = name or "image bytes"
        if not src:
            raise BadInputError(f"{label} is empty (0 bytes); pass a JPEG or PNG image")
        return _open_pil(io.BytesIO(src), label)
    path = Path(src)
    label = name or str(path)
    if not path.exists():
        raise BadInputError(f"{label}: file not found; check the path")
    if path.is_dir():
        raise BadInputError(f"{label} is a folder; pass an image file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{label} is empty (0 bytes); pass a JPEG or PNG image")
    return _open_pil(path, label)


def _open_pil(fp: Any, label: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line
            im = Image.open(fp)
        with im:
            if im.width * im.height > MAX_PIXELS:  # PIL itself only refuses above twice its limit
                raise Image.DecompressionBombError(label)
            im.load()
            return _pil_to_rgb(im, label)
    except Image.DecompressionBombError:
        raise BadInputError(
            f"{label} is too large (over {MAX_PIXELS // 1_000_000} megapixels); resize it first"
        ) from None
    except BadInputError:
        raise
    except Image.UnidentifiedImageError:
        raise BadInputError(f"{label} is not a readable image (unknown format); pass a JPEG or PNG") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "image file is truncated" in str(exc) else f"not a readable image ({exc})"
        raise BadInputError(f"{label} is {reason}; re-export it as JPEG or PNG") from None


def _pil_to_rgb(im: Image.Image, label: str) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_rgb_uint8(np.asarray(im), label)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        return to_rgb_uint8(np.asarray(im.convert("RGBA")), label)
    return np.ascontiguousarray(np.asarray(im.convert("RGB")))


def to_rgb_uint8(arr: np.ndarray, name: str = "array") -> np.ndarray:
    """An array image of any common layout and dtype as RGB uint8 (H, W, 3)."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels-first (C, H, W)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise BadInputError(f"{name}: expected an image (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype == np.uint8 and a.shape[-1] == 3:  # already RGB uint8 (every decoded video frame): just copy
        return np.array(a, order="C", copy=True)
    a = _to_unit_float(a, name) if a.dtype != np.uint8 else a.astype(np.float32) / 255.0
    if a.shape[-1] in (2, 4):  # composite alpha on white
        alpha = a[..., -1:]
        a = a[..., :-1] * alpha + (1.0 - alpha)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8))


def _to_unit_float(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype.itemsize == 1:
            return a.astype(np.float32) / 255.0
        top = 65535.0 if a.max(initial=0) > 255 or a.dtype.itemsize == 2 else 255.0
        return a.astype(np.float32) / top
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise BadInputError(f"{name}: image contains NaN or inf values")
        return a.astype(np.float32) / (255.0 if a.max(initial=0) > 1.0 else 1.0)
    raise BadInputError(f"{name}: unsupported image dtype {a.dtype}")
