"""Pixel metrics, per pair of images on [0, 1]: SSIM and PSNR (sec. 4 of the paper) and LPIPS (Zhang et al.
2018, VGG16 from `tkh.nets.vgg16`); the `tkh.metrics` docstring says what each measures."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from tkh.metrics.inputs import _finish, _lock, _pairs
from tkh.nets.vgg16 import load_lpips

# skimage.metrics costs 0.23 s to import (python -X importtime) and is imported in ssim() only.


def ssim(a: Any, b: Any) -> float | np.ndarray:
    """Structural similarity of images a and b (1 = identical), per pair.

    skimage's `structural_similarity` on [0, 1] RGB with the original paper's settings (Gaussian
    weights, sigma 1.5, population covariance), averaged over channels. Returns a float or (B,).
    """
    from skimage.metrics import structural_similarity

    xa, xb, batch = _pairs(a, b)
    vals = [float(structural_similarity(p, q, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False)) for p, q in zip(xa, xb)]
    return _finish(vals, batch)


def psnr(a: Any, b: Any) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, 10 log10(1 / MSE) on [0, 1] images (inf when identical)."""
    xa, xb, batch = _pairs(a, b)
    vals = []
    for p, q in zip(xa, xb):
        mse = float(np.mean((p - q) ** 2))
        vals.append(float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse))
    return _finish(vals, batch)


@functools.lru_cache(maxsize=2)
def _lpips_network(device: str):
    return load_lpips(device=device)


def lpips(a: Any, b: Any, device: str = "cpu", batch_size: int = 16) -> float | np.ndarray:
    """LPIPS (Zhang et al. 2018, VGG variant, v0.1 heads), per pair: 0 = identical, larger = more different.

    ImageNet VGG16 features from `tkh.nets.vgg16` (offline, `tkh fetch vgg16`); images of any accepted
    form, each pair of one size. Raises WeightsUnavailableError when VGG16 cannot be had.
    """
    xa, xb, batch = _pairs(a, b)
    net = _lpips_network(str(device))
    to_t = lambda imgs: torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().mul(2).sub(1)  # noqa: E731
    vals: list[float] = []
    with _lock, torch.inference_mode():
        for i in range(0, len(xa), batch_size):
            pa, pb = xa[i:i + batch_size], xb[i:i + batch_size]
            if len({p.shape for p in pa}) == 1:
                vals += net(to_t(pa).to(device), to_t(pb).to(device)).cpu().tolist()
            else:  # mixed sizes: one pair at a time
                vals += [float(net(to_t([p]).to(device), to_t([q]).to(device))) for p, q in zip(pa, pb)]
    return _finish(vals, batch)
