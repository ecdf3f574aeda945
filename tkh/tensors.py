"""Images <-> tensors, the one place for tkh's convention: uint8 RGB (..., H, W, 3) <-> float (..., 3, H, W)
in [-1, 1] (x / 127.5 − 1, and back with rounding). Every module that feeds images to a network or
writes what a network made goes through these two functions.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_tensor", "to_uint8"]


def to_tensor(images: np.ndarray, batch: bool = False, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1], contiguous.

    batch=True gives a single image (H, W, 3) a batch dimension: (1, 3, H, W). device: convert there (the
    uint8 copy travels, not the float one)."""
    a = np.asarray(images)
    if batch and a.ndim == 3:
        a = a[None]
    chw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))  # transposed while 1 byte per value
    if device is not None:
        chw = chw.to(device)
    return chw.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] (any dtype, any device) -> uint8 (..., H, W, 3) on the host."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()
