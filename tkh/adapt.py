"""Few-shot adaptation of a meta-trained model to a new face (Zakharov et al. 2019, sec. 3.3).

Given T images of a new person (T = 1, 8, 32; they may differ in pose), each image gets its landmarks
(`tkh.landmarks.detect`) and exactly the crop used in meta-training (`tkh.landmarks.crop` at the model's
image_size, default margin and shift), then:

- Feed-forward (FF): ê_NEW = 1/T Σ_t E(x_t, y_t) and frames are rendered as G(y, ê_NEW), i.e. with the
  AdaIN parameters ψ̂ = P·ê_NEW. No training.
- Fine-tuning (FT): the person-specific AdaIN parameters become a free parameter ψ' initialised from
  P·ê_NEW, and the discriminator's projection vector becomes w' = w0 + ê_NEW (W_i is unknown for a new
  person, b is kept). G (with ψ') and D (with w') are then trained on the T images with
  L_CNT + L_ADV (no L_MCH: there is no W_i), from the meta-learned weights, with Adam at the
  `AdaptConfig` learning rates. E is not trained (ê_NEW is only an initialisation).

`AdaptedPortrait.save` writes a small safetensors file with only what changed: ψ' and ê (and, after FT,
the difference G_ft − G_base in fp16, P excluded since ψ' replaces P·ê), the crops' landmarks and boxes,
one crop for display, and the base weights' name and sha256; `AdaptedPortrait.load(path)` rebuilds it
in one call, refusing (CheckpointError) a base whose sha256 differs.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tkh import precision
from tkh.atomic import save_safetensors
from tkh.config import AdaptConfig
from tkh.errors import BadInputError, CheckpointError
from tkh.landmarks import CropTransform, crop, detect, rasterize
from tkh.media import load_image
from tkh.tensors import to_tensor, to_uint8
from tkh.train.objectives import FineTuneStep
from tkh.train.step import NonFiniteGuard, StepContext, make_phases, run_step

__all__ = ["AdaptedPortrait", "FORMAT", "adapt", "finetune_from_cli", "init_finetune", "prepare_images", "to_tensor",
           "to_uint8"]

FORMAT = "tkh.AdaptedPortrait/1"
UPSCALE_WARN = 1.5  # warn when a portrait's face crop is upscaled more than this to the model's size


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
# Inputs
# ---------------------------------------------------------------------------------------------
@dataclass
class PreparedImages:
    """The T adaptation images after landmark detection and the training crop."""

    source_images: list[np.ndarray]   # originals, RGB uint8
    landmarks: list[np.ndarray]       # (68, 2) in the originals' pixels
    crops: np.ndarray                 # (T, S, S, 3) uint8
    crop_landmarks: np.ndarray        # (T, 68, 2) float32, crop pixels
    transforms: list[CropTransform]   # crop <-> original, one per image


def prepare_images(images: Sequence[Any] | Any, size: int, landmarks: Sequence[np.ndarray] | None = None,
                   backend: str = "auto", box: Any = None, face: Any = None) -> PreparedImages:
    """Load, detect (unless `landmarks` are given, in the originals' pixels) and crop each image like training.

    box / face: as `tkh.landmarks.detect` takes them, one per image for several (None = detect / the largest)."""
    if isinstance(images, (str, os.PathLike, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    images = list(images)
    if not images:
        raise BadInputError("adapt: no images given; pass at least one image of the face")
    names = [str(im) if isinstance(im, (str, os.PathLike)) else f"image {i}" for i, im in enumerate(images)]
    srcs = [load_image(im, name=n) for im, n in zip(images, names)]
    if landmarks is None:
        from tkh.landmarks.faces import per_image

        landmarks = [detect(im, backend=backend, name=n, box=b, face=f) for im, n, b, f in
                     zip(srcs, names, per_image(box, len(srcs), "box"), per_image(face, len(srcs), "face"))]
    if len(landmarks) != len(srcs):
        raise BadInputError(f"adapt: {len(srcs)} images but {len(landmarks)} landmark arrays")
    crops, clms, ts = [], [], []
    for im, lm, name in zip(srcs, landmarks, names):
        c, cl, t = crop(im, lm, size)  # the one crop of tkh.landmarks, as in meta-training (tkh.data)
        if t.side * UPSCALE_WARN < size:  # handled (upscaled), but the user should know why it looks soft
            import warnings

            warnings.warn(f"{name}: the face crop is only {t.side} px but the model works at {size} px; it was "
                          "upscaled, so expect a blurry result — use a larger photo of the face", stacklevel=2)
        crops.append(c)
        clms.append(cl)
        ts.append(t)
    return PreparedImages(srcs, [np.asarray(lm, np.float32) for lm in landmarks], np.stack(crops),
                          np.stack(clms).astype(np.float32), ts)


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
        from safetensors import safe_open

        from tkh import pretrained

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
            import copy

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
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _decode_jpeg(data: bytes) -> np.ndarray:
    return load_image(data, name="adapted portrait's source image")


# ---------------------------------------------------------------------------------------------
# adapt
# ---------------------------------------------------------------------------------------------
def _perceptual(model, cfg: AdaptConfig, device: torch.device):
    """L_CNT's networks for fine-tuning: by default those loadable offline (adaptation never downloads)."""
    import dataclasses

    from tkh.losses import PerceptualLoss

    loss_cfg = model.cfg.loss
    if cfg.perceptual == "offline":
        from tkh.nets import available_perceptual

        have = available_perceptual()
        imagenet = next((n for n in ("vgg19", "vgg16") if n in have), None)
        face = "dlib" in have and loss_cfg.face_network == "dlib"  # VGGFace needs the user's file
        choice = f"{imagenet}+face" if imagenet and face else imagenet or ("face" if face else "none")
        loss_cfg = dataclasses.replace(loss_cfg, perceptual=choice)
    elif cfg.perceptual:
        loss_cfg = dataclasses.replace(loss_cfg, perceptual=cfg.perceptual)
    return PerceptualLoss(loss_cfg, device=device), loss_cfg


def init_finetune(model, e_hat: torch.Tensor, device: torch.device | str | None = None):
    """The fine-tuning start of sec. 3.3, from ê_NEW (N,): copies of G and D and their new free parameters.

    Returns (G, D, psi, w, g_params, d_params): ψ' = P·ê_NEW (n_adain,) replaces G's projection (P gets
    no gradient); w' = w0 + ê_NEW (N,) replaces the unknown row W_i + w0 of D's score (W and w0 get no
    gradient, b and D's θ are trained). g_params / d_params: what the G and D optimisers step. E is not
    among them. The meta-trained model is not modified.
    """
    import copy

    device = torch.device(device) if device is not None else e_hat.device
    e_hat = e_hat.detach().float().to(device)
    G = copy.deepcopy(model.G).to(device).train().requires_grad_(True)
    G.P.requires_grad_(False)  # unused: ψ' replaces P·ê
    with torch.no_grad():
        psi = nn.Parameter(G.adain_params(e_hat[None]).float()[0].clone())   # ψ' ← P·ê_NEW
    D = copy.deepcopy(model.D).to(device).train().requires_grad_(True)
    D.W.requires_grad_(False)  # the training videos' rows: unused for a new person
    D.w0.requires_grad_(False)  # folded into w'
    w = nn.Parameter((D.w0.detach() + e_hat).clone())                       # w' ← w0 + ê_NEW
    g_params = [p for p in G.parameters() if p.requires_grad] + [psi]
    d_params = [p for p in D.parameters() if p.requires_grad] + [w]
    return G, D, psi, w, g_params, d_params


def adapt(model, images: Sequence[Any] | Any, mode: str | None = None, steps: int | None = None,
          cfg: AdaptConfig | None = None, progress: bool = True, device: str | torch.device | None = None,
          landmarks: Sequence[np.ndarray] | None = None, backend: str = "auto", box: Any = None,
          face: Any = None) -> AdaptedPortrait:
    """Adapt a meta-trained `TalkingHeadModel` to the face in `images` (sec. 3.3).

    images: one image or a list of T (paths, arrays, PIL); landmarks: optional (68, 2) per image (in its
    pixels) to skip detection; box: the face's (x, y, w, h) given by hand where no detector finds it, and
    face=N the N-th largest of several (one per image for several images, None = detect). mode "ff" |
    "ft" and steps override `cfg` (default: the model's `cfg.adapt`). device: where to run (default: the
    model's). FT shows a tqdm bar when `progress`. Returns an `AdaptedPortrait`; the base model is not modified.
    """
    import copy
    import dataclasses

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg or model.cfg.adapt)
    if mode is not None:
        cfg = dataclasses.replace(cfg, mode=mode)
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=int(steps))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = model.cfg.model.image_size
    prep = prepare_images(images, size, landmarks=landmarks, backend=backend, box=box, face=face)
    policy = precision.resolve(cfg.amp, cfg.channels_last, device, model.cfg.model)
    x = policy.tensor(to_tensor(prep.crops).to(device))                          # (T, 3, S, S)
    y = policy.tensor(landmark_images(prep.crop_landmarks, size).to(device))     # (T, 3, S, S)

    E, G_base = model.E.to(device).eval(), model.G.to(device)
    with torch.inference_mode(), policy.autocast():
        e_hat = E.embed_frames(x, y).float().mean(0)              # ê_NEW = 1/T Σ_t E(x_t, y_t)   (N,)
        psi0 = G_base.adain_params(e_hat[None]).float()[0]        # ψ̂ = P·ê_NEW                 (n_adain,)
    e_hat, psi0 = e_hat.clone(), psi0.clone()

    name = getattr(model, "weights_name", model.cfg.model.name)
    sha = getattr(model, "weights_sha256", "")
    out = AdaptedPortrait(model_name=name, model_sha256=sha, cfg=cfg, image_size=size, G=G_base.eval(), psi=psi0,
                          e_hat=e_hat, crops=prep.crops, crop_landmarks=prep.crop_landmarks,
                          transforms=prep.transforms, source_images=prep.source_images, base_G=G_base)
    if cfg.mode == "ff" or cfg.steps == 0:
        out.seconds = time.perf_counter() - t0
        return out

    # --- FT (sec. 3.3): ψ' ← P·ê and w' ← w0 + ê become free parameters; G and D are trained ---------
    # The adversarial step of meta-learning (tkh.train.step) with FT's parameters, losses (no L_MCH: there
    # is no W_i for a new person) and D/G ratio; a non-finite step is skipped and counted as there.
    G, D, psi, w, g_params, d_params = init_finetune(model, e_hat, device)
    policy.prepare(G), policy.prepare(D)
    optimizers = {"G": torch.optim.Adam(g_params, lr=cfg.lr_g, betas=cfg.betas),
                  "D": torch.optim.Adam(d_params, lr=cfg.lr_d, betas=cfg.betas)}
    perceptual, loss_cfg = _perceptual(model, cfg, device)
    objective = FineTuneStep(G, D, psi, w, perceptual, loss_cfg)
    ctx = StepContext(policy, d_params, objective, device=device)  # D's θ, b and w': constants of the G phase
    phases, guard = make_phases(cfg.d_steps_per_g), NonFiniteGuard(cfg.max_nonfinite, "fine-tuning step")
    gen = torch.Generator().manual_seed(cfg.seed)
    T, bs = x.shape[0], min(cfg.batch_size, x.shape[0])
    bar = tqdm(range(cfg.steps), desc=f"fine-tuning ({T} shot{'s' * (T > 1)})", disable=not progress, leave=False)
    for step in bar:
        if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
            warnings.warn(f"fine-tuning stopped by its time cap (adapt.max_seconds={cfg.max_seconds:g}) after {step} "
                          f"of {cfg.steps} steps: the machine is slower or busier than planned, so the result fits "
                          "the images less closely; raise the cap or lower adapt.steps", RuntimeWarning, stacklevel=2)
            break
        idx = torch.randperm(T, generator=gen)[:bs].to(device)
        result = run_step(phases, objective, optimizers, {"target": x[idx], "target_landmarks": y[idx]}, ctx)
        guard.update(result.ok, result.parts, step + 1)
        guard.check("lower adapt.lr_g / adapt.lr_d or use adapt.amp=off")
        rec = {k[2:]: v for k, v in result.parts.items() if k.startswith("G_")}
        rec.update({f"d_{k[2:]}": v for k, v in result.parts.items() if k.startswith("D_")})
        rec.setdefault("d_total", math.nan)
        out.history.append(rec)
        bar.set_postfix(g=f"{rec['total']:.3f}", d=f"{rec['d_total']:.3f}")
    G.eval().requires_grad_(False)
    out.G, out.psi = G, psi.detach()
    out.seconds = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------
