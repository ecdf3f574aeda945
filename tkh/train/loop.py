"""Meta-learning (Zakharov et al. 2019, sec. 3.2): the training loop, readable top to bottom.

One *step* takes a batch of episodes (for each video i: K frames x_i(s_k) with their landmark images
y_i(s_k), and one more frame x_i(t) with y_i(t) as the target) and runs the adversarial step of
`tkh.train.step` with the meta-learning objective `MetaStep` (`tkh.train.objectives`):

    x̂ = G(y_t, ê_i), ê_i = 1/K Σ_k E(x_s_k, y_s_k)        rendered once per step
    D_main  (x d_steps_per_g)   L_DSC = max(0, 1 + D(x̂, y_t, i)) + max(0, 1 − D(x_t, y_t, i)) over D (θ, W, w0, b)
    G_main                      L = L_CNT(x_t, x̂) + [−D(x̂, y_t, i) + λ_FM·L_FM] + λ_MCH·‖W_i − ê_i‖₁ over E, G (ψ, P), W

Optimisers: Adam, lr_eg for E and G, lr_d for D (paper: 5e-5 / 2e-4, β = (0, 0.999)). Precision and
memory format: `tkh.precision` (train.amp, train.channels_last; the verdict is the run's first line and
RUN/precision.jsonl). A step whose loss or gradients are not finite is skipped (no optimiser update),
logged, and after train.max_nonfinite in a row training stops with NonFiniteLossError; the last good
checkpoint stays. Everything built before the first step is `tkh.train.setup.build_run`.

`train(cfg, data, out_dir)` is the whole thing; callbacks let a notebook plot while it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tkh.config import Config
from tkh.media import write_image
from tkh.train import distributed
from tkh.train.batches import to_device
from tkh.train.checkpoint import latest_checkpoint, save_checkpoint
from tkh.train.logging import StepLog, figure_to_array, plot_losses
from tkh.train.objectives import MetaStep
from tkh.train.samples import write_samples
from tkh.train.setup import build_run
from tkh.train.signals import StopSignals
from tkh.train.step import NonFiniteGuard, Phase, make_phases, run_step

__all__ = ["Callbacks", "MetaStep", "Phase", "StepInfo", "TrainResult", "make_phases", "train"]


@dataclass
class StepInfo:
    """Passed to the callbacks after every step."""

    step: int                 # steps done (G updates), 1-based after the first step
    epoch: int                # epoch of the batch just used
    losses: dict[str, float]  # G_* and D_* loss parts of this step (NaN where skipped)
    it_s: float               # steps per second over the last steps
    elapsed: float            # seconds of training in this folder, resumed runs included
    nonfinite: bool           # this step's update was skipped for a NaN/inf loss
    total_steps: int          # train.steps


@dataclass
class Callbacks:
    """Hooks for notebooks and tools; the loop stays in tkh. All optional; called on rank 0 only."""

    on_step: Callable[[StepInfo], None] | None = None                 # after every step
    on_sample: Callable[[int, np.ndarray], None] | None = None        # (step, grid uint8 (H, W, 3)) every sample_every
    should_stop: Callable[[StepInfo], bool] | None = None             # True: stop after this step (checkpoint written)
    # (step, phase index, phase name, model) after each phase's backward, before its optimiser step: the
    # gradients in model's .grad are final (all-reduced over ranks under DDP). Gradient-norm monitoring;
    # the DDP test compares them with one process's.
    on_grads: Callable[[int, int, str, nn.Module], None] | None = None


@dataclass
class TrainResult:
    """What `train` returns."""

    run_dir: Path
    step: int                          # steps done in total (this run and the ones it resumed)
    steps_run: int                     # steps done by this call
    stopped: str                       # "steps", "time", "callback", "signal" ("interrupt" is raised)
    checkpoint: Path | None            # weights of the last checkpoint written (None when none)
    log: Path                          # log.csv
    seconds: float                     # wall time of this call
    losses: dict[str, float] = field(default_factory=dict)  # last step's loss parts
    model: Any = None                  # the trained TalkingHeadModel (on the training device)


def train(cfg: Config, data: str | os.PathLike, out_dir: str | os.PathLike, resume: bool = False,
          callbacks: Callbacks | None = None, device: str | None = None) -> TrainResult:
    """Meta-learn E, G, D on the episodes of a `tkh preprocess` cache (sec. 3.2). See the module docstring.

    cfg: the experiment (cfg.train drives this function). data: the cache folder. out_dir: the run folder
    (config.json, videos.json, precision.jsonl, log.csv, samples/, checkpoints/, losses.png). resume:
    continue from the folder's last checkpoint (optimisers, step, sampler position and RNG states included).
    device: overrides cfg.train.device. Under `torchrun`, every rank calls this; rank 0 writes.
    Raises WeightsUnavailableError when no perceptual network loads (unless loss.allow_no_perceptual),
    CheckpointError for an unusable checkpoint, NonFiniteLossError after train.max_nonfinite bad steps.
    """
    t_start, tc, callbacks = time.perf_counter(), cfg.train, callbacks or Callbacks()
    info, clean = distributed.setup(str(device or tc.device)), False
    try:
        run = build_run(cfg, Path(data), Path(out_dir), resume, info, device)
        state, model, main = run.state, run.model, info.is_main
        ckpts = run.run_dir / "checkpoints"
        log = StepLog(run.run_dir, tc, state.step, resume, enabled=main)
        log.say(run.first_line)
        guard = NonFiniteGuard(tc.max_nonfinite)
        steps_at_start, elapsed_at_start = state.step, state.elapsed
        stopped, parts = "steps", {}
        found = latest_checkpoint(ckpts) if resume else None
        ckpt_path = found[0] if found else None
        grads = callbacks.on_grads if main else None
        model.train()
        with StopSignals() as signals:
            try:
                data_iter = iter(run.batches)
                while state.step < tc.steps:
                    batch, (next_epoch, next_batch) = next(data_iter)                           # batch
                    out = run_step(run.phases, run.runner, run.optimizers, to_device(batch, run.device, run.ctx.policy),
                                   run.ctx, on_grads=grads and (lambda n, ph: grads(state.step + 1, n, ph.name, model)))
                    epoch, parts = state.epoch, out.parts                                        # step
                    state.step, state.epoch, state.batch_in_epoch = state.step + 1, next_epoch, next_batch
                    state.elapsed = elapsed_at_start + (time.perf_counter() - t_start)
                    guard.update(out.ok, parts, state.step, warn=main)                           # log
                    it_s = log.step(state.step, epoch, state.elapsed, out.ok, parts)
                    if main and run.sample_batch is not None and (state.step % tc.sample_every == 0 or state.step == 1):
                        write_samples(run.run_dir, state.step, model, run.sample_batch, run.ctx.policy, log.tb,
                                      callbacks.on_sample)
                    step_info = StepInfo(state.step, epoch, parts, it_s, state.elapsed, not out.ok, tc.steps)
                    if main and callbacks.on_step:
                        callbacks.on_step(step_info)
                    guard.check(f"the last good checkpoint in {ckpts} is kept; lower train.lr_eg / train.lr_d "
                                "or check the data, then resume")
                    want = _stop_request(tc, t_start, step_info, callbacks, signals, info, run.device)
                    if main and out.ok and tc.ckpt_every and state.step % tc.ckpt_every == 0 \
                            and state.step < tc.steps and want is None:                         # checkpoint
                        ckpt_path = save_checkpoint(ckpts, model, run.optimizers, state, run.dataset.row_ids)
                    if want:
                        stopped = want
                        break
            except KeyboardInterrupt:
                # a second Ctrl-C: the step may be half done; checkpoint what we have
                if main and guard.in_row == 0 and state.step > steps_at_start:
                    save_checkpoint(ckpts, model, run.optimizers, state, run.dataset.row_ids)
                raise
            finally:
                log.close()

        if main:  # at exit: checkpoint, loss plot
            if state.step > steps_at_start or ckpt_path is None:
                ckpt_path = save_checkpoint(ckpts, model, run.optimizers, state, run.dataset.row_ids)
            if (run.run_dir / "log.csv").exists():
                write_image(run.run_dir / "losses.png", figure_to_array(plot_losses(run.run_dir)),
                            model=cfg.model.name)
        clean = True
        return TrainResult(run_dir=run.run_dir, step=state.step, steps_run=state.step - steps_at_start,
                           stopped=stopped, checkpoint=ckpt_path, log=run.run_dir / "log.csv",
                           seconds=time.perf_counter() - t_start, losses=parts, model=model)
    finally:
        distributed.teardown(info, clean)


def _stop_request(tc, t_start: float, step_info: StepInfo, callbacks: Callbacks, signals: StopSignals,
                  info: distributed.DistInfo, device) -> str | None:
    """"time", "callback", "signal" or None, agreed by all ranks."""
    want = ("time" if tc.max_minutes and (time.perf_counter() - t_start) > 60 * tc.max_minutes else
            "callback" if info.is_main and callbacks.should_stop and callbacks.should_stop(step_info)
            else "signal" if signals.requested else None)
    codes = ["time", "callback", "signal"]
    flags = distributed.all_flags([1.0 if want == c else 0.0 for c in codes], info, device)
    return next((c for c, f in zip(codes, flags) if f), None)
