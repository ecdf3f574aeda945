"""Quantitative evaluation of few-shot adaptation and reenactment (Zakharov et al. 2019, sec. 4).

Two protocols, one function each, both returning a plain dict (JSON-ready):

- `evaluate_cross(model, portrait, driver)`: adapt to a portrait (1 or T images; FF or FT), reenact a
  driving video of *another* person through `tkh.animate.transfer_motion`, and measure
    * CSIM: cosine similarity of identity embeddings (`tkh.metrics.csim`, dlib's network) between the
      portrait's crop and every generated frame — does the result still look like the portrait?
    * landmark error: landmarks detected on the generated frames vs the driving landmarks after
      normalisation (the track G was asked to follow), divided by the inter-ocular distance
      (`tkh.metrics.landmark_error`) — does the result follow the driver? Frames where no face is
      detected are counted in `detected_fraction` and left out of the mean.
    * time: adaptation and rendering seconds.
- `evaluate_self(model, video, shots=K)`: the paper's self-reenactment protocol: adapt on K frames of a
  video and reconstruct *held-out* frames of the same video from their own landmarks, adding SSIM and
  PSNR against the real (cropped) frames and CSIM real vs generated.

The driving video must show a face in most frames (`tkh.landmarks.coverage`, as for `tkh animate`): fewer
than `min_face_fraction` (default half) is refused before anything is adapted; only frames with a real,
vetted detection are evaluated, and the metrics name the fraction (`driver_faces`). With `progress` each
stage shows a tqdm bar: landmark detection, fine-tuning (FT), rendering, metrics.

Identity embeddings of generated frames are aligned with the landmarks G was given (a small generated
face is not always found by dlib's detector; the driving landmarks are the right alignment anyway).
Our CSIM uses dlib's face network, the paper's another one: comparable in spirit, not in absolute value.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from tkh import pretrained
from tkh.adapt import adapt, default_device
from tkh.animate import load_driver, transfer_motion
from tkh.atomic import write_json
from tkh.errors import BadInputError, WeightsUnavailableError
from tkh.landmarks import crop, detect, detect_video
from tkh.landmarks.coverage import MIN_FACE_FRACTION, face_coverage, require_faces
from tkh.media import iter_video
from tkh.metrics import (
    DLIB_SAME_PERSON,
    csim,
    identity_distance,
    identity_embedding,
    landmark_error,
    lpips,
    palette_fraction,
    psnr,
    ssim,
)

__all__ = ["evaluate", "evaluate_cross", "evaluate_from_cli", "evaluate_self", "detect_generated"]

DETECT_SIZE = 256  # generated crops are upscaled to this before landmark detection (HOG misses small faces)
CHUNK = 16  # frames per rendering / metrics step (one tqdm tick)


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def detect_generated(frames: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Landmarks of generated crops (B, S, S, 3) in crop pixels (B, 68, 2), NaN where no face is found."""
    s = frames.shape[1]
    big = [cv2.resize(f, (DETECT_SIZE, DETECT_SIZE), interpolation=cv2.INTER_CUBIC) for f in frames]
    found = detect(big, backend=backend, on_missing="none", cnn=False)  # HOG only, as the metric was defined
    out = np.full((len(frames), 68, 2), np.nan, np.float32)
    for i, p in enumerate(found):
        if p is not None:
            out[i] = np.asarray(p, np.float32) * (s / DETECT_SIZE)
    return out


def _chunked(fn: Callable[..., Any], arrays: tuple[np.ndarray, ...], desc: str, progress: bool) -> list[np.ndarray]:
    """fn(*slices) over CHUNK frames at a time, with a tqdm bar in frames; each of fn's outputs concatenated."""
    parts: list[tuple[np.ndarray, ...]] = []
    n = len(arrays[0])
    with tqdm(total=n, desc=desc, unit="frame", disable=not progress, leave=False) as bar:
        for start in range(0, n, CHUNK):
            out = fn(*(a[start:start + CHUNK] for a in arrays))
            parts.append(out if isinstance(out, tuple) else (out,))
            bar.update(min(CHUNK, n - start))
    return [np.concatenate([np.atleast_1d(p[i]) for p in parts]) for i in range(len(parts[0]))]


