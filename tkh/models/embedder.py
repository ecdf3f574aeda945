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
from tkh.models.blocks import DownTrunk, global_pool, linear, model_config


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
