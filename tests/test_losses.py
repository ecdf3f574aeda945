"""The objective (tkh.losses) against small hand-computed cases, and PerceptualLoss's refusal rules."""

from __future__ import annotations

import warnings

import pytest
import torch

from tkh.config import LossConfig
from tkh.errors import WeightsUnavailableError
from tkh.losses import (
    PerceptualLoss,
    adv_g,
    content_loss,
    discriminator_loss,
    embedding_match,
    feature_matching,
    generator_loss,
    hinge_d,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_hinge_d_by_hand():
    # real 2 -> max(0, 1 − 2) = 0, real 0.5 -> 0.5; fake −2 -> max(0, 1 − 2) = 0, fake 0.5 -> 1.5
    assert hinge_d(t(2.0, 0.5), t(-2.0, 0.5)).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)
    total, parts = discriminator_loss(t(2.0, 0.5), t(-2.0, 0.5))
    assert total.item() == pytest.approx(1.0)
    assert parts["d_real"].item() == pytest.approx(0.25) and parts["d_fake"].item() == pytest.approx(0.75)
    assert parts["real_score"].item() == pytest.approx(1.25) and parts["fake_score"].item() == pytest.approx(-0.75)


def test_adv_g_is_minus_the_mean_score():
    assert adv_g(t(1.0, -3.0, 0.5)).item() == pytest.approx(0.5)


def test_feature_matching_by_hand():
    real = [torch.zeros(1, 2, 2, 2), torch.ones(1, 3)]
    fake = [torch.full((1, 2, 2, 2), 0.5), torch.tensor([[1.0, 2.0, -1.0]])]
    # layer 1: mean |0 − 0.5| = 0.5; layer 2: mean(|0|, |1|, |2|) = 1
    assert feature_matching(real, fake).item() == pytest.approx(1.5)
    # the real features are targets: no gradient flows into them
    r = [torch.zeros(3, requires_grad=True)]
    f = [torch.ones(3, requires_grad=True)]
    feature_matching(r, f).backward()
    assert r[0].grad is None and f[0].grad is not None
    with pytest.raises(ValueError):
        feature_matching(real, fake[:1])


def test_embedding_match_by_hand():
    w = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    e = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    assert embedding_match(w, e).item() == pytest.approx((1 + 2 + 1 + 1) / 4)


def test_content_loss_by_hand():
    real, fake = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    extractors = [(0.5, lambda x: [x, 2 * x]), (2.0, lambda x: x + 1)]  # a bare tensor is one feature map
    # 0.5 · (1 + 2) + 2 · 1 = 3.5
    assert content_loss(real, fake, extractors).item() == pytest.approx(3.5)


def _d_outputs():
    real_feats = [torch.zeros(2, 4, 4, 4), torch.zeros(2, 8)]
    fake_feats = [torch.full((2, 4, 4, 4), 0.25), torch.full((2, 8), 0.5)]  # L_FM = 0.25 + 0.5 = 0.75
    return t(0.5, 1.5), real_feats, fake_feats  # −D(x̂) = −1


def test_generator_loss_adds_the_papers_terms():
    cfg = LossConfig(fm_weight=10.0, mch_weight=80.0)
    fake_score, real_feats, fake_feats = _d_outputs()
    w_i = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    e_hat = torch.tensor([[1.5, 1.0], [0.0, 0.5]])  # ‖W_i − ê_i‖₁ (mean) = (0.5 + 0.5) / 4 = 0.25
    real, fake = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    total, parts = generator_loss(real=real, fake=fake, fake_score=fake_score, real_feats=real_feats,
                                  fake_feats=fake_feats, loss_cfg=cfg, w_i=w_i, e_hat=e_hat)
    # L_CNT (none) 0 + L_ADV (−1 + 10 · 0.75) + L_MCH 80 · 0.25 = 26.5
    assert total.item() == pytest.approx(26.5)
    assert parts["adv"].item() == pytest.approx(-1.0) and parts["fm"].item() == pytest.approx(0.75)
    assert parts["mch"].item() == pytest.approx(0.25) and parts["cnt"].item() == 0
    assert not any(p.requires_grad for p in parts.values())
    # fine-tuning (sec. 3.3): no W_i, no L_MCH
    total, parts = generator_loss(real=real, fake=fake, fake_score=fake_score, real_feats=real_feats,
                                  fake_feats=fake_feats, loss_cfg=cfg)
    assert total.item() == pytest.approx(6.5) and "mch" not in parts


