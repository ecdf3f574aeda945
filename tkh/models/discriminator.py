"""The discriminator D(x, y, i; θ, W, w0, b) (Zakharov et al. 2019, sec. 3.1 and 3.3).

D is a projection discriminator (Miyato & Koyama 2018). A network V(x, y; θ) with the embedder's design
plus one more residual block at 4x4 maps a frame and its landmark image to V ∈ R^N; the realism score
of frame x of training video i is

    r(x, y, i) = V(x, y; θ)ᵀ (W_i + w0) + b                                    (sec. 3.1)

with W ∈ R^{num_videos x N} one row per training video (the paper's columns), w0 ∈ R^N shared and b a
scalar. For a new person (sec. 3.3) the row W_i is unknown; fine-tuning uses w' = w0 + ê_NEW instead,
which `score_with_w` takes. Every residual block's output is returned for feature matching (L_FM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tkh.config import Config, ModelConfig
from tkh.models.blocks import DownTrunk, ResBlockDown, global_pool, linear, model_config


class Discriminator(nn.Module):
    """D(x, y, i): realism score and features (sec. 3.1).

    forward(x, y, i): x, y (B, 3, S, S), i LongTensor (B,) -> (score (B,), features list of (B, C, h, w)).
    score_with_w(x, y, w): w (B, N) or (N,) replaces W_i + w0 -> (score (B,), features).
    Parameters: W (num_videos, N), w0 (N,), b () — the paper's W, w0, b.
    """

    def __init__(self, cfg: ModelConfig | Config, num_videos: int) -> None:
        super().__init__()
        self.cfg = cfg = model_config(cfg)
        self.num_videos = num_videos
        self.trunk = DownTrunk(cfg, 3 + cfg.landmark_channels)
        c = self.trunk.out_channels
        # "one more residual block at 4x4" (sec. 3.4): no downsampling.
        self.last = ResBlockDown(c, c, sn=cfg.spectral_norm, downsample=False)
        self.to_v = None if c == cfg.embed_dim else linear(c, cfg.embed_dim, sn=cfg.spectral_norm)
        # W_i is pulled towards ê_i by L_MCH, so it lives on the embedding's scale; w0 and b start at 0.
        self.W = nn.Parameter(torch.randn(num_videos, cfg.embed_dim) * cfg.w_init_std)
        self.w0 = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.b = nn.Parameter(torch.zeros(()))

    def features(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """V(x, y; θ) (B, N) and every residual block's output (for L_FM)."""
        feats = self.trunk(torch.cat([x, y], dim=1))
        h = self.last(feats[-1])
        feats.append(h)
        v = global_pool(h, self.cfg.pooling)
        if self.to_v is not None:
            v = self.to_v(v)
        return F.relu(v), feats

    def score_with_w(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """r = Vᵀ w + b for an explicit w (B, N) or (N,) (sec. 3.3: w' = w0 + ê_NEW)."""
        v, feats = self.features(x, y)
        # The score is computed in float32 even under autocast: the hinge loss compares it with ±1.
        score = (v.float() * w.float()).sum(dim=-1) + self.b
        return score, feats

    def forward(self, x: torch.Tensor, y: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """r = V(x, y)ᵀ (W_i + w0) + b (sec. 3.1). x, y (B, 3, S, S), i (B,) -> ((B,), features)."""
        return self.score_with_w(x, y, self.W[i] + self.w0)
