"""The embedder E(x, y; φ) (Zakharov et al. 2019, sec. 3.1; architecture in sec. 3.4).

E maps a frame x and its landmark image y to a vector ê ∈ R^N that should capture the person's
identity and appearance but not the pose (the pose comes from the landmarks that drive G). For an episode
of K frames of video i, the embedding is the average (sec. 3.1)

    ê_i = 1/K · Σ_k E(x_i(s_k), y_i(s_k)).

Architecture (sec. 3.4): concat(x, y) -> 6 channels, residual downsampling blocks without normalisation
(BigGAN-style), self-attention at 32x32 for 256-px frames (image_size / 8 in general), down to 4x4,
ReLU, global sum pooling over the spatial positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tkh.config import Config, ModelConfig
from tkh.models.blocks import ResBlockDown, SelfAttention, linear


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


class Embedder(nn.Module):
    """E(x, y; φ): frames and landmark images -> embedding ê ∈ R^N (sec. 3.1).

    forward(x, y): x, y (B, K, 3, H, W) in [-1, 1] -> ê (B, N), the mean over the K frames.
    embed_frames(x, y): x, y (B·K, 3, H, W) -> (B·K, N), one embedding per frame.
    """

    def __init__(self, cfg: ModelConfig | Config) -> None:
        super().__init__()
        self.cfg = cfg = model_config(cfg)
        self.trunk = DownTrunk(cfg, 3 + cfg.landmark_channels)
        # The trunk ends at width(4) channels; a last (spectrally normalised) linear map to N is needed
        # only when N differs from that width (the paper has both 512, so it has none).
        c = self.trunk.out_channels
        self.to_embedding = None
        if c != cfg.embed_dim:
            self.to_embedding = linear(c, cfg.embed_dim, sn=cfg.spectral_norm)

    def embed_frames(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-frame embeddings E(x, y): x, y (M, 3, H, W) -> (M, N)."""
        h = self.trunk(torch.cat([x, y], dim=1))[-1]  # (M, C, 4, 4)
        # ReLU per position, then pooling: a ReLU after the pooling lets a whole channel die for every face
        # at once (seen: L_MCH pulling ê towards the small initial W drove all of ê to exactly 0, for good).
        v = global_pool(F.relu(h), self.cfg.pooling)  # (M, C)
        if self.to_embedding is not None:
            v = F.relu(self.to_embedding(v))
        return v

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ê = 1/K Σ_k E(x_k, y_k) (sec. 3.1). x, y: (B, K, 3, H, W) -> (B, N)."""
        b, k = x.shape[:2]
        e = self.embed_frames(x.flatten(0, 1), y.flatten(0, 1))  # (B·K, N)
        return e.view(b, k, -1).mean(dim=1)
