"""The generator G(y, ê; ψ, P) (Zakharov et al. 2019, sec. 3.1 and 3.4).

G turns a landmark image y into a frame of the person described by the embedding ê. It is an
image-to-image network after Johnson et al. (2016) whose down- and upsampling layers are BigGAN residual
blocks (sec. 3.4):

    y (3, S, S) --ResBlockDown + IN--> ... --> (C, b, b)       encoder, self-attention at S/8
                --gen_res_blocks x ResBlock + AdaIN-->           bottleneck (paper: 5 at 512x16x16)
                --ResBlockUp + AdaIN--> ... --> (base, S, S)     decoder, self-attention at S/4
                --AdaIN, ReLU, conv3x3, tanh--> x̂ (3, S, S)

The person-specific parameters ψ of every AdaIN layer are not learned per person: they are predicted
from the embedding by one learned matrix, ψ̂ = P·ê (sec. 3.1). During few-shot fine-tuning (sec. 3.3)
ψ' is initialised from P·ê_NEW and then optimised directly, which is why `render(y, psi)` exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tkh.config import Config, ModelConfig
from tkh.models.blocks import AdaIN, ResBlock, ResBlockDown, ResBlockUp, SelfAttention, conv, model_config, width


class Generator(nn.Module):
    """G(y, ê): landmark image and embedding -> image (sec. 3.1).

    forward(y, e): y (B, 3, S, S) in [-1, 1], e (B, N) -> x̂ (B, 3, S, S) in [-1, 1].
    adain_params(e): ψ̂ = P·ê, (B, N) -> (B, n_adain).
    render(y, psi): the image for explicit AdaIN parameters psi (B, n_adain) or (n_adain,).
    """

    def __init__(self, cfg: ModelConfig | Config) -> None:
        super().__init__()
        self.cfg = cfg = model_config(cfg)
        sn, s, b = cfg.spectral_norm, cfg.image_size, cfg.bottleneck_size

        # Encoder: ResBlockDown with instance norm from S to the bottleneck size b.
        down_res = []
        res = s // 2
        while res >= b:
            down_res.append(res)
            res //= 2
        attn_down = max(s // 8, b)  # 32x32 at 256 px; the bottleneck when that is coarser
        self.down = nn.ModuleList()
        self.attn_down_after = -1
        c = cfg.landmark_channels
        for j, r in enumerate(down_res):
            self.down.append(ResBlockDown(c, width(cfg, r), sn=sn, norm=True, preactivate=j > 0))
            c = width(cfg, r)
            if cfg.attention and r == attn_down:
                self.attn_down_after = j
                self.attn_down = SelfAttention(c, sn=sn)

        # Bottleneck: residual blocks with AdaIN at b x b.
        self.res = nn.ModuleList([ResBlock(c, sn=sn) for _ in range(cfg.gen_res_blocks)])

        # Decoder: ResBlockUp with AdaIN from b back to S.
        up_res = [b * 2**j for j in range(1, len(down_res) + 1)]
        attn_up = max(s // 4, 2 * b)  # 64x64 at 256 px
        self.up = nn.ModuleList()
        self.attn_up_after = -1
        for j, r in enumerate(up_res):
            self.up.append(ResBlockUp(c, width(cfg, r), sn=sn))
            c = width(cfg, r)
            if cfg.attention and r == attn_up:
                self.attn_up_after = j
                self.attn_up = SelfAttention(c, sn=sn)

        # Output: AdaIN, ReLU, conv to RGB, tanh (BigGAN's output layer with AdaIN for BN).
        self.out_norm = AdaIN(c)
        self.out_conv = conv(c, 3, 3, sn)

        # ψ is the concatenation of every AdaIN layer's (γ, β), in the order they are applied.
        self.psi_sizes = [m.num_params for m in [*self.res, *self.up, self.out_norm]]
        self.n_adain = sum(self.psi_sizes)
        # P: the learned projection ψ̂ = P·ê (sec. 3.1). Not spectrally normalised (not a convolution;
        # neither re-implementation normalises it). Small init so that G starts as if all γ, β ≈ 0.
        self.P = nn.Linear(cfg.embed_dim, self.n_adain, bias=False)
        nn.init.normal_(self.P.weight, std=cfg.p_init_std)

    def adain_params(self, e: torch.Tensor) -> torch.Tensor:
        """ψ̂ = P·ê: (B, N) -> (B, n_adain) (sec. 3.1)."""
        return self.P(e)

    def render(self, y: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """x̂ = G(y; ψ) for explicit AdaIN parameters. y (B, 3, S, S); psi (B, n_adain) or (n_adain,)."""
        if psi.dim() == 1:
            psi = psi.unsqueeze(0).expand(y.shape[0], -1)
        psis = list(psi.split(self.psi_sizes, dim=1))
        h = y
        for j, block in enumerate(self.down):
            h = block(h)
            if j == self.attn_down_after:
                h = self.attn_down(h)
        for block in self.res:
            h = block(h, psis.pop(0))
        for j, block in enumerate(self.up):
            h = block(h, psis.pop(0))
            if j == self.attn_up_after:
                h = self.attn_up(h)
        h = F.relu(self.out_norm(h, psis.pop(0)))
        return torch.tanh(self.out_conv(h))

    def forward(self, y: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x̂ = G(y, ê) = render(y, P·ê). y (B, 3, S, S), e (B, N) -> (B, 3, S, S)."""
        return self.render(y, self.adain_params(e))
