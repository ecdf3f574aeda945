"""Meta-learning (Zakharov et al. 2019, sec. 3.2): the training loop, readable top to bottom.

One *step* takes a batch of episodes (for each video i: K frames x_i(s_k) with their landmark images
y_i(s_k), and one more frame x_i(t) with y_i(t) as the target) and runs the GAN *phases* of `PHASES`:

    D_main  (x d_steps_per_g)   x̂ = G(y_t, E(x_s, y_s)) without gradients; minimise the hinge loss
                                L_DSC = max(0, 1 + D(x̂, y_t, i)) + max(0, 1 − D(x_t, y_t, i)) over D (θ, W, w0, b)
    G_main                      ê_i = 1/K Σ_k E(x_s_k, y_s_k);  x̂ = G(y_t, ê_i);  minimise over E, G (ψ, P) and W
                                L = L_CNT(x_t, x̂) + [−D(x̂, y_t, i) + λ_FM·L_FM] + λ_MCH·‖W_i − ê_i‖₁

Which side of each term gets gradients (the paper writes L(φ, ψ, P, θ, W, w0, b) and alternates E/G
updates with D updates; these are the choices made here):
- L_ADV in G_main: D's parameters (θ, w0, b and the row W_i inside the score) are constants — the
  generator step must not move D towards calling fakes real. Gradients reach E and G through x̂.
- L_MCH in G_main: both sides. ê_i is pulled towards W_i (E learns to produce the per-video vectors D
  learned) and W_i towards ê_i, which is what makes w0 + ê_NEW a good stand-in for an unseen person's
  row at fine-tuning time (sec. 3.3). W's step uses D's learning rate, in the G optimiser's own Adam
  state (W also gets the hinge gradient in D_main, in D's optimiser).
- L_FM: the real image's D features are targets (detached).

Optimisers: Adam, lr_eg for E and G, lr_d for D (paper: 5e-5 / 2e-4, β = (0, 0.999)).
Precision: bf16 autocast on CUDA (train.amp), float32 on CPU; channels_last on CUDA. A step whose loss
or gradients are not finite is skipped (no optimiser update), logged, and after train.max_nonfinite
in a row training stops with NonFiniteLossError; the last good checkpoint stays.

`train(cfg, data, out_dir)` is the whole thing; callbacks let a notebook plot while it runs.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tkh.config import Config
from tkh.errors import ConfigError, NonFiniteLossError
from tkh.models.blocks import spectral_norm_cached
from tkh.train import distributed
from tkh.train.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint, warm_start
from tkh.train.logging import CsvLog, TensorBoard, figure_to_array, plot_losses, sample_grid

__all__ = ["Phase", "StepInfo", "Callbacks", "TrainResult", "MetaStep", "make_phases", "train"]


# ---------------------------------------------------------------------------------------------------------
# What a run reports
# ---------------------------------------------------------------------------------------------------------
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
    stopped: str                       # "steps", "time", "callback", "signal"
    checkpoint: Path | None            # weights of the last checkpoint written (None when none)
    log: Path                          # log.csv
    seconds: float                     # wall time of this call
    losses: dict[str, float] = field(default_factory=dict)  # last step's loss parts
    model: Any = None                  # the trained TalkingHeadModel (on the training device)


# ---------------------------------------------------------------------------------------------------------
# The phases of one step, as data
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    name: str        # "D_main" or "G_main": which loss MetaStep computes
    optimizer: str   # key of the optimiser that steps after it: "D" or "G"
    prefix: str      # of its loss parts in the log: "D" or "G"


def make_phases(d_steps_per_g: int) -> list[Phase]:
    """d_steps_per_g D updates, then one E/G update (paper: 2 D updates per G update)."""
    return [Phase("D_main", "D", "D")] * d_steps_per_g + [Phase("G_main", "G", "G")]


class MetaStep(nn.Module):
    """The loss of one phase on one batch (sec. 3.2). Holds E, G, D; wrapped in DDP when distributed.

    forward(phase, batch, fake=None) -> (loss, parts, fake): batch as collated from EpisodeDataset
    (frames, landmarks (B, K, 3, H, W); target, target_landmarks (B, 3, H, W); video_index (B,)).
    `fake` is x̂ from a previous D phase of the same step (G has not changed in between).
    The perceptual networks are frozen and deliberately not a submodule (DDP has nothing to sync there).
    """

    def __init__(self, model: nn.Module, perceptual: nn.Module | None, loss_cfg) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = loss_cfg
        object.__setattr__(self, "perceptual", perceptual)

    def forward(self, phase: str, batch: dict[str, torch.Tensor], fake: torch.Tensor | None = None):
        if phase == "D_main":
            return self.d_main(batch, fake)
        if phase == "G_main":
            return self.g_main(batch)
        raise ValueError(f"unknown phase {phase!r}")

    def d_main(self, b: dict[str, torch.Tensor], fake: torch.Tensor | None):
        from tkh.losses import discriminator_loss

        E, G, D = self.model.E, self.model.G, self.model.D
        if fake is None:
            with torch.no_grad():
                fake = G(b["target_landmarks"], E(b["frames"], b["landmarks"]))  # x̂ (B, 3, H, W)
        # Real and fake through D in one call: one forward per backward, as DDP wants, and faster.
        x = torch.cat([b["target"], fake])
        y = torch.cat([b["target_landmarks"], b["target_landmarks"]])
        i = torch.cat([b["video_index"], b["video_index"]])
        score, _ = D(x, y, i)  # r = V(x, y)ᵀ(W_i + w0) + b, (2B,)
        real_score, fake_score = score.chunk(2)
        loss, parts = discriminator_loss(real_score, fake_score)
        return loss, parts, fake

    def g_main(self, b: dict[str, torch.Tensor]):
        from tkh.losses import generator_loss

        E, G, D = self.model.E, self.model.G, self.model.D
        i = b["video_index"]
        e_hat = E(b["frames"], b["landmarks"])  # ê_i (B, N): mean of E over the K frames
        fake = G(b["target_landmarks"], e_hat)  # x̂ (B, 3, H, W)
        w_i = D.W[i]  # (B, N): W_i with gradient, for L_MCH only
        fake_score, fake_feats = D.score_with_w(fake, b["target_landmarks"], (w_i + D.w0).detach())
        with torch.no_grad():
            _, real_feats = D.features(b["target"], b["target_landmarks"])
        loss, parts = generator_loss(real=b["target"], fake=fake, fake_score=fake_score, real_feats=real_feats,
                                     fake_feats=fake_feats, loss_cfg=self.loss_cfg, perceptual=self.perceptual,
                                     w_i=w_i, e_hat=e_hat)
        parts["rec_l1"] = F.l1_loss(fake.detach().float(), b["target"].float())
        return loss, parts, fake.detach()


def run_phase(phase: Phase, runner: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
              batch: dict[str, torch.Tensor], fake: torch.Tensor | None, ctx: _Ctx,
              after_backward: Callable[[], None] | None = None):
    """zero grads -> loss -> backward -> (if finite on every rank) optimiser step. Returns (ok, parts, fake).

    after_backward (optional) sees the final gradients, before the step."""
    opt = optimizers[phase.optimizer]
    for o in optimizers.values():
        o.zero_grad(set_to_none=True)
    frozen = ctx.frozen_in_g if phase.name == "G_main" else []
    for p in frozen:  # D's θ, w0, b get no gradient from the G step (and cost no backward compute)
        p.requires_grad_(False)
    try:
        with ctx.sn_cache():  # (backward inside too: checkpointed blocks are recomputed there)
            with ctx.autocast():
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


@dataclass
class _Ctx:
    device: torch.device
    dist: distributed.DistInfo
    amp_dtype: torch.dtype | None
    grad_checkpoint: bool
    frozen_in_g: list[nn.Parameter]
    model: nn.Module

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def sn_cache(self):
        # With gradient checkpointing, spectral-norm weights are computed once per phase (outside the
        # recomputed blocks), so the recomputation sees exactly the weights of the forward pass.
        if not self.grad_checkpoint:
            return nullcontext()
        return spectral_norm_cached(self.model)


# ---------------------------------------------------------------------------------------------------------
# Data: batches of episodes, resumable at any step
# ---------------------------------------------------------------------------------------------------------
class EpisodeBatches:
    """Endless batches of episodes for this rank, starting at (epoch, batch_in_epoch).

    Each epoch is one episode per training video in an order shuffled by (seed, epoch) and split over
    ranks by `tkh.data.EpisodeSampler`; the incomplete last batch is dropped. Episodes are a pure
    function of (seed, epoch, video), so resuming at a position gives exactly the batches the
    uninterrupted run would have seen. `positions` yields the (epoch, next batch) after each batch.
    """

    def __init__(self, dataset, batch_per_rank: int, info: distributed.DistInfo, seed: int, num_workers: int,
                 fixed: bool, epoch: int, batch_in_epoch: int, pin: bool) -> None:
        from tkh.data import EpisodeSampler

        self.dataset, self.b, self.fixed = dataset, batch_per_rank, fixed
        self.sampler = EpisodeSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
        self.num_workers, self.pin = num_workers, pin
        self.start = (epoch, batch_in_epoch)
        self.per_epoch = len(self.sampler) // self.b
        if self.per_epoch == 0:
            raise ConfigError(f"train.batch_size {self.b * info.world_size} is larger than the {len(dataset)} training "
                              f"videos ({len(self.sampler)} per rank); lower train.batch_size or add videos")

    def _index_batches(self) -> Iterator[tuple[list[tuple[int, int]], tuple[int, int]]]:
        epoch, j = self.start
        while True:
            self.sampler.set_epoch(0 if self.fixed else epoch)
            order = list(self.sampler)  # [(video, epoch), ...] for this rank
            while j < self.per_epoch:
                idx = order[j * self.b:(j + 1) * self.b]
                j += 1
                yield idx, ((epoch, j) if j < self.per_epoch else (epoch + 1, 0))
            epoch, j = epoch + 1, 0

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], tuple[int, int]]]:
        from torch.utils.data import DataLoader

        index_batches = self._index_batches()
        positions: list[tuple[int, int]] = []

        def batches() -> Iterator[list[tuple[int, int]]]:
            for idx, pos in index_batches:
                positions.append(pos)
                yield idx

        loader = DataLoader(self.dataset, batch_sampler=batches(), num_workers=self.num_workers,
                            pin_memory=self.pin, worker_init_fn=_ignore_sigint if self.num_workers else None,
                            persistent_workers=False, prefetch_factor=2 if self.num_workers else None)
        for batch in loader:
            yield batch, positions.pop(0)


def _ignore_sigint(_: int) -> None:
    # Ctrl-C reaches the whole process group; the main process stops gracefully, workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------------------
# Stop requests: SIGTERM / first Ctrl-C finish the step and checkpoint
# ---------------------------------------------------------------------------------------------------------
class _StopSignals:
    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------------------
# Setup helpers
# ---------------------------------------------------------------------------------------------------------
def resolve_device(name: str, info: distributed.DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    return dev


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Recompute every residual block in backward instead of storing its activations; returns how many."""
    from torch.utils.checkpoint import checkpoint

    from tkh.models.blocks import ResBlock, ResBlockDown, ResBlockUp

    n = 0
    for m in model.modules():
        if isinstance(m, (ResBlockDown, ResBlock, ResBlockUp)):
            def forward(*args, _orig=m.forward):
                if torch.is_grad_enabled():
                    return checkpoint(_orig, *args, use_reentrant=False)
                return _orig(*args)

            m.forward = forward
            n += 1
    return n


