"""An adapted portrait (sec. 3.3): the generator and ψ' one face is rendered with, and its small file.

`AdaptedPortrait.save` writes a safetensors file with only what changed: ψ' and ê (and, after FT, the
difference G_ft − G_base in fp16, P excluded since ψ' replaces P·ê), the crops' landmarks and boxes, one
crop for display, the user's first image, and the base weights' name and sha256;
`AdaptedPortrait.load(path)` rebuilds it in one call, refusing (CheckpointError) a base whose sha256
differs. `landmark_images` draws the landmark images y that G is driven by. `tkh.adapt.adapt` makes one.
"""

from __future__ import annotations

import copy
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn

from tkh import precision, pretrained
from tkh.atomic import save_safetensors
from tkh.config import AdaptConfig
from tkh.errors import BadInputError, CheckpointError
from tkh.landmarks import CropTransform, rasterize
from tkh.media import load_image
from tkh.tensors import to_tensor, to_uint8

__all__ = ["FORMAT", "AdaptedPortrait", "landmark_images"]

FORMAT = "tkh.AdaptedPortrait/1"


# ---------------------------------------------------------------------------------------------
# Landmark images (tensors <-> images: tkh.tensors, the tkh convention float (B, 3, H, W) in [-1, 1])
# ---------------------------------------------------------------------------------------------
def landmark_images(landmarks: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Landmark images y for crop-pixel landmarks (68, 2) or (B, 68, 2) -> (B, 3, size, size) in [-1, 1].

    Drawn with `tkh.landmarks.rasterize` (cv2), the function that made the training data's y.
    """
    lms = landmarks.detach().cpu().numpy() if isinstance(landmarks, torch.Tensor) else np.asarray(landmarks)
    if lms.ndim == 2:
        lms = lms[None]
    if lms.ndim != 3 or lms.shape[1:] != (68, 2):
        raise BadInputError(f"landmarks: expected shape (68, 2) or (B, 68, 2), got {lms.shape}")
    return to_tensor(np.stack([rasterize(p, size) for p in lms]))


# ---------------------------------------------------------------------------------------------
# The adapted portrait
# ---------------------------------------------------------------------------------------------
@dataclass
class AdaptedPortrait:
    """A meta-trained model specialised to one face (sec. 3.3).

    G: the generator to render with (the base model's G after FF, a fine-tuned copy after FT).
    psi: ψ' (n_adain,) the person's AdaIN parameters; e_hat: ê_NEW (N,).
    crops (T, S, S, 3) uint8, crop_landmarks (T, 68, 2), transforms: per adaptation image.
    render(landmarks_crop) draws y and returns G(y; ψ') as uint8.
    """

    model_name: str
    model_sha256: str
    cfg: AdaptConfig
    image_size: int
    G: nn.Module
    psi: torch.Tensor
    e_hat: torch.Tensor
    crops: np.ndarray
    crop_landmarks: np.ndarray
    transforms: list[CropTransform]
    source_images: list[np.ndarray] = field(default_factory=list)
    base_G: nn.Module | None = None       # the meta-trained G (for the diff written by `save`)
    history: list[dict[str, float]] = field(default_factory=list)  # FT losses per step
    seconds: float = 0.0                  # time adaptation took
    precision: str = ""                   # how it ran (tkh.precision's verdict), for logs

    @property
    def mode(self) -> str:
        return self.cfg.mode

    @property
    def device(self) -> torch.device:
        return self.psi.device

    @torch.inference_mode()
    def render_tensor(self, y: torch.Tensor) -> torch.Tensor:
        """x̂ = G(y; ψ'): y (B, 3, S, S) in [-1, 1] -> (B, 3, S, S) in [-1, 1]."""
        self.G.eval()
        policy = precision.resolve(self.cfg.amp, self.cfg.channels_last, self.device, self.G.cfg)
        with policy.autocast():
            return self.G.render(policy.tensor(y.to(self.device)), self.psi).float()

    def render(self, landmarks_crop: np.ndarray | torch.Tensor, batch_size: int = 16) -> np.ndarray:
        """Frames for crop-pixel landmarks: (68, 2) -> uint8 (S, S, 3); (B, 68, 2) -> (B, S, S, 3)."""
        lms = landmarks_crop.detach().cpu().numpy() if isinstance(landmarks_crop, torch.Tensor) else np.asarray(
            landmarks_crop, dtype=np.float32)
        single = lms.ndim == 2
        lms = lms[None] if single else lms
        out = [to_uint8(self.render_tensor(landmark_images(lms[i:i + batch_size], self.image_size)))
               for i in range(0, len(lms), batch_size)]
        frames = np.concatenate(out)
        return frames[0] if single else frames

    def reconstruction_error(self) -> float:
        """Mean |x − G(y_t; ψ')| over the T adaptation crops, in [0, 2] units (sec. 3.3's fit to the T images)."""
        fake = self.render_tensor(landmark_images(self.crop_landmarks, self.image_size))
        return float((fake.cpu() - to_tensor(self.crops)).abs().mean())

    # --- saving ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the adaptation (only what changed) to a small safetensors file, atomically.

        Stored: ψ', ê, the T crop landmarks and crop boxes, the first crop (display), and after FT the
        fp16 difference G_ft − G_base of every changed tensor except P (ψ' replaces P·ê); the header holds
        the base weights' name and sha256, the AdaptConfig and timings.
        """
        path = Path(path)
        tensors: dict[str, torch.Tensor] = {
            "psi": self.psi.detach().float().cpu().contiguous(),
            "e_hat": self.e_hat.detach().float().cpu().contiguous(),
            "crop_landmarks": torch.from_numpy(np.ascontiguousarray(self.crop_landmarks, np.float32)),
            "crop0": torch.from_numpy(np.ascontiguousarray(self.crops[0])),
        }
        if self.source_images:  # the user's own first image (JPEG), so paste-back works after `load`
            tensors["source0_jpeg"] = torch.frombuffer(bytearray(_jpeg_bytes(self.source_images[0])), dtype=torch.uint8)
        if self.mode == "ft" and self.base_G is not None and self.G is not self.base_G:
            base = self.base_G.state_dict()
            for k, v in self.G.state_dict().items():
                if k == "P.weight" or not v.is_floating_point():
                    continue
                d = (v.detach().float() - base[k].detach().float().to(v.device)).cpu()
                if torch.count_nonzero(d):
                    tensors[f"G_diff.{k}"] = d.half().contiguous()
        header = {
            "format": FORMAT,
            "base_name": self.model_name,
            "base_sha256": self.model_sha256,
            "adapt_config": json.dumps(asdict(self.cfg)),
            "image_size": str(self.image_size),
            "transforms": json.dumps([asdict(t) for t in self.transforms]),
            "seconds": f"{self.seconds:.3f}",
        }
        return save_safetensors(tensors, path, metadata=header)

    @classmethod
    def load(cls, path: str | os.PathLike, base=None, map_location: str | torch.device = "cpu") -> AdaptedPortrait:
        """Rebuild an adapted portrait from `save`'s file. The base weights are found by their name
        (`tkh.pretrained.load`) unless `base` (a TalkingHeadModel) is given; their sha256 must match."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"adapted portrait {path} not found; run `tkh finetune` to make one")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 — safetensors' own error types for truncation
            raise CheckpointError(f"adapted portrait {path} is truncated or corrupt ({type(exc).__name__}); "
                                  "run `tkh finetune` again") from None
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an adapted portrait (no '{FORMAT}' header); "
                                  "`tkh animate --model` takes the file written by `tkh finetune`")
        if base is None:
            try:
                base = pretrained.load(header["base_name"], map_location=map_location)
            except Exception as exc:  # noqa: BLE001 — say which base is missing, in one line
                raise CheckpointError(f"{path} was adapted from {header['base_name']!r}, which cannot be loaded "
                                      f"({exc}); pass base= or restore those weights") from None
        sha = getattr(base, "weights_sha256", None)
        if sha != header["base_sha256"]:
            raise CheckpointError(f"{path} was adapted from weights with sha256 {header['base_sha256'][:12]}…, "
                                  f"but the base model has {str(sha)[:12]}…; use the same base weights "
                                  f"({header['base_name']}) or adapt again")
        cfg = AdaptConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in json.loads(header["adapt_config"]).items()})
        G = base.G
        diffs = {k[len("G_diff."):]: v for k, v in t.items() if k.startswith("G_diff.")}
        if diffs:
            G = copy.deepcopy(base.G)
            state = G.state_dict()
            for k, d in diffs.items():
                state[k] = state[k] + d.float().to(state[k].device)
            G.load_state_dict(state)
        G.eval()
        sources = [_decode_jpeg(t["source0_jpeg"].numpy().tobytes())] if "source0_jpeg" in t else []
        transforms = [CropTransform(**{**d, "src_shape": tuple(d["src_shape"])})
                      for d in json.loads(header["transforms"])]
        dev = next(base.parameters()).device
        return cls(model_name=header["base_name"], model_sha256=header["base_sha256"], cfg=cfg,
                   image_size=int(header["image_size"]), G=G, psi=t["psi"].to(dev), e_hat=t["e_hat"].to(dev),
                   crops=t["crop0"].numpy()[None], crop_landmarks=t["crop_landmarks"].numpy(),
                   transforms=transforms, source_images=sources, base_G=base.G, seconds=float(header.get("seconds", 0)))


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _decode_jpeg(data: bytes) -> np.ndarray:
    return load_image(data, name="adapted portrait's source image")
