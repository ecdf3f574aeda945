"""One adversarial step for meta-learning (sec. 3.2) and fine-tuning (sec. 3.3): both go through
tkh.train.step.run_phase, FT trains and freezes exactly sec. 3.3's parameters, D's parameters get no
gradient in the G phase, the fake is rendered once per step, and non-finite FT steps are skipped and
counted like meta-learning's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import tkh.train.step as step_mod
from tkh.config import AdaptConfig, load_config
from tkh.errors import NonFiniteLossError

sys.path.insert(0, str(Path(__file__).parent))
from adapt_helpers import make_tiny_pretrained  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def spy(monkeypatch):
    """Records every phase run: (objective class, phase, optimiser parameter ids, ids of parameters with a
    gradient after the backward), and counts renders."""
    seen: list[dict] = []
    real = step_mod.run_phase

    def run_phase(phase, runner, optimizers, batch, fake, ctx, after_backward=None):
        def hook():
            graded = {id(p) for p in ctx.module.parameters() if p.grad is not None}
            seen.append({"objective": type(ctx.module).__name__, "phase": phase.name, "graded": graded,
                         "optimizers": {k: {id(p) for g in o.param_groups for p in g["params"]}
                                        for k, o in optimizers.items()}, "module": ctx.module})
            if after_backward is not None:
                after_backward()

        return real(phase, runner, optimizers, batch, fake, ctx, hook)

    monkeypatch.setattr(step_mod, "run_phase", run_phase)
    return seen


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    from tkh import pretrained

    return pretrained.load(str(make_tiny_pretrained(tmp_path_factory.mktemp("pre"))), map_location="cpu")


def test_meta_learning_and_fine_tuning_share_the_step(spy, tiny_cache, tmp_path, tiny_net, grace_hopper):
    from tkh.adapt import adapt
    from tkh.train import train

    cfg = load_config("tiny").replace(
        loss={"perceptual": "none", "allow_no_perceptual": True},
        train={"steps": 1, "progress": False, "tensorboard": False, "sample_every": 0, "ckpt_every": 0,
               "device": "cpu", "num_workers": 0})
    train(cfg, tiny_cache, tmp_path / "run")
    meta = [s for s in spy if s["objective"] == "MetaStep"]
    assert [s["phase"] for s in meta] == ["D_main", "D_main", "G_main"]
    model = meta[0]["module"].model
    d_own = {id(p) for n, p in model.D.named_parameters() if n != "W"}
    assert not meta[-1]["graded"] & d_own  # G phase: D's θ, w0, b are constants (W gets L_MCH's gradient)
    assert id(model.D.W) in meta[-1]["graded"]

    ft = adapt(tiny_net, [grace_hopper], cfg=AdaptConfig(**{**vars(tiny_net.cfg.adapt), "mode": "ft", "steps": 1,
                                                           "d_steps_per_g": 1}), device="cpu", progress=False)
    fts = [s for s in spy if s["objective"] == "FineTuneStep"]
    assert [s["phase"] for s in fts] == ["D_main", "G_main"]  # FT's D/G ratio (adapt.d_steps_per_g)
    obj = fts[0]["module"]
    G, D, psi, w = obj.G, obj.D, obj.psi, obj.w
    # sec. 3.3: G (with ψ' replacing P·ê) and D (with w' replacing W_i + w0, b and θ kept) are trained; E, P,
    # W and w0 are not. Exactly those parameters are in the optimisers, and only they get gradients.
    g_trained = {id(p) for n, p in G.named_parameters() if n != "P.weight"} | {id(psi)}
    d_trained = {id(p) for n, p in D.named_parameters() if n not in ("W", "w0")} | {id(w)}
    assert fts[0]["optimizers"] == {"G": g_trained, "D": d_trained}
    assert fts[0]["graded"] == d_trained                      # D phase: D's θ, b and w' only
    assert fts[1]["graded"] == g_trained                      # G phase: G's θ and ψ', nothing of D's
    assert not {id(p) for p in tiny_net.parameters()} & (g_trained | d_trained)  # copies, E untouched
    assert len(ft.history) == 1 and ft.history[0]["d_total"] == ft.history[0]["d_total"]


def test_the_fake_is_rendered_once_per_step(monkeypatch, tiny_net, grace_hopper):
    from tkh.adapt import adapt
    from tkh.train.objectives import FineTuneStep

    renders = []
    real = FineTuneStep.render
    monkeypatch.setattr(FineTuneStep, "render", lambda self, b: renders.append(1) or real(self, b))
    adapt(tiny_net, [grace_hopper], cfg=AdaptConfig(**{**vars(tiny_net.cfg.adapt), "mode": "ft", "steps": 3,
                                                      "d_steps_per_g": 2}), device="cpu", progress=False)
    assert len(renders) == 3  # one per step, shared by both D phases and the G phase


def test_non_finite_fine_tuning_steps_are_skipped_then_stop(tiny_net, grace_hopper):
    """A learning rate of 1e30 blows the weights up: the bad steps are skipped with a warning and counted,
    then one clear error (as meta-learning's train.max_nonfinite)."""
    from tkh.adapt import adapt

    cfg = AdaptConfig(**{**vars(tiny_net.cfg.adapt), "mode": "ft", "steps": 30, "lr_g": 1e30, "lr_d": 1e30,
                         "max_nonfinite": 3})
    with pytest.warns(RuntimeWarning, match="non-finite"), pytest.raises(NonFiniteLossError) as err:
        adapt(tiny_net, [grace_hopper], cfg=cfg, device="cpu", progress=False)
    assert "\n" not in str(err.value) and "3 consecutive fine-tuning steps" in str(err.value)


def test_guard_counts_in_a_row():
    guard = step_mod.NonFiniteGuard(2, "step")
    nan = {"G_total": float("nan")}
    with pytest.warns(RuntimeWarning):
        guard.update(False, nan, 1)
    guard.check("advice")
    guard.update(True, {"G_total": 1.0}, 2)
    with pytest.warns(RuntimeWarning):
        guard.update(False, nan, 3)
        guard.update(False, nan, 4)
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps .*G_total.*advice"):
        guard.check("advice")
    assert guard.total == 3 and torch.tensor(guard.in_row) == 2


def test_fine_tuning_reuses_the_real_images_perceptual_maps(tiny_net, grace_hopper):
    """The T adaptation images do not change, nor do the frozen perceptual networks: FineTuneStep computes
    their maps once per image ("index" in the batch) and the G loss is the one computed from scratch."""
    from tkh.adapt import _perceptual, adapt, init_finetune, landmark_images
    from tkh.tensors import to_tensor
    from tkh.train.objectives import FineTuneStep

    ff = adapt(tiny_net, [grace_hopper], mode="ff", device="cpu", progress=False)
    G, D, psi, w, _, _ = init_finetune(tiny_net, ff.e_hat, "cpu")
    G.eval(), D.eval()  # spectral norm's u, v stay put: both calls see the same weights
    perceptual, loss_cfg = _perceptual(tiny_net, tiny_net.cfg.adapt, "cpu")
    objective = FineTuneStep(G, D, psi, w, perceptual, loss_cfg)
    b = {"target": to_tensor(ff.crops), "target_landmarks": landmark_images(ff.crop_landmarks, 64)}
    plain, _, _ = objective("G_main", b)
    cached = [objective("G_main", {**b, "index": torch.zeros(1, dtype=torch.long)})[0] for _ in range(2)]
    assert len(objective._targets) == 1
    assert all(float(c) == pytest.approx(float(plain), rel=1e-6) for c in cached)
