"""Training checkpoints: written atomically, read back only when complete, never unpickled unsafely.

A checkpoint of step N is two files in ``RUN/checkpoints/`` plus a pointer::

    step_000N.safetensors   E, G, D weights (`TalkingHeadModel.save`: config JSON + meta in the header)
    step_000N.state.pt      optimizers, step, epoch, position in the epoch, RNG states (torch.save of
                            tensors, numbers, strings, lists and dicts only: loaded with weights_only=True)
    latest.json             {"step": N, "model": ..., "state": ...}: which pair is the newest complete one

Each file is written to a temporary name and renamed into place (`os.replace` is atomic on POSIX),
and ``latest.json`` is replaced last, so a run killed at any moment (even with SIGKILL) leaves the
previous pointer naming a complete pair. Older pairs are deleted after the pointer moved on (the last
`keep` stay). There is no AMP gradient scaler to save: tkh trains in bf16 or float32, which need none.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tkh import pretrained
from tkh.atomic import atomic_path, write_json
from tkh.config import Config
from tkh.errors import CheckpointError
from tkh.models import TalkingHeadModel

__all__ = ["TrainState", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state",
           "warm_start", "w_from_embedder"]

POINTER = "latest.json"


@dataclass
class TrainState:
    """Where training is: `step` G updates done; the next batch is batch `batch_in_epoch` of `epoch`."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0  # seconds of training over all runs of this folder (for the log's time column)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "elapsed": self.elapsed}


# --- RNG states as weights_only-loadable objects ------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, as tensors / ints / lists (no numpy objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # fewer GPUs now than when saved: CUDA streams are reseeded instead
            pass


# --- save / load -----------------------------------------------------------------------------------------


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(ckpt_dir: str | os.PathLike, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    state: TrainState, video_ids: list[str], keep: int = 2) -> Path:
    """Write step `state.step`'s checkpoint (see the module docstring); returns the weights' path.

    model: the plain TalkingHeadModel (not a DDP wrapper). video_ids: the rows of D's W, stored in the
    weights' meta so that a resumed run can check it sees the same videos.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"step_{state.step:07d}"
    weights = ckpt_dir / f"{stem}.safetensors"
    extra = ckpt_dir / f"{stem}.state.pt"
    meta = {"step": state.step, "video_ids": list(video_ids), "kind": "meta-learning checkpoint"}
    model.save(weights, meta=meta)
    _atomic_torch_save({"format": "tkh.train/1", "train_state": state.to_dict(),
                        "optimizers": {k: o.state_dict() for k, o in optimizers.items()}, "rng": rng_state()}, extra)
    write_json(ckpt_dir / POINTER, {"step": state.step, "model": weights.name, "state": extra.name})
    # Only now that the pointer names the new pair may old pairs go.
    pairs = sorted(ckpt_dir.glob("step_*.safetensors"))
    for old in pairs[:-keep] if keep > 0 else []:
        for p in (old, old.with_name(old.name.replace(".safetensors", ".state.pt"))):
            p.unlink(missing_ok=True)
    return weights


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[Path, Path] | None:
    """(weights, state) named by latest.json, or None when the folder has no checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / POINTER
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        return ckpt_dir / info["model"], ckpt_dir / info["state"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer} is unreadable ({exc}); delete it to restart, or restore the run folder") from None