# CLI: tkh finetune
# ---------------------------------------------------------------------------------------------
def default_device() -> torch.device:
    """CUDA when available (the command line's default), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _first(values: Any, n: int) -> Any:
    """The values (--box / --face) of the first n images, when one was given per image."""
    return values[:n] if isinstance(values, list) and n < len(values) else values


def finetune_from_cli(args) -> None:
    """`tkh finetune --model NAME_OR_PATH --images IMG... [--shots K] [--steps N] [--mode ff|ft] --out FILE`."""
    from tkh import pretrained

    device = torch.device(args.device) if getattr(args, "device", None) else default_device()
    model = pretrained.load(args.model, map_location=device)
    images = args.images[: args.shots] if args.shots else args.images
    mode = getattr(args, "mode", None) or ("ff" if args.steps == 0 else None)
    box, face = (_first(getattr(args, k, None), len(images)) for k in ("box", "face"))  # --shots keeps the first
    adapted = adapt(model, images, mode=mode, steps=args.steps, device=device, box=box, face=face)
    path = adapted.save(args.out)
    print(f"tkh finetune: {adapted.mode.upper()} on {len(images)} image(s) in {adapted.seconds:.1f}s, "
          f"reconstruction error {adapted.reconstruction_error():.4f}; wrote {path} "
          f"({path.stat().st_size / 2**20:.2f} MiB)")
