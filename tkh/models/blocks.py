"""Building blocks shared by E, G and D (Zakharov et al. 2019, sec. 3.4 "Implementation details").

The paper builds all three networks from the same pieces, borrowed from BigGAN (Brock et al. 2019):

- residual *downsampling* blocks (`ResBlockDown`), without normalisation in E and D and with instance
  normalisation in G's encoder;
- residual blocks at G's bottleneck and residual *upsampling* blocks (`ResBlock`, `ResBlockUp`) whose
  normalisation is AdaIN (Huang & Belongie 2017), driven by the projected embedding ψ̂ = P·ê;
- self-attention (`SelfAttention`, SAGAN, Zhang et al. 2019) at one resolution in each network;
- spectral normalisation (Miyato et al. 2018) of every convolution (`conv`, `linear`).

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

__all__ = [
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


def instance_normalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x − μ) / σ per sample and channel over H, W; statistics in float32. x: (B, C, H, W)."""
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)


class InstanceNorm(nn.Module):
    """Instance normalisation with a learned per-channel affine (G's downsampling path, sec. 3.4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_normalize(x) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


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
        return instance_normalize(x) * (1 + gamma.to(x.dtype)) + beta.to(x.dtype)


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
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, 1, N, C)
        o = o.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.gamma.to(o.dtype) * o