def _identity(images: np.ndarray, landmarks: np.ndarray, device: str) -> np.ndarray:
    return np.atleast_2d(identity_embedding(list(images), landmarks=np.asarray(landmarks), device=device))


def _identity_summary(dists: np.ndarray) -> dict[str, float]:
    """Mean dlib descriptor distance to the source person and the fraction of frames dlib calls the same
    person (distance < 0.6; frames without a descriptor count as not)."""
    d = np.asarray(dists, dtype=np.float64)
    return {"identity_distance": _nanmean(d), "same_person_fraction": float(np.mean(d < DLIB_SAME_PERSON)) if len(d)
            else float("nan")}


def _summary(model, adapted, **extra: Any) -> dict[str, Any]:
    return {"model": getattr(model, "weights_name", model.cfg.model.name),
            "model_sha256": getattr(model, "weights_sha256", ""), "config": model.cfg.model.name,
            "image_size": model.cfg.model.image_size, "mode": adapted.mode,
            "steps": adapted.cfg.steps if adapted.mode == "ft" else 0, "adapt_seconds": round(adapted.seconds, 3),
            "device": str(adapted.device), "precision": adapted.precision,  # the times depend on it (tkh.precision)
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(), **extra}


def evaluate_cross(model, portrait: Any, driver: str | Path, mode: str = "ff", shots: int = 1,
                   steps: int | None = None, max_frames: int | None = 60, reference: str | int = "first",
                   device: str | torch.device | None = None, backend: str = "auto", progress: bool = False,
                   return_frames: bool = False, min_face_fraction: float = MIN_FACE_FRACTION, box: Any = None,
                   face: Any = None) -> dict[str, Any]:
    """Cross-person reenactment metrics (see the module docstring). portrait: one image or a list (first `shots`).

    box / face: the portrait's face given by hand / chosen among several, as `tkh.adapt.adapt` takes them."""
    t0 = time.perf_counter()
    images = portrait if isinstance(portrait, (list, tuple)) else [portrait]
    # the driver first: a video without a face is refused before minutes of fine-tuning
    track = load_driver(driver, backend=backend, max_frames=max_frames, min_face_fraction=min_face_fraction,
                        progress=progress)
    adapted = adapt(model, images[:shots], mode=mode, steps=steps, device=device, progress=progress,
                    backend=backend, box=box, face=face)
    lms = transfer_motion(track.landmarks, adapted.crop_landmarks[0], track.valid, reference)
    lms = lms[track.detected]  # frames filled in for animation are no measurement of the driver
    t1 = time.perf_counter()
    (frames,) = _chunked(adapted.render, (lms,), "rendering", progress)
    render_s = time.perf_counter() - t1
    dev = str(adapted.device)
    e_portrait = _identity(adapted.crops[:1], adapted.crop_landmarks[:1], dev)

    def metrics(f: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = _identity(f, lm, dev)
        return (np.atleast_1d(csim(e_portrait[0], e)), np.atleast_1d(identity_distance(e_portrait[0], e)),
                detect_generated(f, backend))

    sims, dists, found = _chunked(metrics, (frames, lms), "metrics", progress)
    err = np.atleast_1d(landmark_error(found, lms))
    out = _summary(model, adapted, protocol="cross", shots=len(images[:shots]), driver=str(driver),
                   driver_faces=track.coverage.as_dict() if track.coverage is not None else None,
                   frames=int(len(frames)), csim=_nanmean(sims), csim_std=float(np.nanstd(sims)),
                   **_identity_summary(dists), palette_fraction=_nanmean(palette_fraction(frames, lms)),
                   landmark_error=_nanmean(err), detected_fraction=float(np.isfinite(err).mean()),
                   render_seconds=round(render_s, 3), fps=round(len(frames) / max(render_s, 1e-9), 2),
                   seconds=round(time.perf_counter() - t0, 3))
    if return_frames:
        out["_frames"], out["_landmarks"], out["_adapted"] = frames, lms, adapted
    return out


def _pick(valid_idx: np.ndarray, shots: int, n_eval: int) -> tuple[np.ndarray, np.ndarray]:
    """K adaptation frames spread over the first half of the valid frames, held-out ones over the second."""
    if len(valid_idx) < shots + 1:
        raise BadInputError(f"the video has {len(valid_idx)} frames with a face; need at least {shots + 1} "
                            f"for {shots}-shot self-reenactment")
    half = max(shots, len(valid_idx) // 2)
    first, second = valid_idx[:half], valid_idx[half:]
    adapt_idx = first[np.linspace(0, len(first) - 1, shots).round().astype(int)]
    eval_idx = second[np.unique(np.linspace(0, len(second) - 1, min(n_eval, len(second))).round().astype(int))]
    return np.unique(adapt_idx), eval_idx


def evaluate_self(model, video: str | Path, shots: int = 8, mode: str = "ff", steps: int | None = None,
                  max_frames: int | None = 120, n_eval: int = 16, device: str | torch.device | None = None,
                  backend: str = "auto", progress: bool = False, return_frames: bool = False,
                  track: Any = None, min_face_fraction: float = MIN_FACE_FRACTION,
                  frames: Mapping[int, np.ndarray] | None = None, skip: Collection[str] = ()) -> dict[str, Any]:
    """Self-reenactment: adapt on `shots` frames of `video`, reconstruct `n_eval` held-out frames (sec. 4).

    Adds SSIM and PSNR (generated vs real crops, `tkh.metrics`), CSIM real vs generated and landmark
    error (detected on generated vs the real frame's landmarks, / inter-ocular).
    track: the video's landmarks, `tkh.landmarks.detect_video(video, max_frames=...)` or a
    `tkh.animate.load_driver(video)` Track, to reuse one detection across several calls (e.g. 1, 8, 32
    shots, FF and FT); detected here when None.
    frames: the video's frames by index (at least the adaptation and held-out ones, in `track`'s pixels),
    instead of decoding `video` (frames carried to a machine without ffmpeg: tools/gpu_prepare.py).
    skip: metric groups to leave out (None in the result) where their networks are missing, to compute later
    from the returned frames: "identity" (CSIM, identity distance, same-person fraction: dlib), "landmarks"
    (landmark error and detected fraction: a landmark detector on the generated frames), "lpips" (VGG16).
    """
    t0 = time.perf_counter()
    vl = track if track is not None else detect_video(video, backend=backend, max_frames=max_frames,
                                                      progress=progress, require_face=False)
    cov = getattr(vl, "coverage", None)  # a vetted tkh.animate.Track, or raw detections to vet here
    if cov is None:
        cov = require_faces(face_coverage(vl.landmarks, vl.valid, source=str(video)), min_face_fraction,
                            what="a video for self-reenactment")
    track, valid = np.asarray(vl.landmarks), cov.detected
    adapt_idx, eval_idx = _pick(np.flatnonzero(valid), shots, n_eval)
    need = set(adapt_idx.tolist()) | set(eval_idx.tolist())
    if frames is None:
        frames = {i: f for i, f in enumerate(iter_video(video, max_frames=int(max(need)) + 1)) if i in need}
    elif not need <= set(frames):
        raise BadInputError(f"{video}: frames {sorted(need - set(frames))} are needed but not given")
    adapted = adapt(model, [frames[i] for i in adapt_idx], mode=mode, steps=steps, device=device,
                    progress=progress, landmarks=[track[i] for i in adapt_idx])
    size = adapted.image_size
    real, lms = [], []
    for i in eval_idx:  # the held-out frames, cropped exactly like the adaptation images and training data
        c, cl, _ = crop(frames[i], track[i], size)
        real.append(c)
        lms.append(cl)
    real, lms = np.stack(real), np.stack(lms)
    t1 = time.perf_counter()
    (gen,) = _chunked(adapted.render, (lms,), "rendering", progress)
    render_s = time.perf_counter() - t1
    dev = str(adapted.device)

    identity, landmarks = "identity" not in skip, "landmarks" not in skip
    source = _identity(adapted.crops[:1], adapted.crop_landmarks[:1], dev)[0] if identity else None

    def metrics(r: np.ndarray, g: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        none = np.full(len(g), np.nan)
        e = _identity(g, lm, dev) if identity else None
        return (np.atleast_1d(csim(_identity(r, lm, dev), e)) if identity else none,
                np.atleast_1d(identity_distance(source, e)) if identity else none,
                detect_generated(g, backend) if landmarks else np.full((len(g), 68, 2), np.nan, np.float32))

    sims, dists, found = _chunked(metrics, (real, gen, lms), "metrics", progress)
    err = np.atleast_1d(landmark_error(found, lms))
    try:
        perceptual = {"lpips": None if "lpips" in skip else float(np.mean(lpips(real, gen, device=dev)))}
    except WeightsUnavailableError:  # VGG16 not fetched (`tkh fetch vgg16`): the other metrics still count
        perceptual = {"lpips": None}
    left_out = {**({} if identity else {"identity_distance": None, "same_person_fraction": None}),
                **({} if landmarks else {"detected_fraction": None})}
    out = _summary(model, adapted, protocol="self", shots=int(len(adapt_idx)), video=str(video),
                   driver_faces=cov.as_dict(),
                   adapt_frames=adapt_idx.tolist(), eval_frames=eval_idx.tolist(), frames=int(len(gen)),
                   ssim=float(np.mean(ssim(real, gen))), psnr=float(np.mean(psnr(real, gen))), **perceptual,
                   csim=_nanmean(sims), **_identity_summary(dists),
                   palette_fraction=_nanmean(palette_fraction(gen, lms)),
                   palette_fraction_real=_nanmean(palette_fraction(real, lms)), landmark_error=_nanmean(err),
                   detected_fraction=float(np.isfinite(err).mean()), render_seconds=round(render_s, 3),
                   seconds=round(time.perf_counter() - t0, 3))
    out.update(left_out, **({"skipped_metrics": sorted(skip)} if skip else {}))
    if return_frames:
        out["_real"], out["_frames"], out["_adapted"] = real, gen, adapted
    return out


def evaluate(model, driver: str | Path, portrait: Any = None, mode: str = "ff", shots: int = 1,
             self_reenact: bool = False, **kwargs: Any) -> dict[str, Any]:
    """`evaluate_self` when `self_reenact` (or no portrait), else `evaluate_cross`. Returns the metrics dict."""
    if self_reenact or portrait is None:
        return evaluate_self(model, driver, shots=shots, mode=mode, **kwargs)
    return evaluate_cross(model, portrait, driver, mode=mode, shots=shots, **kwargs)


def evaluate_from_cli(args) -> None:
    """`tkh evaluate --model NAME_OR_PATH (--portrait IMG | --self) --driver VIDEO [--mode] [--shots] --json OUT`."""
    if not args.self_reenact and not args.portrait:
        raise BadInputError("tkh evaluate needs --portrait IMG (cross-reenactment) or --self")
    device = torch.device(args.device) if getattr(args, "device", None) else default_device()
    model = pretrained.load(args.model, map_location=device)
    kwargs: dict[str, Any] = {"device": device, "steps": getattr(args, "steps", None), "progress": True,
                              "min_face_fraction": getattr(args, "min_face_fraction", MIN_FACE_FRACTION)}
    if getattr(args, "max_frames", None):
        kwargs["max_frames"] = args.max_frames
    if getattr(args, "box", None) is not None or getattr(args, "face", None) is not None:
        if args.self_reenact:
            raise BadInputError("--box and --face choose the portrait's face; --self has no portrait")
        kwargs.update(box=args.box, face=args.face)
    res = evaluate(model, args.driver, portrait=args.portrait, mode=args.mode, shots=args.shots,
                   self_reenact=args.self_reenact, **kwargs)
    write_json(args.json, res, indent=2)
    faces = res.get("driver_faces")
    if faces:
        print(f"tkh evaluate: driver {Path(args.driver).name}: a face in {faces['with_face']} of {faces['frames']} "
              f"frames ({faces['face_fraction']:.0%}); only those are evaluated")
    keys = [k for k in ("csim", "landmark_error", "ssim", "psnr", "seconds") if res.get(k) is not None]
    print("tkh evaluate: " + ", ".join(f"{k} {res[k]:.4g}" for k in keys) + f" -> {args.json}")
