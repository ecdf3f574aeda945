"""Landmark error: mean point-to-point distance over the inter-ocular distance (sec. 4 of the paper)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tkh.errors import BadInputError

LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45  # iBUG-68 outer eye corners, for the inter-ocular distance


def landmark_error(pred: Any, ref: Any) -> float | np.ndarray:
    """Mean distance between predicted and reference landmarks over the inter-ocular distance of `ref`.

    pred, ref: (68, 2) or (B, 68, 2) arrays/tensors in pixels (iBUG-68 order). Points that are NaN in
    either are ignored; a pair with no finite point, or a reference without both outer eye corners,
    gives NaN. Returns a float or (B,).
    """
    p = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float64)
    r = np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    batch = p.ndim == 3 or r.ndim == 3
    p = p.reshape((-1,) + p.shape[-2:])
    r = r.reshape((-1,) + r.shape[-2:])
    if p.shape[1:] != r.shape[1:] or p.shape[-1] != 2 or p.shape[1] <= RIGHT_EYE_OUTER:
        raise BadInputError(f"landmark_error needs (68, 2) or (B, 68, 2) landmarks, got {p.shape} and {r.shape}")
    if len(p) != len(r):
        if len(p) != 1 and len(r) != 1:
            raise BadInputError(f"cannot compare {len(p)} landmark sets with {len(r)}")
        p, r = np.broadcast_arrays(p, r)
    dist = np.linalg.norm(p - r, axis=-1)                                     # (B, 68), NaN where missing
    iod = np.linalg.norm(r[:, LEFT_EYE_OUTER] - r[:, RIGHT_EYE_OUTER], axis=-1)  # (B,)
    ok = np.isfinite(dist)
    count = ok.sum(axis=1)
    mean = np.where(count > 0, np.where(ok, dist, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(np.isfinite(iod) & (iod > 0), mean / iod, np.nan)
    return err if batch else float(err[0])
