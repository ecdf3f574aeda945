"""What each phase of the adversarial step minimises: meta-learning (sec. 3.2) and fine-tuning (sec. 3.3).

Both are one `GanObjective`; they differ only in how x̂ is rendered, which projection vector D's score
uses, and whether there is an L_MCH term:

                 render x̂                          D's projection           G's loss
    MetaStep     G(y_t, ê), ê = 1/K Σ_k E(x_k, y_k)  W_i + w0 (video i)       L_CNT + L_ADV + λ_MCH ‖W_i − ê_i‖₁
    FineTuneStep G(y; ψ')  (ψ' ← P·ê_NEW, free)      w' (← w0 + ê_NEW, free)  L_CNT + L_ADV

    D phase   L_DSC = max(0, 1 + D(x̂, y)) + max(0, 1 − D(x, y)), real and fake through D in one call
              (one forward per backward, as DDP wants, and faster); x̂ detached.
    G phase   the score of x̂ with the projection detached (D's parameters are constants: the generator
              step must not move D towards calling fakes real; `run_phase` also freezes D's θ, b, w0);
              L_FM against the real image's D features, computed without gradients.

In meta-learning L_MCH gets both sides: ê_i is pulled towards W_i and W_i towards ê_i (W's step uses D's
learning rate, in the G optimiser), which is what makes w0 + ê_NEW a good stand-in for an unseen
person's row in sec. 3.3. The perceptual networks are frozen and deliberately not a submodule (DDP has
nothing to sync there).

forward(phase, batch, fake) -> (loss, parts, x̂ detached), fake = `render(batch)` of this step (None:
render here, without gradients in a D phase). Batches: meta-learning's as collated from EpisodeDataset (frames,
landmarks (B, K, 3, H, W); target, target_landmarks (B, 3, H, W); video_index (B,)); fine-tuning's only
target and target_landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tkh.losses import discriminator_loss, generator_loss

__all__ = ["Fake", "FineTuneStep", "GanObjective", "MetaStep"]


@dataclass
class Fake:
    """x̂ of one step, and the embedding it came from (meta-learning's L_MCH needs ê_i)."""

    image: torch.Tensor                 # (B, 3, H, W), with its graph to G's (and E's) parameters
    e_hat: torch.Tensor | None = None   # (B, N) ê_i, meta-learning only


class GanObjective(nn.Module):
    """The D and G losses of one step (sec. 3.2 / 3.3); subclasses say how x̂ is made and scored."""

    def __init__(self, D: nn.Module, perceptual: nn.Module | None, loss_cfg) -> None:
        super().__init__()
        self.D = D
        self.loss_cfg = loss_cfg
        object.__setattr__(self, "perceptual", perceptual)

    # --- what differs ----------------------------------------------------------------------------------
    def render(self, b: dict[str, torch.Tensor]) -> Fake:
        raise NotImplementedError

    def projection(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """The vector D's score uses: W_i + w0 (B, N), or w' (N,)."""
        raise NotImplementedError

    def embedding_match(self, b: dict[str, torch.Tensor], fake: Fake) -> dict[str, torch.Tensor]:
        """generator_loss's L_MCH arguments (w_i, e_hat), or none."""
        return {}

    def content_targets(self, b: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]] | None:
        """The perceptual networks' maps of the real images when known before (None: computed each step)."""
        return None

    # --- the same for both -----------------------------------------------------------------------------
    def forward(self, phase: str, b: dict[str, torch.Tensor], fake: Fake | None = None):
        if phase == "D_main":
            return self.d_main(b, fake)
        if phase == "G_main":
            return self.g_main(b, fake)
        raise ValueError(f"unknown phase {phase!r}")

    def d_main(self, b: dict[str, torch.Tensor], fake: Fake | None):
        if fake is None:
            with torch.no_grad():
                fake = self.render(b)
        y = b["target_landmarks"]
        w = self.projection(b)
        score, _ = self.D.score_with_w(torch.cat([b["target"], fake.image.detach()]), torch.cat([y, y]),
                                       torch.cat([w, w]) if w.ndim == 2 else w)  # r = Vᵀ w + b, (2B,)
        real_score, fake_score = score.chunk(2)
        loss, parts = discriminator_loss(real_score, fake_score)
        return loss, parts, Fake(fake.image.detach())  # never x̂'s graph out of a forward (DDP would wait for it)

    def g_main(self, b: dict[str, torch.Tensor], fake: Fake | None):
        if fake is None or not fake.image.requires_grad:
            fake = self.render(b)
        y, x_hat = b["target_landmarks"], fake.image
        fake_score, fake_feats = self.D.score_with_w(x_hat, y, self.projection(b).detach())
        with torch.no_grad():
            _, real_feats = self.D.features(b["target"], y)
        loss, parts = generator_loss(real=b["target"], fake=x_hat, fake_score=fake_score, real_feats=real_feats,
                                     fake_feats=fake_feats, loss_cfg=self.loss_cfg, perceptual=self.perceptual,
                                     real_targets=self.content_targets(b), **self.embedding_match(b, fake))
        parts["rec_l1"] = F.l1_loss(x_hat.detach().float(), b["target"].float())
        return loss, parts, Fake(x_hat.detach())


class MetaStep(GanObjective):
    """Meta-learning (sec. 3.2): E, G and D of a `TalkingHeadModel`; wrapped in DDP when distributed."""

    def __init__(self, model: nn.Module, perceptual: nn.Module | None, loss_cfg) -> None:
        super().__init__(model.D, perceptual, loss_cfg)
        self.model = model

    def render(self, b: dict[str, torch.Tensor]) -> Fake:
        e_hat = self.model.E(b["frames"], b["landmarks"])  # ê_i (B, N): mean of E over the K frames
        return Fake(self.model.G(b["target_landmarks"], e_hat), e_hat)  # x̂ (B, 3, H, W)

    def projection(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.D.W[b["video_index"]] + self.D.w0

    def embedding_match(self, b: dict[str, torch.Tensor], fake: Fake) -> dict[str, torch.Tensor]:
        return {"w_i": self.D.W[b["video_index"]], "e_hat": fake.e_hat}  # W_i with gradient: L_MCH only


class FineTuneStep(GanObjective):
    """Fine-tuning (sec. 3.3): G with its free ψ', D with its free w'; no L_MCH (there is no W_i).

    Batches may carry "index" (B,): which of the T adaptation images they are. The perceptual networks
    are frozen and the T images fixed, so their maps of each image are computed once and reused."""

    def __init__(self, G: nn.Module, D: nn.Module, psi: nn.Parameter, w: nn.Parameter,
                 perceptual: nn.Module | None, loss_cfg) -> None:
        super().__init__(D, perceptual, loss_cfg)
        self.G, self.psi, self.w = G, psi, w
        self._targets: dict[int, dict[str, list[torch.Tensor]]] = {}

    def content_targets(self, b: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]] | None:
        if "index" not in b or self.perceptual is None or not getattr(self.perceptual, "nets", None):
            return None
        idx = [int(i) for i in b["index"]]
        for j, i in enumerate(idx):
            if i not in self._targets:
                self._targets[i] = self.perceptual.targets(b["target"][j:j + 1])
        names = self._targets[idx[0]]
        return {n: [torch.cat([self._targets[i][n][m] for i in idx]) for m in range(len(names[n]))] for n in names}

    def render(self, b: dict[str, torch.Tensor]) -> Fake:
        return Fake(self.G.render(b["target_landmarks"], self.psi))

    def projection(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.w
