"""VGG19 (ImageNet) for the content loss L_CNT (sec. 3.2): plain torch, torchvision's weights.

The module is torchvision's `vgg19().features` rebuilt without torchvision: its state-dict keys are
`features.N.weight` / `features.N.bias` with torchvision's indices, so torchvision's published file
(https://download.pytorch.org/models/vgg19-dcbb9e9d.pth, registered as tkh.hub.REGISTRY["vgg19"]) loads
as is. Only the layers up to the deepest requested one are kept.

The paper takes ReLU outputs at `features` indices 1, 6, 11, 20, 29 (relu1_1, relu2_1, relu3_1,
relu4_1, relu5_1; LossConfig.vgg19_layers).

Normalisation. The paper used the Caffe-trained VGG19 (BGR, 0-255, ImageNet mean subtracted, no std
division; the public re-implementations note that with other normalisation the content loss becomes negligible). The weights
here are torchvision's, which were trained on RGB in [0, 1] normalised by mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225); so tkh feeds them exactly that: x in [-1, 1] -> (x + 1) / 2 -> (x - mean) / std.
Feature magnitudes therefore differ from the Caffe network's (roughly by the 255*std factor at the first
layer), which the loss weights in the config absorb; the relative weighting between layers is the paper's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from tkh.errors import ChecksumError, ConfigError, DownloadError, WeightsUnavailableError
from tkh.hub import REGISTRY, torch_hub_checkpoints, verify
from tkh.hub import download as hub_download

# torchvision's configuration "E": channels per conv, "M" = 2x2 max pool.
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
DEFAULT_LAYERS = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_features(cfg: Sequence[int | str], last: int | None = None) -> nn.Sequential:
    """torchvision's VGG `features` (conv3x3 pad 1 + ReLU, max pools), truncated after index `last`."""
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    if last is not None:
        layers = layers[:last + 1]
    return nn.Sequential(*layers)


class VGGFeatures(nn.Module):
    """A frozen VGG `features` stack returning the activations at `layers` (indices into `features`).

    forward(x): x (B, 3, H, W) RGB in [-1, 1] -> list of (B, C_l, H_l, W_l), one per layer, in order.
    The input normalisation (`mean`, `std` on the 0-1 scale, or the Caffe convention) is part of the
    module so callers always pass tkh tensors.
    """

    def __init__(self, cfg: Sequence[int | str], layers: Sequence[int], mean: Sequence[float],
                 std: Sequence[float], scale: float = 1.0, bgr: bool = False) -> None:
        super().__init__()
        self.layers = tuple(int(i) for i in layers)
        if not self.layers or sorted(self.layers) != list(self.layers):
            raise ConfigError(f"VGG layers must be increasing feature indices, got {layers}")
        self.features = make_features(cfg, last=max(self.layers))
        if max(self.layers) >= len(self.features) or not all(
                isinstance(self.features[i], nn.ReLU) for i in self.layers):
            raise ConfigError(f"VGG layers {self.layers} must be ReLU indices of this VGG's features "
                              "(VGG19: 1, 3, 6, 8, 11, ... 35)")
        self.scale = scale   # 1.0: inputs on the 0-1 scale (torchvision); 255.0: Caffe's 0-255
        self.bgr = bgr       # Caffe networks take BGR
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1.0) * (0.5 * self.scale)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x.flip(1) if self.bgr else x

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ReLU maps at `self.layers` for x (B, 3, H, W) in [-1, 1]."""
        h = self.normalize(x)
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.layers:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.feature_maps(x)


def _feature_state(state: dict[str, torch.Tensor], model: VGGFeatures, where: str) -> dict[str, torch.Tensor]:
    """The `features.*` entries the (truncated) model needs, with clear errors for a wrong file."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    if missing:
        raise WeightsUnavailableError(
            f"{where} lacks {len(missing)} VGG weights (e.g. {missing[0]}); expected torchvision's "
            "vgg19 state dict with keys features.N.weight / features.N.bias"
        )
    bad = [k for k in want if tuple(state[k].shape) != tuple(want[k].shape)]
    if bad:
        k = bad[0]
        raise WeightsUnavailableError(
            f"{where}: {k} has shape {tuple(state[k].shape)}, expected {tuple(want[k].shape)}; not a VGG19 file"
        )
    return {k: state[k].float() for k in want}


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, ... all mean "not a usable weights file"
        raise WeightsUnavailableError(f"{path} is not a readable torch weights file ({type(exc).__name__}); "
                                      "download it again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state dict")
    return state


def build_vgg19(state: dict[str, torch.Tensor] | None, layers: Sequence[int] = DEFAULT_LAYERS,
                where: str = "state dict") -> VGGFeatures:
    """A frozen VGGFeatures from a torchvision-layout state dict (never from random weights)."""
    if state is None:
        raise WeightsUnavailableError("VGG19 needs real weights; pass a state dict or use load_vgg19()")
    model = VGGFeatures(VGG19_CFG, layers, IMAGENET_MEAN, IMAGENET_STD)
    model.load_state_dict(_feature_state(state, model, where))
    return model.eval().requires_grad_(False)


def load_vgg19(path: str | os.PathLike | None = None, download: bool = True, url: str | None = None,
               layers: Sequence[int] = DEFAULT_LAYERS, hub_dir: str | os.PathLike | None = None,
               device: str | torch.device = "cpu", progress: bool = True) -> VGGFeatures:
    """torchvision's ImageNet VGG19 as a frozen feature extractor (ReLU outputs at `layers`).

    Looks, in order, at: `path` (a .pth or .safetensors file with torchvision's keys); torch hub's
    checkpoint folder (`hub_dir`, default `$TORCH_HOME/hub/checkpoints`) for `vgg19-dcbb9e9d.pth`;
    and, when `download`, fetches it there from `url` (default: torchvision's address) with the
    sha256-prefix check. Raises WeightsUnavailableError when none works, ChecksumError when a
    download's bytes are not the registered file (nothing is kept).
    """
    entry = REGISTRY["vgg19"]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise WeightsUnavailableError(f"{p}: VGG19 weights file not found; pass the path of {entry.filename}")
        return build_vgg19(_torch_load(p), layers, str(p)).to(device)

    folder = Path(hub_dir) if hub_dir is not None else torch_hub_checkpoints()
    cached = folder / entry.filename
    if cached.is_file():
        verify(cached, entry.sha256, entry.sha256_prefix)
        return build_vgg19(_torch_load(cached), layers, str(cached)).to(device)
    if not download:
        raise WeightsUnavailableError(
            f"VGG19 weights not found at {cached}; pass path= to {entry.filename} or allow download (needs internet)"
        )
    try:
        hub_download(url or entry.url, cached, entry.sha256, entry.sha256_prefix, progress=progress)
    except ChecksumError:
        raise
    except DownloadError as exc:
        raise WeightsUnavailableError(
            f"VGG19 weights are not at {cached} and could not be downloaded ({exc}); "
            f"pass path= to a copy of {entry.filename} or get online"
        ) from None
    return build_vgg19(_torch_load(cached), layers, str(cached)).to(device)
