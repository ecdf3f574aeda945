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

The result is an `AdaptedPortrait` (`tkh.adapted`: rendering, and its small file). FT is the adversarial
step of meta-learning (`tkh.train.step` with `tkh.train.objectives.FineTuneStep`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tkh import precision, pretrained
from tkh.adapted import FORMAT, AdaptedPortrait, landmark_images
from tkh.config import AdaptConfig
from tkh.errors import BadInputError
from tkh.landmarks import CropTransform, crop, detect
from tkh.landmarks.faces import per_image
from tkh.losses import PerceptualLoss
from tkh.media import load_image
from tkh.nets import available_perceptual
from tkh.tensors import to_tensor, to_uint8
from tkh.train.objectives import FineTuneStep
from tkh.train.step import NonFiniteGuard, StepContext, adam, make_phases, run_step

__all__ = ["AdaptedPortrait", "FORMAT", "adapt", "finetune_from_cli", "init_finetune", "landmark_images",
           "prepare_images", "to_tensor", "to_uint8"]

UPSCALE_WARN = 1.5  # warn when a portrait's face crop is upscaled more than this to the model's size


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
        landmarks = [detect(im, backend=backend, name=n, box=b, face=f) for im, n, b, f in
                     zip(srcs, names, per_image(box, len(srcs), "box"), per_image(face, len(srcs), "face"))]
    if len(landmarks) != len(srcs):
        raise BadInputError(f"adapt: {len(srcs)} images but {len(landmarks)} landmark arrays")
    crops, clms, ts = [], [], []
    for im, lm, name in zip(srcs, landmarks, names):
        c, cl, t = crop(im, lm, size)  # the one crop of tkh.landmarks, as in meta-training (tkh.data)
        if t.side * UPSCALE_WARN < size:  # handled (upscaled), but the user should know why it looks soft
            warnings.warn(f"{name}: the face crop is only {t.side} px but the model works at {size} px; it was "
                          "upscaled, so expect a blurry result — use a larger photo of the face", stacklevel=2)
        crops.append(c)
        clms.append(cl)
        ts.append(t)
    return PreparedImages(srcs, [np.asarray(lm, np.float32) for lm in landmarks], np.stack(crops),
                          np.stack(clms).astype(np.float32), ts)


# ---------------------------------------------------------------------------------------------
# adapt
# ---------------------------------------------------------------------------------------------
def _perceptual(model, cfg: AdaptConfig, device: torch.device):
    """L_CNT's networks for fine-tuning: by default those loadable offline (adaptation never downloads)."""
    loss_cfg = model.cfg.loss
    if cfg.perceptual == "offline":
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
                          transforms=prep.transforms, source_images=prep.source_images, base_G=G_base,
                          precision=policy.describe())
    if cfg.mode == "ff" or cfg.steps == 0:
        out.seconds = time.perf_counter() - t0
        return out

    # --- FT (sec. 3.3): ψ' ← P·ê and w' ← w0 + ê become free parameters; G and D are trained ---------
    # The adversarial step of meta-learning (tkh.train.step) with FT's parameters, losses (no L_MCH: there
    # is no W_i for a new person) and D/G ratio; a non-finite step is skipped and counted as there.
    G, D, psi, w, g_params, d_params = init_finetune(model, e_hat, device)
    policy.prepare(G), policy.prepare(D)
    optimizers = {"G": adam(g_params, lr=cfg.lr_g, betas=cfg.betas), "D": adam(d_params, lr=cfg.lr_d, betas=cfg.betas)}
    perceptual, loss_cfg = _perceptual(model, cfg, device)
    policy.prepare_frozen(perceptual)
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
        result = run_step(phases, objective, optimizers, {"target": x[idx], "target_landmarks": y[idx], "index": idx},
                          ctx)
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
    device = torch.device(args.device) if getattr(args, "device", None) else default_device()
    model = pretrained.load(args.model, map_location=device)
    images = args.images[: args.shots] if args.shots else args.images
    mode = getattr(args, "mode", None) or ("ff" if args.steps == 0 else None)
    box, face = (_first(getattr(args, k, None), len(images)) for k in ("box", "face"))  # --shots keeps the first
    adapted = adapt(model, images, mode=mode, steps=args.steps, device=device, box=box, face=face)
    path = adapted.save(args.out)
    # the precision verdict too: on a CPU it decides the time (bf16 ~2x faster where the CPU has bf16 units)
    print(f"tkh finetune: {adapted.mode.upper()} on {len(images)} image(s) in {adapted.seconds:.1f}s "
          f"({adapted.precision}), reconstruction error {adapted.reconstruction_error():.4f}; wrote {path} "
          f"({path.stat().st_size / 2**20:.2f} MiB)")
