"""VGGFace (Parkhi et al. 2015; VGG16 layout) for the face part of L_CNT, from user-converted weights.

The paper's face-identity content loss uses VGGFace at conv layers 1, 6, 11, 18, 25 (ReLU outputs of
VGG16's `features`: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1), weight 2.5e-2. Its weights are
distributed by the Oxford VGG group as Caffe/MatConvNet files under a non-commercial licence, so tkh
cannot ship or download them; users who have converted them pass the file to `load_vggface(path)`.
Without a path, tkh's offline face network is dlib's ResNet (`tkh.nets.load_face_network("dlib")`).

Accepted files (.pth via torch.load(weights_only=True), or .safetensors), VGG16 convolution weights only
(fc6-fc8 are ignored), in either naming:
- torchvision layout: `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight` / `.bias`;
- Caffe layer names: `conv1_1.weight`, `conv1_2.weight`, ..., `conv5_3.weight` (and `.bias`); the
  common PyTorch conversions also use `conv1_1.0.weight` or `conv_1_1.weight`, accepted as well.
Each weight is (out, in, 3, 3) with the input channels in the order the network was trained on.

Input normalisation follows the Caffe original: BGR, 0-255, mean (B, G, R) = (93.5940, 104.7624,
129.1863) subtracted, no std division. Pass `bgr=False` / another `mean_rgb` for conversions that
reordered the first layer's channels to RGB or used another mean.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from tkh.errors import WeightsUnavailableError
from tkh.nets.vgg19 import VGGFeatures, _feature_state, _torch_load

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")
DEFAULT_LAYERS = (1, 6, 11, 18, 25)
VGGFACE_MEAN_RGB = (129.1863, 104.7624, 93.5940)
# features index of each Caffe conv name
CONV_INDEX = {"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10, "conv3_2": 12,
              "conv3_3": 14, "conv4_1": 17, "conv4_2": 19, "conv4_3": 21, "conv5_1": 24, "conv5_2": 26,
              "conv5_3": 28}
_CAFFE_KEY = re.compile(r"^(?:.*\.)?conv_?(\d)_(\d)(?:\.0)?\.(weight|bias)$")


def to_torchvision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Caffe-style VGGFace keys (conv1_1.weight, ...) to torchvision's features.N.*; keep others."""
    out = {}
    for key, value in state.items():
        m = _CAFFE_KEY.match(key)
        if m and f"conv{m.group(1)}_{m.group(2)}" in CONV_INDEX:
            out[f"features.{CONV_INDEX[f'conv{m.group(1)}_{m.group(2)}']}.{m.group(3)}"] = value
        else:
            out[key] = value
    return out


def load_vggface(path: str | os.PathLike | None = None, layers: Sequence[int] = DEFAULT_LAYERS,
                 mean_rgb: Sequence[float] = VGGFACE_MEAN_RGB, bgr: bool = True,
                 device: str | torch.device = "cpu") -> VGGFeatures:
    """A frozen VGGFace feature extractor from a converted weights file (see the module docstring).

    forward(x) with x (B, 3, H, W) RGB in [-1, 1] returns the ReLU maps at `layers`. Raises
    WeightsUnavailableError without a path or for a file that is not VGG16-shaped.
    """
    if path is None:
        raise WeightsUnavailableError(
            "VGGFace weights are not distributed with tkh; pass path= to converted VGGFace (VGG16) weights, "
            "or use the offline face network: load_face_network('dlib')"
        )
    p = Path(path)
    if not p.is_file():
        raise WeightsUnavailableError(f"{p}: VGGFace weights file not found; pass the path of your converted weights")
    model = VGGFeatures(VGG16_CFG, layers, mean_rgb, (1.0, 1.0, 1.0), scale=255.0, bgr=bgr)
    state = to_torchvision_keys(_torch_load(p))
    model.load_state_dict(_feature_state(state, model, str(p)))
    return model.eval().requires_grad_(False).to(device)
