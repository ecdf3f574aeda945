"""Sample grids of a training run: the same fixed episodes rendered every `train.sample_every` steps.

RUN/samples/step_XXXXXX.png (labelled synthetic by tkh.media), TensorBoard's "samples" image, and the
`on_sample` callback all get the same grid: one row per episode, [first of the K frames |] landmarks y_t
| target x_t | generated x̂ = G(y_t, ê).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tkh.media import write_image
from tkh.precision import Policy
from tkh.tensors import to_uint8

__all__ = ["render_samples", "sample_grid", "write_samples"]


def sample_grid(target_landmarks: torch.Tensor, target: torch.Tensor, fake: torch.Tensor,
                frames: torch.Tensor | None = None) -> np.ndarray:
    """One row per episode: [first of the K frames |] landmarks y_t | target x_t | generated x̂ = G(y_t, ê).

    Tensors (B, 3, H, W) in [-1, 1] (frames: (B, K, 3, H, W)) -> uint8 (B·H, C·W, 3).
    """
    cols = [] if frames is None else [to_uint8(frames[:, 0])]
    cols += [to_uint8(target_landmarks), to_uint8(target), to_uint8(fake)]
    rows = [np.concatenate([c[i] for c in cols], axis=1) for i in range(len(cols[0]))]
    return np.concatenate(rows, axis=0)


@torch.no_grad()
def render_samples(model: nn.Module, b: dict[str, torch.Tensor], policy: Policy) -> np.ndarray:
    """x̂ = G(y_t, ê) for the fixed sample episodes, in eval mode (spectral norm's u, v are not advanced,
    so writing samples does not change the training run)."""
    model.eval()
    try:
        with policy.autocast():
            fake = model.G(b["target_landmarks"], model.E(b["frames"], b["landmarks"]))
    finally:
        model.train()
    return sample_grid(b["target_landmarks"], b["target"], fake, frames=b["frames"])


def write_samples(run_dir: Path, step: int, model: nn.Module, b: dict[str, torch.Tensor], policy: Policy, tb,
                  on_sample: Callable[[int, np.ndarray], None] | None) -> None:
    """Render the grid and hand it to the PNG, TensorBoard and the callback."""
    grid = render_samples(model, b, policy)
    write_image(run_dir / "samples" / f"step_{step:06d}.png", grid, model=model.cfg.model.name)
    tb.image("samples", grid, step)
    if on_sample:
        on_sample(step, grid)
