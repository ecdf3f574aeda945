"""The metrics' shared input handling: images in any accepted form, one or a batch, as uint8 or [0, 1] floats.

Images may be RGB uint8 (H, W, 3) arrays, paths, PIL images, float arrays in [0, 1], or tkh tensors
(3, H, W) / (B, 3, H, W) in [-1, 1]; batches lists, (B, H, W, 3) arrays or (B, 3, H, W) tensors. A single
pair gives a float, a batch an np.ndarray (B,) (`_finish`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tkh.errors import BadInputError
from tkh.media import load_image, to_rgb_uint8
from tkh.tensors import to_uint8

_lock = threading.Lock()  # one for the metrics' shared networks and dlib's detector (tkh.metrics.pixels, .identity)


def _is_batch(x: Any) -> bool:
    if isinstance(x, (list, tuple)):
        return True
    if isinstance(x, torch.Tensor):
        return x.ndim == 4
    if isinstance(x, np.ndarray):
        return x.ndim == 4
    return False


def _check_chw(t: torch.Tensor, i: int) -> None:
    if t.ndim != 3 or t.shape[0] != 3:
        raise BadInputError(f"image {i}: expected a (3, H, W) tensor in [-1, 1], got shape {tuple(t.shape)}")


def _each(x: Any, convert: Callable[[Any, int], np.ndarray]) -> tuple[list[np.ndarray], bool]:
    """convert(item, index) applied to each image of a batch (or to one image); and whether it was a batch."""
    batch = _is_batch(x)
    return [convert(item, i) for i, item in enumerate(list(x) if batch else [x])], batch


def _uint8_image(item: Any, i: int) -> np.ndarray:
    if isinstance(item, torch.Tensor):
        _check_chw(item, i)
        return to_uint8(item)
    if isinstance(item, np.ndarray):
        return to_rgb_uint8(item, f"image {i}")
    return load_image(item)


def _unit_float_image(item: Any, i: int) -> np.ndarray:
    if isinstance(item, torch.Tensor):  # not through uint8: a metric of float frames must not quantise them
        _check_chw(item, i)
        return ((item.detach().double().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    if isinstance(item, np.ndarray) and item.dtype != np.uint8 and np.issubdtype(item.dtype, np.floating):
        a = np.asarray(item, dtype=np.float64)
        if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
            a = np.moveaxis(a, 0, -1)
        if not np.isfinite(a).all():
            raise BadInputError(f"image {i} contains NaN or inf")
        return a / 255.0 if a.max(initial=0) > 1.0 else a
    img = item if isinstance(item, np.ndarray) else load_image(item)
    return to_rgb_uint8(img, f"image {i}").astype(np.float64) / 255.0


def _as_uint8_list(x: Any) -> tuple[list[np.ndarray], bool]:
    """Images in any accepted form -> list of RGB uint8 (H, W, 3), and whether it was a batch."""
    return _each(x, _uint8_image)


def _as_unit_float(x: Any) -> tuple[list[np.ndarray], bool]:
    """Images -> float64 (H, W, 3) in [0, 1] each, without quantising tensors; and whether it was a batch."""
    return _each(x, _unit_float_image)


def _pairs(a: Any, b: Any) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    xa, batch_a = _as_unit_float(a)
    xb, batch_b = _as_unit_float(b)
    if len(xa) != len(xb):
        raise BadInputError(f"cannot compare {len(xa)} images with {len(xb)}")
    for i, (p, q) in enumerate(zip(xa, xb)):
        if p.shape != q.shape:
            raise BadInputError(f"image pair {i}: shapes differ, {p.shape} vs {q.shape}; resize one first")
    return xa, xb, batch_a or batch_b


def _finish(values: list[float], batch: bool) -> float | np.ndarray:
    return np.asarray(values, dtype=np.float64) if batch else float(values[0])