def _compile(model: nn.Module) -> None:
    """torch.compile the networks' tensor functions (instance attributes: state_dict keys stay unchanged)."""
    model.E.embed_frames = torch.compile(model.E.embed_frames)
    model.G.forward = torch.compile(model.G.forward)
    model.D.features = torch.compile(model.D.features)


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        v = torch.as_tensor(v).to(device, non_blocking=True)
        if channels_last and v.ndim == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    ckpts = run_dir / "checkpoints"
    if not resume and ckpts.is_dir() and latest_checkpoint(ckpts) is not None:
        raise ConfigError(f"{run_dir} already holds a training run; pass --resume (resume=True) to continue it "
                          "or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------
def train(cfg: Config, data: str | os.PathLike, out_dir: str | os.PathLike, resume: bool = False,
          callbacks: Callbacks | None = None, device: str | torch.device | None = None) -> TrainResult:
    """Meta-learn E, G, D on the episodes of a `tkh preprocess` cache (sec. 3.2). See the module docstring.

    cfg: the experiment (cfg.train drives this function). data: the cache folder. out_dir: the run folder
    (config.json, videos.json, log.csv, samples/, checkpoints/, losses.png). resume: continue from the
    folder's last checkpoint (optimisers, step, sampler position and RNG states included).
    device: overrides cfg.train.device. Under `torchrun`, every rank calls this; rank 0 writes.
    Raises WeightsUnavailableError when no perceptual network loads (unless loss.allow_no_perceptual),
    CheckpointError for an unusable checkpoint, NonFiniteLossError after train.max_nonfinite bad steps.
    """
    from tkh.data import EpisodeDataset
    from tkh.losses import PerceptualLoss
    from tkh.models import TalkingHeadModel

    t_start = time.perf_counter()
    tc = cfg.train
    callbacks = callbacks or Callbacks()
    info = distributed.setup(str(device or tc.device))
    try:
        device = resolve_device(str(device or tc.device), info)
        run_dir, data = Path(out_dir), Path(data)
        if info.is_main:
            _prepare_run_dir(run_dir, resume)

        # --- data, model, losses, optimisers -------------------------------------------------------------
        _seed_everything(tc.seed)
        dataset = EpisodeDataset(data, k=tc.k_shots, image_size=cfg.model.image_size, seed=tc.seed, flip=tc.flip,
                                 holdout=tc.holdout, w_rows=tc.w_rows)
        if tc.batch_size % info.world_size:
            raise ConfigError(f"train.batch_size {tc.batch_size} must be divisible by the {info.world_size} ranks")
        model = TalkingHeadModel(cfg, num_videos=dataset.num_videos).to(device)  # rows of W
        perceptual = PerceptualLoss(cfg.loss, device=device)  # WeightsUnavailableError (one line) when none loads
        optimizers = {
            "D": torch.optim.Adam(model.D.parameters(), lr=tc.lr_d, betas=tc.betas),
            "G": torch.optim.Adam([{"params": [*model.E.parameters(), *model.G.parameters()], "lr": tc.lr_eg},
                                   {"params": [model.D.W], "lr": tc.lr_d}], betas=tc.betas),
        }
        state = TrainState()
        started_from = warm_start(model, tc.init) if tc.init and not (resume and latest_checkpoint(
            run_dir / "checkpoints") is not None) else ""
        if resume:
            state = load_checkpoint(run_dir / "checkpoints", model, optimizers, cfg, dataset.row_ids)
            # The optimiser state carries the old learning rates; the config's win (resume with a new lr).
            for opt, lrs in ((optimizers["D"], [tc.lr_d]), (optimizers["G"], [tc.lr_eg, tc.lr_d])):
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"], group["betas"] = lr, tuple(tc.betas)
        if info.is_main:
            cfg.to_dict()
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
            held = sorted(set(dataset.info.video_ids) - set(dataset.video_ids))
            (run_dir / "videos.json").write_text(json.dumps({"train": dataset.video_ids, "holdout": held}, indent=1))

        # --- speed and memory options ------------------------------------------------------------------
        cuda = device.type == "cuda"
        amp_dtype = torch.bfloat16 if (tc.amp == "bf16" or (tc.amp == "auto" and cuda)) else None
        channels_last = cuda and tc.channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if tc.grad_checkpoint:
            enable_grad_checkpointing(model)
        if tc.compile:
            _compile(model)
        step_module = MetaStep(model, perceptual, cfg.loss)
        runner: nn.Module = step_module
        if info.enabled:
            # find_unused_parameters: E and G get no gradient in D_main, D's θ/w0/b none in G_main.
            runner = nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if cuda else None,
                                                         find_unused_parameters=True)
        frozen = [p for n, p in model.D.named_parameters() if n != "W"]
        ctx = _Ctx(device, info, amp_dtype, tc.grad_checkpoint, frozen, model)
        phases = make_phases(tc.d_steps_per_g)

        batches = EpisodeBatches(dataset, tc.batch_size // info.world_size, info, tc.seed, tc.num_workers,
                                 tc.fixed_episodes, state.epoch, state.batch_in_epoch, pin=cuda)
        sample_batch = _sample_batch(dataset, device, channels_last) if info.is_main and tc.sample_every else None

        # --- logging (rank 0) -----------------------------------------------------------------------------
        log = CsvLog(run_dir / "log.csv", resume_step=state.step if resume else None) if info.is_main else None
        tb = TensorBoard(run_dir / "tb", enabled=tc.tensorboard and info.is_main)
        bar = _progress(tc, state.step, enabled=info.is_main and tc.progress)
        if info.is_main and bar is not None:
            bar.write(f"tkh train: {len(dataset)} videos ({len(dataset.info.video_ids) - len(dataset)} held out), "
                      f"{_describe(model)}, {perceptual.describe()}, device {device}"
                      f"{', bf16' if amp_dtype else ''}{f', {info.world_size} ranks' if info.enabled else ''}"
                      f"{f'; {started_from}' if started_from else ''}")

        # --- the loop ---------------------------------------------------------------------------------
        steps_at_start, elapsed_at_start = state.step, state.elapsed
        stopped, last_parts, bad_in_row, ckpt_path = "steps", {}, 0, None
        window: dict[str, list[float]] = {}
        window_t, window_steps, window_bad = time.perf_counter(), 0, 0
        it_s = 0.0
        model.train()
        with _StopSignals() as signals:
            try:
                data_iter = iter(batches)
                while state.step < tc.steps:
                    batch, (next_epoch, next_batch) = next(data_iter)
                    batch = _to_device(batch, device, channels_last)
                    epoch = state.epoch

                    # one step: the phases, in order
                    ok, fake, collected = True, None, {}
                    for n_phase, phase in enumerate(phases):
                        hook = (functools.partial(callbacks.on_grads, state.step + 1, n_phase, phase.name, model)
                                if info.is_main and callbacks.on_grads is not None else None)
                        phase_ok, phase_parts, fake = run_phase(phase, runner, optimizers, batch, fake, ctx, hook)
                        ok &= phase_ok
                        for k, v in phase_parts.items():
                            collected.setdefault(k, []).append(v)
                    parts = {k: float(np.mean(v)) for k, v in collected.items()}  # D phases: their mean
                    state.step += 1
                    state.epoch, state.batch_in_epoch = next_epoch, next_batch
                    now = time.perf_counter()
                    state.elapsed = elapsed_at_start + (now - t_start)
                    bad_in_row = 0 if ok else bad_in_row + 1
                    last_parts = parts

                    # bookkeeping (rank 0): log, progress, samples, callbacks
                    window_steps += 1
                    window_bad += 0 if ok else 1
                    if ok:
                        for k, v in parts.items():
                            window.setdefault(k, []).append(v)
                    if info.is_main:
                        if not ok:
                            warnings.warn(f"step {state.step}: non-finite loss "
                                          f"({', '.join(k for k, v in parts.items() if not math.isfinite(v)) or 'gradients'}); "
                                          "update skipped", RuntimeWarning, stacklevel=2)
                        if window_steps >= tc.log_every or state.step >= tc.steps:
                            it_s = window_steps / max(now - window_t, 1e-9)
                            row = {"step": state.step, "epoch": epoch, "time": round(state.elapsed, 3),
                                   "it_s": round(it_s, 4), "nonfinite": window_bad,
                                   **{k: float(np.mean(v)) for k, v in window.items()}}
                            log.write(row)
                            tb.scalars(row, state.step)
                            window, window_t, window_steps, window_bad = {}, now, 0, 0
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(G=f"{parts.get('G_total', float('nan')):.3g}",
                                            D=f"{parts.get('D_total', float('nan')):.3g}",
                                            rec=f"{parts.get('G_rec_l1', float('nan')):.3f}", refresh=False)
                        if sample_batch is not None and (state.step % tc.sample_every == 0 or state.step == 1):
                            grid = _render_samples(model, sample_batch, ctx)
                            from tkh.media import write_image

                            write_image(run_dir / "samples" / f"step_{state.step:06d}.png", grid, model=cfg.model.name)
                            tb.image("samples", grid, state.step)
                            if callbacks.on_sample:
                                callbacks.on_sample(state.step, grid)
                    step_info = StepInfo(state.step, epoch, parts, it_s, state.elapsed, not ok, tc.steps)
                    if info.is_main and callbacks.on_step:
                        callbacks.on_step(step_info)

                    # stop conditions, agreed by all ranks
                    if bad_in_row >= tc.max_nonfinite:
                        raise NonFiniteLossError(
                            f"losses were NaN/inf in {bad_in_row} consecutive steps (last: step {state.step}, "
                            f"{', '.join(k for k, v in parts.items() if not math.isfinite(v)) or 'gradients'}); "
                            f"the last good checkpoint in {run_dir / 'checkpoints'} is kept; lower train.lr_eg / "
                            "train.lr_d or check the data, then resume")
                    want = ("time" if tc.max_minutes and (now - t_start) > 60 * tc.max_minutes else
                            "callback" if info.is_main and callbacks.should_stop and callbacks.should_stop(step_info)
                            else "signal" if signals.requested else None)
                    codes = ["time", "callback", "signal"]
                    flags = distributed.all_flags([1.0 if want == c else 0.0 for c in codes], info, device)
                    want = next((c for c, f in zip(codes, flags) if f), None)

                    if info.is_main and ok and tc.ckpt_every and state.step % tc.ckpt_every == 0 \
                            and state.step < tc.steps and want is None:
                        ckpt_path = save_checkpoint(run_dir / "checkpoints", model, optimizers, state, dataset.row_ids)
                    if want:
                        stopped = want
                        break
            except KeyboardInterrupt:
                stopped = "interrupt"  # a second Ctrl-C: the step may be half done; checkpoint what we have
                if info.is_main and bad_in_row == 0 and state.step > steps_at_start:
                    save_checkpoint(run_dir / "checkpoints", model, optimizers, state, dataset.row_ids)
                raise
            finally:
                if bar is not None:
                    bar.close()
                tb.close()

        # --- at exit: checkpoint, loss plot ---------------------------------------------------------------
        if info.is_main:
            if state.step > steps_at_start or ckpt_path is None:
                ckpt_path = save_checkpoint(run_dir / "checkpoints", model, optimizers, state, dataset.row_ids)
            if (run_dir / "log.csv").exists():
                from tkh.media import write_image

                write_image(run_dir / "losses.png", figure_to_array(plot_losses(run_dir)), model=cfg.model.name)
        return TrainResult(run_dir=run_dir, step=state.step, steps_run=state.step - steps_at_start, stopped=stopped,
                           checkpoint=ckpt_path, log=run_dir / "log.csv", seconds=time.perf_counter() - t_start,
                           losses=last_parts, model=model)
    finally:
        distributed.teardown(info)


