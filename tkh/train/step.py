"""One adversarial step, as data: the phases, and the function both meta-learning and fine-tuning call.

A step of Zakharov et al. 2019 (sec. 3.2, and again in sec. 3.3 with other parameters) is

    x̂ rendered once (with its graph)
    D phase  x d_steps_per_g    minimise L_DSC over D's parameters, x̂ detached
    G phase                     minimise the generator's loss through x̂; D's parameters are constants

`make_phases` lists the phases; `run_step` runs them in order with `run_phase` (zero grads -> loss ->
backward -> optimiser step if the loss and gradients are finite on every rank). *What* each phase
minimises is the objective's business (`tkh.train.objectives`: `MetaStep` for sec. 3.2, `FineTuneStep`
for sec. 3.3); *how* a phase runs is the same for both. `NonFiniteGuard` counts skipped steps and stops
with one clear error after too many in a row.

Rendering once: the D phases score x̂.detach() and the G phase back-propagates through the same x̂ (G
has not changed in between), which saves a forward pass of E and G per step. The render is a call of the
objective itself, outside DDP's forward, and no phase returns x̂ with its graph: DDP then sees E and G
unused in the D phases and used in the G phase, as they are. With gradient checkpointing the render
stays inside the G phase (its recomputation must see the spectral-norm weights cached for that phase) and
the first D phase renders without gradients for all D phases, as before.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tkh.errors import NonFiniteLossError
from tkh.models.blocks import spectral_norm_cached
from tkh.precision import Policy
from tkh.train import distributed

__all__ = ["NonFiniteGuard", "Phase", "StepContext", "StepOutcome", "adam", "make_phases", "run_phase", "run_step"]


@dataclass(frozen=True)
class Phase:
    name: str        # "D_main" or "G_main": which loss the objective computes
    optimizer: str   # key of the optimiser that steps after it: "D" or "G"
    prefix: str      # of its loss parts in the log: "D" or "G"


def make_phases(d_steps_per_g: int) -> list[Phase]:
    """d_steps_per_g D updates, then one G update (paper: 2 D updates per G update in meta-learning)."""
    return [Phase("D_main", "D", "D")] * d_steps_per_g + [Phase("G_main", "G", "G")]


@dataclass
class StepContext:
    """What every phase needs besides the batch: precision, ranks, and D's parameters frozen in the G phase."""

    policy: Policy
    frozen_in_g: list[nn.Parameter]       # D's own parameters: constants of the G phase (no gradient, no compute)
    module: nn.Module                     # the objective itself (`runner` may be its DDP wrapper)
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    grad_checkpoint: bool = False
    device: torch.device = torch.device("cpu")

    def sn_cache(self):
        # With gradient checkpointing, spectral-norm weights are computed once per phase (outside the
        # recomputed blocks), so the recomputation sees exactly the weights of the forward pass.
        if not self.grad_checkpoint:
            return nullcontext()
        return spectral_norm_cached(self.module)

    @property
    def render_once(self) -> bool:
        return not self.grad_checkpoint  # (see the module doc)


@dataclass
class StepOutcome:
    ok: bool                                     # every phase's update was applied
    parts: dict[str, float]                      # "D_*" (mean over the D phases) and "G_*" loss parts
    fake: Any = None                             # the objective's render of this step (detached use only)


def run_phase(phase: Phase, runner: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
              batch: dict[str, torch.Tensor], fake: Any, ctx: StepContext,
              after_backward: Callable[[], None] | None = None) -> tuple[bool, dict[str, float], Any]:
    """zero grads -> loss -> backward -> (if finite on every rank) optimiser step. Returns (ok, parts, fake).

    `fake` is the step's render (None: the phase renders). after_backward sees the final gradients."""
    opt = optimizers[phase.optimizer]
    for o in optimizers.values():
        o.zero_grad(set_to_none=True)
    frozen = ctx.frozen_in_g if phase.name == "G_main" else []
    for p in frozen:  # D's parameters get no gradient from the G step (and cost no backward compute)
        p.requires_grad_(False)
    try:
        with ctx.sn_cache():  # (backward inside too: checkpointed blocks are recomputed there)
            with ctx.policy.autocast():
                loss, parts, fake = runner(phase.name, batch, fake)
            loss.backward()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    ok = bool(torch.isfinite(loss.detach()))
    if ok:
        ok = all(bool(torch.isfinite(p.grad).all()) for g in opt.param_groups for p in g["params"] if p.grad is not None)
    ok = distributed.all_flags([0.0 if ok else 1.0], ctx.dist, ctx.device)[0] == 0.0
    if after_backward is not None:
        after_backward()
    if ok:
        opt.step()
    keys = list(parts)  # the same keys on every rank (same code path)
    values = distributed.all_mean([float(parts[k]) for k in keys], ctx.dist, ctx.device)
    return ok, {f"{phase.prefix}_{k}": v for k, v in zip(keys, values)}, fake


