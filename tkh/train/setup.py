"""Everything a meta-learning run builds before its first step (sec. 3.2 and 4), in `build_run`.

Data (EpisodeDataset, resumable EpisodeBatches), the model (fresh, warm-started by train.init, or
resumed with its optimisers), the perceptual networks, the optimisers (Adam: lr_eg for E and G, lr_d for
D; W's L_MCH step at lr_d in the G optimiser), the precision policy (`tkh.precision`), gradient
checkpointing and torch.compile, the step objective (`MetaStep`, in DDP when distributed) and its
context. Rank 0 also writes the run folder's files (`tkh.train.rundir`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tkh import precision
from tkh.config import Config
from tkh.data import EpisodeDataset
from tkh.errors import ConfigError
from tkh.losses import PerceptualLoss
from tkh.models import TalkingHeadModel
from tkh.models.blocks import ResBlock, ResBlockDown, ResBlockUp
from tkh.train import distributed
from tkh.train.batches import EpisodeBatches, fixed_batch
from tkh.train.checkpoint import TrainState, latest_checkpoint, load_checkpoint, w_from_embedder, warm_start
from tkh.train.objectives import MetaStep
from tkh.train.rundir import prepare_run_dir, resume_note, write_run_files
from tkh.train.step import StepContext, adam, make_phases

__all__ = ["Run", "build_run", "enable_grad_checkpointing", "meta_optimizers", "resolve_device"]


@dataclass
class Run:
    """A run ready for its first step."""

    run_dir: Path
    dataset: EpisodeDataset
    model: TalkingHeadModel
    optimizers: dict[str, torch.optim.Optimizer]
    state: TrainState
    runner: nn.Module                 # MetaStep, or its DDP wrapper
    ctx: StepContext
    phases: list
    batches: EpisodeBatches
    sample_batch: dict[str, torch.Tensor] | None
    device: torch.device
    first_line: str                   # what the run prints first


def build_run(cfg: Config, data: Path, run_dir: Path, resume: bool, info: distributed.DistInfo,
              device: str | torch.device | None) -> Run:
    tc = cfg.train
    device = resolve_device(str(device or tc.device), info)
    if info.is_main:
        prepare_run_dir(run_dir, resume)
    seed_everything(tc.seed)
    dataset = EpisodeDataset(data, k=tc.k_shots, image_size=cfg.model.image_size, seed=tc.seed, flip=tc.flip,
                             holdout=tc.holdout, w_rows=tc.w_rows)
    if tc.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size {tc.batch_size} must be divisible by the {info.world_size} ranks")
    model = TalkingHeadModel(cfg, num_videos=dataset.num_videos).to(device)  # rows of W
    perceptual = PerceptualLoss(cfg.loss, device=device)  # WeightsUnavailableError (one line) when none loads
    optimizers = meta_optimizers(model, tc)
    state, notes = TrainState(), []
    resuming = resume and latest_checkpoint(run_dir / "checkpoints") is not None
    if tc.init and not resuming:
        notes.append(warm_start(model, tc.init))
        if tc.init_w == "embedder":
            notes.append(w_from_embedder(model, dataset))
    if resume:
        state = load_checkpoint(run_dir / "checkpoints", model, optimizers, cfg, dataset.row_ids)
        notes.append(resume_note(run_dir, state.step, tc.steps))
        # The optimiser state carries the old learning rates; the config's win (resume with a new lr).
        for opt, lrs in ((optimizers["D"], [tc.lr_d]), (optimizers["G"], [tc.lr_eg, tc.lr_d])):
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"], group["betas"] = lr, tuple(tc.betas)

    policy = precision.resolve(tc.amp, tc.channels_last, device, cfg.model)
    policy.prepare(model)
    policy.prepare_frozen(perceptual)
    if info.is_main:
        write_run_files(run_dir, cfg, dataset, policy, state.step)
    if tc.grad_checkpoint:
        enable_grad_checkpointing(model)
    if tc.compile:
        compile_networks(model)
    step_module = MetaStep(model, perceptual, cfg.loss)
    runner: nn.Module = step_module
    if info.enabled:
        # find_unused_parameters: E and G get no gradient in D_main, D's θ/w0/b none in G_main.
        runner = nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda"
                                                     else None, find_unused_parameters=True)
    frozen = [p for n, p in model.D.named_parameters() if n != "W"]
    ctx = StepContext(policy, frozen, step_module, info, tc.grad_checkpoint, device)
    batches = EpisodeBatches(dataset, tc.batch_size // info.world_size, info, tc.seed, tc.num_workers,
                             tc.fixed_episodes, state.epoch, state.batch_in_epoch, pin=device.type == "cuda")
    sample_batch = fixed_batch(dataset, device, policy) if info.is_main and tc.sample_every else None
    c = model.param_counts()
    first = (f"tkh train: {len(dataset)} videos ({len(dataset.info.video_ids) - len(dataset)} held out), "
             f"E {c['E'] / 1e6:.1f}M, G {c['G'] / 1e6:.1f}M, D {c['D'] / 1e6:.1f}M params, {perceptual.describe()}, "
             f"device {device}, {policy.describe()}{f', {info.world_size} ranks' if info.enabled else ''}"
             + "".join(f"; {n}" for n in notes))
    return Run(run_dir, dataset, model, optimizers, state, runner, ctx, make_phases(tc.d_steps_per_g), batches,
               sample_batch, device, first)


def meta_optimizers(model: TalkingHeadModel, tc: Any) -> dict[str, torch.optim.Optimizer]:
    """Adam for D (lr_d) and for E, G (lr_eg) with W's L_MCH step (lr_d); paper: β = (0, 0.999)."""
    return {
        "D": adam(model.D.parameters(), lr=tc.lr_d, betas=tc.betas),
        "G": adam([{"params": [*model.E.parameters(), *model.G.parameters()], "lr": tc.lr_eg},
                   {"params": [model.D.W], "lr": tc.lr_d}], lr=tc.lr_eg, betas=tc.betas),
    }


def resolve_device(name: str, info: distributed.DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Recompute every residual block in backward instead of storing its activations; returns how many."""
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


def compile_networks(model: nn.Module) -> None:
    """torch.compile the networks' tensor functions (instance attributes: state_dict keys stay unchanged)."""
    model.E.embed_frames = torch.compile(model.E.embed_frames)
    model.G.forward = torch.compile(model.G.forward)
    model.D.features = torch.compile(model.D.features)