def _describe(model: nn.Module) -> str:
    c = model.param_counts()
    return f"E {c['E'] / 1e6:.1f}M, G {c['G'] / 1e6:.1f}M, D {c['D'] / 1e6:.1f}M params"


def _progress(tc, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=tc.steps, initial=initial, desc="meta-learning", unit="step", dynamic_ncols=True)


def _sample_batch(dataset, device: torch.device, channels_last: bool, n: int = 4) -> dict[str, torch.Tensor]:
    """Fixed episodes (epoch 0) of the first n training videos, for comparable sample grids."""
    from torch.utils.data import default_collate

    items = [dataset[(i, 0)] for i in range(min(n, len(dataset)))]
    return _to_device(default_collate(items), device, channels_last)


@torch.no_grad()
def _render_samples(model: nn.Module, b: dict[str, torch.Tensor], ctx: _Ctx) -> np.ndarray:
    """x̂ = G(y_t, ê) for the fixed sample episodes, in eval mode (spectral norm's u, v are not advanced,
    so writing samples does not change the training run)."""
    model.eval()
    try:
        with ctx.autocast():
            fake = model.G(b["target_landmarks"], model.E(b["frames"], b["landmarks"]))
    finally:
        model.train()
    return sample_grid(b["target_landmarks"], b["target"], fake, frames=b["frames"])
