"""Building blocks shared by E, G and D (Zakharov et al. 2019, sec. 3.4 "Implementation details").

The paper builds all three networks from the same pieces, borrowed from BigGAN (Brock et al. 2019):

- residual *downsampling* blocks (`ResBlockDown`), without normalisation in E and D and with instance
  normalisation in G's encoder;
- residual blocks at G's bottleneck and residual *upsampling* blocks (`ResBlock`, `ResBlockUp`) whose
  normalisation is AdaIN (Huang & Belongie 2017), driven by the projected embedding ψ̂ = P·ê;
- self-attention (`SelfAttention`, SAGAN, Zhang et al. 2019) at one resolution in each network;
- spectral normalisation (Miyato et al. 2018) of every convolution (`conv`, `linear`);
- the widths shared by all three (`width`, `trunk_resolutions`) and the downsampling trunk of E and D
  (`DownTrunk`, `global_pool`).

All blocks work on (B, C, H, W) tensors in any memory format (channels_last included), never branch on
tensor values or shapes at run time (so `torch.compile` traces them once), and compute the statistics
of instance norm / AdaIN in float32 even under bf16/fp16 autocast (half-precision variance is where
"fp16 black frames" come from).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from tkh.config import Config, ModelConfig

__all__ = [
    "DownTrunk",
    "global_pool",
    "model_config",
    "trunk_resolutions",
    "width",
    "Conv2d",
    "Linear",
    "conv",
    "linear",
    "instance_normalize",
    "AdaIN",
    "ResBlockDown",
    "ResBlock",
    "ResBlockUp",
    "SelfAttention",
    "spectral_norm_cached",
]


# --- spectral normalisation ------------------------------------------------------------------------


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` whose (spectrally normalised) weight is computed outside autocast.

    The power iteration of `torch.nn.utils.parametrizations.spectral_norm` uses `torch.mv`, which CUDA
    autocast runs in half precision, and then mixes that result with the float32 buffers u, v
    (pytorch/pytorch#125544). Reading `self.weight` with autocast disabled keeps σ(W) in float32; the
    convolution itself still runs in the autocast dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.weight
        return self._conv_forward(x, weight, self.bias)


class Linear(nn.Linear):
    """`nn.Linear` with its (spectrally normalised) weight computed outside autocast, as `Conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.weight
        return F.linear(x, weight, self.bias)


def conv(c_in: int, c_out: int, kernel: int = 3, sn: bool = True, bias: bool = True) -> Conv2d:
    """A 'same'-padded convolution, spectrally normalised when `sn` (the paper normalises every conv)."""
    layer = Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias)
    return _spectral_norm(layer) if sn else layer


def linear(d_in: int, d_out: int, sn: bool = True, bias: bool = True) -> Linear:
    """A fully connected layer, spectrally normalised when `sn`."""
    layer = Linear(d_in, d_out, bias=bias)
    return _spectral_norm(layer) if sn else layer


@contextmanager
def spectral_norm_cached(model: nn.Module) -> Iterator[None]:
    """Compute every spectrally normalised weight of `model` once, here, and reuse it until exit.

    Gradient checkpointing needs this: a weight first read *inside* a recomputed block would be
    computed (power iteration and all) in the forward pass but read from the cache when the block is
    recomputed in backward, and torch.utils.checkpoint refuses a recomputation that saves fewer
    tensors. Computing them all up front, outside any checkpointed block, makes both passes equal.
    """
    with parametrize.cached():
        for m in model.modules():
            if parametrize.is_parametrized(m):
                for name in m.parametrizations:
                    with torch.autocast(device_type=next(m.parameters()).device.type, enabled=False):
                        getattr(m, name)  # fills the cache
        yield


# --- normalisation ---------------------------------------------------------------------------------


def instance_normalize(x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                       eps: float = 1e-5) -> torch.Tensor:
    """(x − μ) / σ per sample and channel over H, W, then · scale + shift when given (both or neither);
    statistics in float32. x: (B, C, H, W); scale, shift: (B or 1, C, 1, 1).

    Two layouts, one result up to rounding. NCHW: `F.group_norm` with one group per channel (its kernels
    accumulate in float32 for bf16 inputs, and on the CPU it is ~10x faster than `torch.var_mean`, which
    was the top op of the bf16 profile). channels_last, where group_norm's backward is slow: a two-pass
    float32 mean and variance. The affine part is one fused `addcmul` in x's dtype.
    """
    if x.is_contiguous():
        h = F.group_norm(x, x.shape[1], eps=eps).to(x.dtype)  # (CUDA autocast runs group_norm in float32)
        return h if scale is None else torch.addcmul(shift.to(x.dtype), h, scale.to(x.dtype))
    n = x.shape[2] * x.shape[3]
    mean = x.sum(dim=(2, 3), keepdim=True, dtype=torch.float32) / n
    m = mean.to(x.dtype)
    d = x - m  # centred in x's dtype; the rounding of m is corrected for in var and in the shift
    var = (torch.linalg.vector_norm(d, dim=(2, 3), keepdim=True, dtype=torch.float32) ** 2 / n
           - (mean - m.float()) ** 2).clamp_min(0)
    a = torch.rsqrt(var + eps)
    if scale is not None:
        a = a * scale.float()
    b = (m.float() - mean) * a
    if shift is not None:
        b = b + shift.float()
    return torch.addcmul(b.to(x.dtype), d, a.to(x.dtype))


class InstanceNorm(nn.Module):
    """Instance normalisation with a learned per-channel affine (G's downsampling path, sec. 3.4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_normalize(x, self.weight.view(1, -1, 1, 1), self.bias.view(1, -1, 1, 1))


class AdaIN(nn.Module):
    """Adaptive instance normalisation, AdaIN(x; γ, β) = (1 + γ) · (x − μ(x)) / σ(x) + β.

    It has no weights of its own: γ, β ∈ R^C for each sample come from ψ̂ = P·ê (sec. 3.1). Writing the
    scale as 1 + γ (as BigGAN's conditional batch norm does) starts training from plain instance norm
    when P is initialised near zero; it is the same family of functions as the paper's γ·x̄ + β.

    x: (B, C, H, W); psi: (B, 2C) laid out as [γ (C) | β (C)].
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.num_params = 2 * channels  # length of this layer's slice of ψ

    def forward(self, x: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        gamma, beta = psi.unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)  # (B, C, 1, 1) each
        return instance_normalize(x, 1 + gamma, beta)


class _NoNorm(nn.Module):
    """Identity with the normalisation layers' signature (E and D use no normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# --- residual blocks -------------------------------------------------------------------------------


class ResBlockDown(nn.Module):
    """BigGAN residual downsampling block (D's block in Brock et al. 2019, fig. 15b), used by E, D and G.

        h = conv3x3(act(norm(x)));  h = conv3x3(act(norm(h)));  out = avgpool2(h) + conv1x1(avgpool2(x))

    `norm` is instance norm in G's encoder and the identity in E and D (sec. 3.4). The very first block of
    a network sees the raw image, so `preactivate=False` skips its first norm + ReLU (as BigGAN does).
    The skip path has a learned 1x1 convolution when the width changes or the block downsamples (BigGAN's
    `learnable_sc`); pooling first and then the (pointwise) 1x1 convolution equals convolving first and is
    4x cheaper.

    x: (B, c_in, H, W) -> (B, c_out, H/2, W/2)  (or H, W when `downsample=False`, D's last block).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        sn: bool = True,
        norm: bool = False,
        preactivate: bool = True,
        downsample: bool = True,
    ) -> None:
        super().__init__()
        self.preactivate = preactivate
        self.downsample = downsample
        self.norm1 = InstanceNorm(c_in) if (norm and preactivate) else _NoNorm()
        self.conv1 = conv(c_in, c_out, 3, sn)
        self.norm2 = InstanceNorm(c_out) if norm else _NoNorm()
        self.conv2 = conv(c_out, c_out, 3, sn)
        self.skip = conv(c_in, c_out, 1, sn) if (c_in != c_out or downsample) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(x)) if self.preactivate else x
        h = self.conv1(h)
        h = self.conv2(F.relu(self.norm2(h)))
        s = x
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            s = F.avg_pool2d(s, 2)
        if self.skip is not None:
            s = self.skip(s)
        return h + s


class ResBlock(nn.Module):
    """Residual block with AdaIN at G's bottleneck (sec. 3.4; the paper uses 5 at 512x16x16).

        h = conv3x3(relu(AdaIN(x; ψ₁)));  h = conv3x3(relu(AdaIN(h; ψ₂)));  out = x + h

    x: (B, C, H, W), psi: (B, num_params) with num_params = 4C -> (B, C, H, W).
    """

    def __init__(self, channels: int, sn: bool = True) -> None:
        super().__init__()
        self.adain1 = AdaIN(channels)
        self.conv1 = conv(channels, channels, 3, sn)
        self.adain2 = AdaIN(channels)
        self.conv2 = conv(channels, channels, 3, sn)
        self.num_params = self.adain1.num_params + self.adain2.num_params

    def forward(self, x: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        p1, p2 = psi.split([self.adain1.num_params, self.adain2.num_params], dim=1)
        h = self.conv1(F.relu(self.adain1(x, p1)))
        h = self.conv2(F.relu(self.adain2(h, p2)))
        return x + h


class ResBlockUp(nn.Module):
    """BigGAN residual upsampling block (G's block in Brock et al. 2019, fig. 15a) with AdaIN (sec. 3.4).

        h = conv3x3(up2(relu(AdaIN(x; ψ₁))));  h = conv3x3(relu(AdaIN(h; ψ₂)));  out = h + conv1x1(up2(x))

    Nearest-neighbour ×2 upsampling; the skip path always has a learned 1x1 conv (BigGAN's `learnable_sc`).
    x: (B, c_in, H, W), psi: (B, 2·c_in + 2·c_out) -> (B, c_out, 2H, 2W).
    """

    def __init__(self, c_in: int, c_out: int, sn: bool = True) -> None:
        super().__init__()
        self.adain1 = AdaIN(c_in)
        self.conv1 = conv(c_in, c_out, 3, sn)
        self.adain2 = AdaIN(c_out)
        self.conv2 = conv(c_out, c_out, 3, sn)
        self.skip = conv(c_in, c_out, 1, sn)
        self.num_params = self.adain1.num_params + self.adain2.num_params

    def forward(self, x: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        p1, p2 = psi.split([self.adain1.num_params, self.adain2.num_params], dim=1)
        h = F.interpolate(F.relu(self.adain1(x, p1)), scale_factor=2.0, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(F.relu(self.adain2(h, p2)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --- self-attention --------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019, sec. 3), as placed in E, G and D by sec. 3.4.

        f = W_f x, g = W_g x  (C/8 channels),  h = W_h x  (C channels)
        β = softmax(fᵀ g)  over the N = H·W positions,  o = h β,  out = x + γ·o,  γ initialised to 0

    Attention logits are not scaled by 1/√d, as in SAGAN. Computed with
    `F.scaled_dot_product_attention(scale=1)`, which is memory-efficient on CUDA and bf16-safe.

    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, sn: bool = True) -> None:
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = conv(channels, inner, 1, sn, bias=False)
        self.key = conv(channels, inner, 1, sn, bias=False)
        self.value = conv(channels, channels, 1, sn, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, C/8)
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, C/8)
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, C)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # The CPU's fused (flash) kernel needs one head width and a contiguous last dimension; its bf16
            # fallback (bmm + softmax on the N x N matrix) was the slowest op of a bf16 frame. Zero columns
            # leave fᵀg unchanged.
            pad = v.shape[-1] - q.shape[-1]
            q, k, v = F.pad(q, (0, pad)), F.pad(k, (0, pad)), v.contiguous()
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, 1, N, C)
        o = o.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.gamma.to(o.dtype) * o


# --- widths and the downsampling trunk of E and D -----------------------------------------------------


def model_config(cfg: ModelConfig | Config) -> ModelConfig:
    """The networks take the `model` section; a whole `Config` is accepted too."""
    return cfg.model if isinstance(cfg, Config) else cfg


def width(cfg: ModelConfig, res: int) -> int:
    """Channels of the feature maps at spatial size `res` (shared by E, G and D).

    The paper doubles the width each time the resolution halves, from 64 channels at 128x128 to a cap
    of 512 (sec. 3.4): width(res) = min(max_channels, base_channels · image_size / (2·res)). The full
    resolution (G's last block) gets base_channels.
    """
    return min(cfg.max_channels, cfg.base_channels * max(cfg.image_size // (2 * res), 1))


def trunk_resolutions(cfg: ModelConfig) -> list[int]:
    """Output sizes of the trunk's downsampling blocks: image_size/2, /4, ..., 4."""
    out, res = [], cfg.image_size // 2
    while res >= 4:
        out.append(res)
        res //= 2
    return out


def global_pool(h: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): global sum pooling (paper; both re-implementations) or mean pooling."""
    return h.sum(dim=(2, 3)) if kind == "sum" else h.mean(dim=(2, 3))


class DownTrunk(nn.Module):
    """The residual downsampling trunk shared in design (not in weights) by E and D.

    in: (B, 6, S, S) -> list of every block's output, the last one (B, width(4), 4, 4).
    Self-attention follows the block whose output is image_size / 8 (32x32 at 256 px, sec. 3.4).
    """

    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attn_after = -1
        c = in_channels
        for j, res in enumerate(trunk_resolutions(cfg)):
            self.blocks.append(ResBlockDown(c, width(cfg, res), sn=cfg.spectral_norm, preactivate=j > 0))
            c = width(cfg, res)
            if cfg.attention and res == max(cfg.image_size // 8, 4):
                self.attn_after = j
                self.attn = SelfAttention(c, sn=cfg.spectral_norm)
        self.out_channels = c

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for j, block in enumerate(self.blocks):
            h = block(h)
            if j == self.attn_after:
                h = self.attn(h)
            feats.append(h)
        return feats