def test_refuses_without_perceptual_weights(tmp_path):
    """perceptual='vgg19' with its weights absent (a path that does not exist: no download is tried)."""
    cfg = LossConfig(perceptual="vgg19", vgg19_path=str(tmp_path / "vgg19-dcbb9e9d.pth"))
    with pytest.raises(WeightsUnavailableError) as info:
        PerceptualLoss(cfg)
    msg = str(info.value)
    assert "vgg19" in msg and "allow_no_perceptual" in msg and "\n" not in msg
    with pytest.raises(WeightsUnavailableError, match="allow_no_perceptual"):
        PerceptualLoss(LossConfig(perceptual="none"))


def test_pixel_fallback_only_when_allowed(tmp_path):
    cfg = LossConfig(perceptual="vgg19", vgg19_path=str(tmp_path / "absent.pth"), allow_no_perceptual=True,
                     pixel_weight=10.0)
    with pytest.warns(UserWarning, match="pixel L1"):
        loss = PerceptualLoss(cfg)
    assert "pixel" in loss.describe()
    real, fake = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5, requires_grad=True)
    parts = loss.terms(real, fake)
    assert list(parts) == ["pixel"] and parts["pixel"].item() == pytest.approx(5.0)
    loss(real, fake).backward()
    assert fake.grad.abs().sum() > 0


def test_pixel_l1_beside_the_networks():
    """loss.pixel_l1 (not in the paper, 0 by default) adds a pixel L1 term to a real L_CNT."""
    pytest.importorskip("face_recognition_models")
    cfg = LossConfig(perceptual="face", face_network="dlib", pixel_l1=10.0)
    loss = PerceptualLoss(cfg)
    assert loss.describe() == "L_CNT: dlib x 0.025, pixel L1 x 10"
    real, fake = torch.zeros(1, 3, 64, 64), torch.full((1, 3, 64, 64), 0.5)
    parts = loss.terms(real, fake)
    assert set(parts) == {"cnt_dlib", "pixel"} and parts["pixel"].item() == pytest.approx(5.0)
    assert "pixel" not in PerceptualLoss(LossConfig(perceptual="face", face_network="dlib")).terms(real, fake)


def test_dlib_face_network_content_loss():
    """The offline face network (dlib's ResNet, real weights) as the face part of L_CNT."""
    pytest.importorskip("face_recognition_models")
    cfg = LossConfig(perceptual="face", face_network="dlib", face_weight=2.5e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything asked for loads: no warning
        loss = PerceptualLoss(cfg)
    assert loss.describe() == "L_CNT: dlib x 0.025"
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    fake = (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1).requires_grad_()
    assert loss(real, real).item() == pytest.approx(0.0, abs=1e-6)
    value = loss(real, fake)
    assert value.item() > 0
    value.backward()
    assert fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())  # frozen
    loss.train()
    assert not any(m.training for net in loss.nets.values() for m in net.modules())  # stays in eval mode


def test_auto_uses_what_loads_and_refuses_when_nothing_does(tmp_path):
    """perceptual='auto': the real networks that load are used (here the offline dlib one, with a warning that
    VGG19 is missing); with no real weights at all it refuses, and the pixel fallback needs allow_no_perceptual."""
    pytest.importorskip("face_recognition_models")
    no_vgg = str(tmp_path / "vgg19-dcbb9e9d.pth")  # absent: no download is tried for an explicit path
    no_vgg16 = str(tmp_path / "vgg16-lpips.safetensors")
    with pytest.warns(UserWarning, match="using dlib only"):
        loss = PerceptualLoss(LossConfig(perceptual="auto", vgg19_path=no_vgg, vgg16_path=no_vgg16))
    assert list(loss.nets) == ["dlib"] and loss.pixel_weight == 0
    from tkh.nets import vgg16_available

    if vgg16_available():  # VGG19 missing, the offline VGG16 stands in for it (with its own weight)
        with pytest.warns(UserWarning, match="VGG16 stands in"):
            loss = PerceptualLoss(LossConfig(perceptual="auto", vgg19_path=no_vgg))
        assert list(loss.nets) == ["vgg16", "dlib"] and loss.weights["vgg16"] == LossConfig().vgg16_weight

    nothing = LossConfig(perceptual="auto", vgg19_path=no_vgg, vgg16_path=no_vgg16,
                         face_weights_path=str(tmp_path / "no-face.dat"))
    with pytest.raises(WeightsUnavailableError) as info:
        PerceptualLoss(nothing)
    msg = str(info.value)
    assert "no perceptual network" in msg and "allow_no_perceptual" in msg and "no-face.dat" in msg
    allowed = LossConfig(**{**vars(nothing), "allow_no_perceptual": True})
    with pytest.warns(UserWarning, match="pixel L1"):
        assert PerceptualLoss(allowed).describe().startswith("L_CNT: none (pixel L1")