def load_checkpoint(ckpt_dir: str | os.PathLike, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    cfg: Config, video_ids: list[str]) -> TrainState:
    """Load the newest checkpoint into `model` and `optimizers` in place, restore the RNGs; returns its TrainState.

    CheckpointError (one line) when there is none, when a file is truncated or corrupt, when it was
    saved with another model config, or for other training videos (W's rows would be wrong).
    """
    found = latest_checkpoint(ckpt_dir)
    if found is None:
        raise CheckpointError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start training")
    weights, extra = found
    saved = TalkingHeadModel.load(weights, strict_config=cfg)  # CheckpointError for truncation / other config
    saved_ids = list(saved.meta.get("video_ids", []))
    if saved_ids != list(video_ids):
        raise CheckpointError(
            f"checkpoint {weights} was trained on {len(saved_ids)} videos and this data gives {len(video_ids)} "
            "(other cache or holdout); resume with the same --data and train.holdout, or start a new run folder")
    try:
        blob = torch.load(extra, map_location="cpu", weights_only=True)
        ts = TrainState(**blob["train_state"])
        for name, opt in optimizers.items():
            opt.load_state_dict(blob["optimizers"][name])
    except Exception as exc:  # truncated zip, unpickling refused, missing keys, shape mismatch
        raise CheckpointError(
            f"checkpoint state {extra} is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "delete the checkpoints folder to restart") from None
    if ts.step != int(saved.meta.get("step", -1)):
        raise CheckpointError(f"{weights} (step {saved.meta.get('step')}) and {extra} (step {ts.step}) do not belong "
                              "together; delete the checkpoints folder to restart")
    target = model.state_dict()
    with torch.no_grad():
        for name, tensor in saved.state_dict().items():
            target[name].copy_(tensor)
    set_rng_state(blob["rng"])
    return ts


def warm_start(model: torch.nn.Module, source: str | os.PathLike) -> str:
    """Start meta-learning from other weights (train.init): E, G and D (θ, w0, b) of a shipped name, a
    checkpoint or a run folder (`tkh.pretrained.load`). D's W is not copied: its rows belong to the other
    run's videos, so they start afresh (random, or from the copied embedder: `w_from_embedder`). Returns a
    description for the log.

    Raises CheckpointError when the source is of another architecture (say which tensor differs).
    """
    src = pretrained.load(str(source), map_location="cpu")
    theirs = {k: v for k, v in src.state_dict().items() if k != "D.W"}
    mine = model.state_dict()
    bad = [k for k, v in theirs.items() if k not in mine or tuple(mine[k].shape) != tuple(v.shape)]
    missing = [k for k in mine if k != "D.W" and k not in theirs]
    if bad or missing:
        k = (bad or missing)[0]
        raise CheckpointError(f"train.init={source}: its weights do not fit this config (e.g. {k}: "
                              f"{tuple(theirs[k].shape) if k in theirs else 'absent'} vs "
                              f"{tuple(mine[k].shape) if k in mine else 'absent'}); use weights of the same model size")
    with torch.no_grad():
        for k, v in theirs.items():
            mine[k].copy_(v.to(mine[k].dtype))
    return f"warm start from {getattr(src, 'weights_name', source)} (sha256 {str(getattr(src, 'weights_sha256', ''))[:12]}…)"


@torch.no_grad()
def w_from_embedder(model: TalkingHeadModel, dataset: Any, epochs: int = 2) -> str:
    """W_i ← mean of E(x, y) over frames of row i's videos, for a warm-started model (train.init_w).

    A row of W is what L_MCH pulls towards ê_i = E's mean over person i's frames, and fine-tuning stands
    in ê_NEW for the unknown row (w' = w0 + ê_NEW, sec. 3.3). After a warm start E already knows faces,
    so starting W_i at ê_i makes L_MCH ≈ 0 on the first step instead of pulling a trained E towards
    random rows (a warm-started sitting with random rows lost identity). The frames are those of
    `epochs` episodes per video (K references + target each, pure in (seed, epoch)): the training
    episode order is not touched. Returns a description for the log.
    """
    E, W = model.E, model.D.W
    was_training = E.training
    E.eval()  # no spectral-norm power iteration: E's state stays as loaded
    device = W.device
    sums = torch.zeros_like(W, dtype=torch.float32)
    counts = torch.zeros(W.shape[0], device=device)
    for index in range(len(dataset)):
        for epoch in range(epochs):
            ep = dataset[(index, epoch)]
            x = torch.cat([ep["frames"], ep["target"][None]]).to(device)
            y = torch.cat([ep["landmarks"], ep["target_landmarks"][None]]).to(device)
            row = int(ep["video_index"])
            sums[row] += E.embed_frames(x, y).float().sum(0)
            counts[row] += len(x)
    E.train(was_training)
    seen = counts > 0
    W[seen] = (sums[seen] / counts[seen, None]).to(W.dtype)
    return (f"W's {int(seen.sum())} rows from the embedder (mean E(x, y) over {int(counts.sum())} frames; "
            f"L_MCH starts near 0)")
