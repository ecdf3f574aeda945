"""`TalkingHeadModel`: E, G and D of one experiment with its `Config`, and their safetensors I/O.

`save` writes every weight and buffer with the config JSON in the file's header, so
`TalkingHeadModel.load(path)` rebuilds the model with no other file. `param_counts` / `describe` size a
config without building it (meta device).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from tkh.atomic import save_safetensors
from tkh.config import Config, ModelConfig
from tkh.errors import CheckpointError, ConfigError
from tkh.models.discriminator import Discriminator
from tkh.models.embedder import Embedder
from tkh.models.generator import Generator

__all__ = ["FORMAT", "PAPER_COUNTS", "REIMPL_COUNTS", "TalkingHeadModel", "config_differences", "describe",
           "param_counts"]

FORMAT = "tkh.TalkingHeadModel/1"  # written into every checkpoint's header

# Rounded parameter counts usually quoted for the paper's 256-px networks (gathered from public summaries and
# re-implementations, not numbers checked in the paper's text), and those measured on one public
# re-implementation at 256 px.
PAPER_COUNTS = {"E": 15.0e6, "G": 38.0e6, "D": 20.0e6}
REIMPL_COUNTS = {"E": 14.9e6, "G": 38.2e6, "D": 19.6e6}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TalkingHeadModel(nn.Module):
    """E, G and D of one experiment, with its `Config` (sec. 3).

    num_videos is the number of rows of D's W (one per training video); 0 for a model shipped for
    few-shot use only, where W is not needed (sec. 3.3 uses w0 + ê_NEW instead of W_i).
    """

    def __init__(self, cfg: Config, num_videos: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_videos = int(num_videos)
        self.E = Embedder(cfg.model)
        self.G = Generator(cfg.model)
        self.D = Discriminator(cfg.model, self.num_videos)
        self.meta: dict[str, Any] = {}  # the free-form `meta` of the checkpoint it was loaded from

    def param_counts(self) -> dict[str, int]:
        """Parameters per network: E, G (P included), G.P, D (W excluded), D.W, total."""
        return {
            "E": _count(self.E),
            "G": _count(self.G),
            "G.P": self.G.P.weight.numel(),
            "D": _count(self.D) - self.D.W.numel(),
            "D.W": self.D.W.numel(),
            "total": _count(self),
        }

    # --- checkpoints ---------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike,
        meta: dict[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        keep_video_embeddings: bool = True,
    ) -> Path:
        """Write every weight and buffer to a safetensors file, atomically.

        The header's metadata holds the format tag, the `Config` as JSON, num_videos and `meta` (JSON).
        dtype=torch.float16 halves the file (the shipped weights); `load` returns float32 regardless.
        keep_video_embeddings=False drops D's W (not needed for few-shot use, sec. 3.3).
        """
        path = Path(path)
        state = {}
        for name, t in self.state_dict().items():
            if name == "D.W" and not keep_video_embeddings:
                t = t[:0]
            t = t.detach().to("cpu")
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            state[name] = t.contiguous().clone()
        header = {
            "format": FORMAT,
            "config": json.dumps(self.cfg.to_dict()),
            "num_videos": str(state["D.W"].shape[0]),
            "meta": json.dumps(meta or {}),
        }
        return save_safetensors(state, path, metadata=header)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        strict_config: Config | None = None,
    ) -> TalkingHeadModel:
        """Rebuild a model from `save`'s file. CheckpointError (one line) for a missing, truncated or
        corrupt file, or when `strict_config` is given and its model section differs from the file's."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found; check the path or download the weights again")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for truncation / bad headers
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                "re-download or re-save it"
            ) from None
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{path} is a safetensors file but not a tkh checkpoint (no '{FORMAT}' header); pass a "
                                  "model written by `tkh train` or a shipped name (not an adapted portrait)")
        try:
            cfg = Config.from_dict(json.loads(header["config"]), source=str(path))
            num_videos = int(header.get("num_videos", state["D.W"].shape[0]))
            meta = json.loads(header.get("meta", "{}"))
        except (ConfigError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} has an unreadable config header ({exc}); re-save it") from None
        if strict_config is not None:
            diff = config_differences(cfg.model, strict_config.model)
            if diff:
                raise CheckpointError(
                    f"checkpoint {path} was saved with another model config ({diff}); "
                    "use the config it was trained with, or load without strict_config"
                )
            cfg = strict_config
        model = cls(cfg, num_videos)  # on the CPU: spectral norm's init runs its power iteration
        try:
            # load_state_dict copies into the model's own (aligned) float32 tensors; file tensors may be
            # unaligned, which would change the BLAS path and so the last bits of the results.
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except RuntimeError:
            raise CheckpointError(f"checkpoint {path} does not match its own config ({_mismatch(model, state)}); "
                                  "re-save it, or use the checkpoint that goes with this config") from None
        model.meta = meta
        return model.to(map_location)


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """A short summary of how a state dict differs from a model's (torch's own message lists every key)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [k for k in want if k in state and tuple(want[k].shape) != tuple(state[k].shape)]
    parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
             (("missing tensors", missing), ("unexpected tensors", extra), ("tensors of another shape", shapes)) if v]
    return ", ".join(parts) or "tensors differ"


def config_differences(saved: ModelConfig, expected: ModelConfig) -> str:
    """'model.image_size: 128 in the file, 64 expected; ...' or '' when equal."""
    a, b = vars(saved), vars(expected)
    parts = [f"model.{k}: {a[k]!r} in the file, {b[k]!r} expected" for k in a if a[k] != b.get(k)]
    return "; ".join(parts)


def param_counts(cfg: Config | ModelConfig, num_videos: int = 0) -> dict[str, int]:
    """Parameter counts of the networks a config builds (built on the meta device: no memory used)."""
    model_cfg = cfg if isinstance(cfg, ModelConfig) else cfg.model
    # Spectral norm adds buffers (u, v) but no parameters: build without it, on the meta device (no memory,
    # and no power iteration, which is slow there).
    model_cfg = ModelConfig(**{**vars(model_cfg), "spectral_norm": False})
    with torch.device("meta"):
        return TalkingHeadModel(Config(model=model_cfg), num_videos).param_counts()


def describe(cfg: Config | ModelConfig, num_videos: int = 0) -> str:
    """A table of parameters per network, its fp16 size, and the paper's counts for comparison."""
    counts = param_counts(cfg, num_videos)
    model_cfg = cfg if isinstance(cfg, ModelConfig) else cfg.model
    rows = [f"{'network':<22}{'params':>12}{'fp16 MiB':>10}{'paper':>9}{'re-impl.':>10}"]
    labels = {"E": "E (embedder)", "G": "G (generator, with P)", "G.P": "  of which P", "D": "D (without W)",
              "D.W": f"D.W ({num_videos} videos)", "total": "total"}
    for key, label in labels.items():
        n = counts[key]
        paper = f"{PAPER_COUNTS[key] / 1e6:.0f}M" if key in PAPER_COUNTS else ""
        reimpl = f"{REIMPL_COUNTS[key] / 1e6:.1f}M" if key in REIMPL_COUNTS else ""
        rows.append(f"{label:<22}{n / 1e6:>11.2f}M{n * 2 / 2**20:>10.1f}{paper:>9}{reimpl:>10}")
    head = (f"{model_cfg.name}: {model_cfg.image_size}px, widths {model_cfg.base_channels}->{model_cfg.max_channels}, "
            f"N={model_cfg.embed_dim}, bottleneck {model_cfg.gen_res_blocks}x{model_cfg.bottleneck_size}^2")
    return "\n".join([head, *rows])