def run_step(phases: Sequence[Phase], runner: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
             batch: dict[str, torch.Tensor], ctx: StepContext,
             on_grads: Callable[[int, Phase], None] | None = None) -> StepOutcome:
    """One adversarial step: render x̂ once, then every phase in order. Loss parts of repeated phases
    (the D phases) are averaged. on_grads(phase index, phase) runs after each phase's backward."""
    rendered = None
    if ctx.render_once and any(p.name == "G_main" for p in phases):
        with ctx.policy.autocast():
            rendered = ctx.module.render(batch)  # the objective itself, not a DDP wrapper: no backward of its own
    fake, ok, collected = rendered, True, {}
    for n, phase in enumerate(phases):
        hook = (lambda n=n, phase=phase: on_grads(n, phase)) if on_grads is not None else None
        phase_ok, phase_parts, out = run_phase(phase, runner, optimizers, batch, fake, ctx, hook)
        if rendered is None:
            fake = out  # without render-once: the first D phase's render (no gradients) serves the next ones
        ok &= phase_ok
        for k, v in phase_parts.items():
            collected.setdefault(k, []).append(v)
    return StepOutcome(ok, {k: float(sum(v) / len(v)) for k, v in collected.items()}, out)


class NonFiniteGuard:
    """Counts steps skipped for a NaN/inf loss; after `limit` in a row, `check` raises NonFiniteLossError.

    Meta-learning and fine-tuning use the same rule: a bad step is skipped (no update), warned about and
    counted; a good step resets the count."""

    def __init__(self, limit: int, what: str = "step") -> None:
        self.limit, self.what = int(limit), what
        self.in_row = 0
        self.total = 0
        self._last: dict[str, float] = {}

    def update(self, ok: bool, parts: dict[str, float], step: int, warn: bool = True) -> None:
        self.in_row = 0 if ok else self.in_row + 1
        self.total += 0 if ok else 1
        self._last, self._step = parts, step
        if not ok and warn:
            warnings.warn(f"{self.what} {step}: non-finite loss ({self.culprits()}); update skipped",
                          RuntimeWarning, stacklevel=3)

    def culprits(self) -> str:
        return ", ".join(k for k, v in self._last.items() if not math.isfinite(v)) or "gradients"

    def check(self, advice: str) -> None:
        """Raise NonFiniteLossError (one line, ending with `advice`) once `limit` steps in a row were bad."""
        if self.limit and self.in_row >= self.limit:
            raise NonFiniteLossError(f"losses were NaN/inf in {self.in_row} consecutive {self.what}s (last: "
                                     f"{self.what} {self._step}, {self.culprits()}); {advice}")


def adam(params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, the paper's optimiser for meta-learning and fine-tuning, with torch's fused kernel on CPU and CUDA.

    params: parameters or parameter groups, as `torch.optim.Adam` takes them. The fused kernel gives the same
    update in one pass over the parameters: on a 2-core CPU it stepped 12 M parameters (about `small`'s E, G and
    D) in 18 ms instead of 95 ms for the default (benchmarks/train_throughput.py times whole steps). A run
    resumed from a checkpoint written by the default optimiser keeps that optimiser's settings.
    """
    params = list(params)
    first = params[0]["params"] if params and isinstance(params[0], dict) else params
    first = next(iter(first), None)
    fused = first is not None and first.device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True if fused else None)
