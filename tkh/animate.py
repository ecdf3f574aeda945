"""Animate an adapted portrait: by a driving video, a landmark track, or a scripted sequence of edits.

G sees pose and expression only through the landmark image y (Zakharov et al. 2019, sec. 3.1), so every
driver is turned into a track of 68 landmarks in the portrait's crop pixels, then each frame is
G(y_t; ψ') (`AdaptedPortrait.render`).

Identity leakage and the normalisation (`transfer_motion`)
----------------------------------------------------------
Feeding the driver's own landmarks makes the portrait take the driver's face shape (jaw width, eye
distance, nose length): the paper's known weakness in cross-person reenactment (sec. 4.4). tkh transfers
only the driver's *motion*:

1. a reference frame of the driver is chosen (`reference`: its first frame, or "neutral" = the frame
   with the mouth most closed and the eyes most open), assumed to match the portrait's expression;
2. a similarity transform A (scale, rotation; Umeyama least squares on the rigid points: eye corners,
   nose bridge and base) maps the driver's reference face onto the portrait's landmarks;
3. frame t becomes  l_portrait + A · (l_driver(t) − l_driver(ref)):  the portrait's own shape plus the
   driver's displacement since the reference, rotated and scaled into the portrait's frame.

So the portrait keeps its face shape and position, and follows the driver's mouth, eyes, brows and head
motion.

A video or track driver needs a face in most frames (`tkh.landmarks.coverage`): detections that are not
face-shaped or jump in size are dropped, a driver with a face in fewer than `min_face_fraction` of its frames
(default half) is refused with one line naming the fraction found, and the frames without a face are
filled in (interpolated between the faces either side, held before the first and after the last);
`Track.coverage` and `animate`'s result say how many.

Scripted edits (`script_track`) come from `tkh.landmarks.edit` with cosine easing in and out of each
edit; the names are the table `SCRIPT_EDITS` below.

Outputs go through `tkh.media.write_video` (mp4 and/or gif), labelled synthetic in their metadata;
`caption` also burns a visible label into every frame. Video drivers are streamed (frames are read,
rendered and written in small chunks); only the landmark track (T×68×2 floats) is held whole. A gif is
held in memory by its encoder, so use mp4 for long drivers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tkh.errors import BadInputError
from tkh.landmarks import detect_video, edit, rasterize
from tkh.landmarks.coverage import MIN_FACE_FRACTION, FaceCoverage, face_coverage, require_faces
from tkh.media import copy_output, is_video, iter_video, load_image, write_video

__all__ = ["SCRIPT_EDITS", "Track", "animate", "animate_from_cli", "load_driver", "render_frames", "script_controls",
           "script_track", "similarity", "transfer_motion", "vetted"]

# Scripted edits: name -> the `tkh.landmarks.edit` controls at the edit's peak.
# Directions are the viewer's: turn_left turns the face towards the image's left.
SCRIPT_EDITS: dict[str, dict[str, float]] = {
    "smile": {"smile": 1.0},
    "frown": {"smile": -0.8},
    "blink": {"blink_left": 1.0, "blink_right": 1.0},
    "wink_left": {"blink_right": 1.0},   # the eye on the image's left is the subject's right
    "wink_right": {"blink_left": 1.0},
    "open_mouth": {"jaw_open": 0.8},
    "talk": {"jaw_open": 0.4},
    "raise_brows": {"brows": 1.0},
    "turn_left": {"yaw": -20.0},
    "turn_right": {"yaw": 20.0},
    "nod": {"pitch": 12.0},
    "look_up": {"pitch": -12.0},
    "tilt_left": {"roll": -15.0},
    "tilt_right": {"roll": 15.0},
}
DEFAULT_SCRIPT = "smile,blink,open_mouth,turn_left,turn_right"
RIGID_IDS = (36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35)  # eye corners, nose: barely move with expression


# ---------------------------------------------------------------------------------------------
# Tracks
# ---------------------------------------------------------------------------------------------
@dataclass
class Track:
    """A driver as landmarks: (T, 68, 2) in `space` pixels, per-frame validity, fps, and its source."""

    landmarks: np.ndarray        # (T, 68, 2) float32, NaN rows where no face (none once `vetted`)
    valid: np.ndarray            # (T,) bool: landmarks usable to drive (detected or filled in)
    fps: float
    kind: str                    # "video", "track" or "script"
    source: str                  # path or script text
    frame_size: tuple[int, int] | None = None  # (H, W) of the driver's frames (video / track files)
    coverage: FaceCoverage | None = None  # video / track drivers: faces found, rejected and filled in

    @property
    def detected(self) -> np.ndarray:
        """(T,) bool: frames with a real (vetted) detection, not filled in."""
        return self.coverage.detected if self.coverage is not None else self.valid


def vetted(track: Track, min_face_fraction: float = MIN_FACE_FRACTION) -> Track:
    """`track` with implausible detections dropped and the frames without a face filled in; NoFaceError (one
    line naming the fraction found) when fewer than `min_face_fraction` of its frames have a face."""
    cov = require_faces(face_coverage(track.landmarks, track.valid, source=track.source), min_face_fraction)
    return Track(cov.landmarks, np.ones(cov.frames, bool), track.fps, track.kind, track.source, track.frame_size,
                 coverage=cov)


def script_controls(script: str | Sequence[str], frames_per_edit: int = 16, hold: float = 0.25) -> list[dict[str, float]]:
    """Per-frame `edit` controls for a comma-separated script such as "smile,blink,open_mouth,turn_left".

    Each edit eases in (cosine), holds for `hold` of its frames, and eases out, so consecutive edits start
    and end at the neutral face. "name:0.5" scales an edit's strength.
    """
    names = [s.strip() for s in (script.split(",") if isinstance(script, str) else script) if s.strip()]
    if not names:
        raise BadInputError("script is empty; give edits such as smile,blink,open_mouth,turn_left")
    if frames_per_edit < 3:
        raise BadInputError(f"frames_per_edit must be at least 3, got {frames_per_edit}")
    out: list[dict[str, float]] = []
    n_hold = int(round(hold * frames_per_edit))
    n_ramp = max(1, (frames_per_edit - n_hold - 1) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, n_ramp + 1) / n_ramp)  # 0 -> 1, smooth (cosine ease)
    levels = np.concatenate([ramp, np.ones(n_hold), ramp[::-1][1:]])[: frames_per_edit - 1]
    levels = np.concatenate([levels, np.zeros(frames_per_edit - len(levels))])  # ends neutral, exactly F frames
    for item in names:
        name, _, gain = item.partition(":")
        if name not in SCRIPT_EDITS:
            raise BadInputError(f"unknown edit {name!r} in the script; known: {', '.join(SCRIPT_EDITS)}")
        try:
            g = float(gain) if gain else 1.0
        except ValueError:
            raise BadInputError(f"edit strength {gain!r} in {item!r} is not a number (e.g. smile:0.5)") from None
        out += [{k: float(v * g * a) for k, v in SCRIPT_EDITS[name].items()} for a in levels]
    return out


def script_track(landmarks: np.ndarray, script: str | Sequence[str], frames_per_edit: int = 16,
                 fps: float = 12.0) -> Track:
    """A scripted track on the portrait's own landmarks (68, 2): `edit` applied per frame."""
    pts = np.asarray(landmarks, np.float32)
    frames = np.stack([edit(pts, **c) for c in script_controls(script, frames_per_edit)])
    text = script if isinstance(script, str) else ",".join(script)
    return Track(frames.astype(np.float32), np.ones(len(frames), bool), fps, "script", text)


def load_track_file(path: str | os.PathLike) -> Track:
    """A landmark track written by `tkh landmarks VIDEO --out TRACK.npz` (key "landmarks", (T, 68, 2))."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path} is not a readable .npz landmark track ({exc}); make one with "
                            "`tkh landmarks VIDEO --out TRACK.npz`") from None
    lms = arrays.get("landmarks")
    if lms is None:
        raise BadInputError(f"{path} has no 'landmarks' array (keys: {sorted(arrays)}); make it with `tkh landmarks`")
    lms = np.asarray(lms, np.float32)
    if lms.shape == (68, 2):
        lms = lms[None]
    if lms.ndim != 3 or lms.shape[1:] != (68, 2) or len(lms) == 0:
        raise BadInputError(f"{path}: landmarks must have shape (T, 68, 2), got {lms.shape}; make the track with "
                            "`tkh landmarks VIDEO --out TRACK.npz`")
    valid = np.asarray(arrays.get("valid", np.isfinite(lms).all(axis=(1, 2))), bool)
    fps = float(arrays["fps"]) if "fps" in arrays else 25.0
    size = tuple(int(v) for v in arrays["frame_size"]) if "frame_size" in arrays else None
    return Track(lms, valid & np.isfinite(lms).all(axis=(1, 2)), fps, "track", str(path), size)


def load_driver(driver: str | os.PathLike | Track, portrait_landmarks: np.ndarray | None = None,
                frames_per_edit: int = 16, backend: str = "auto", max_frames: int | None = None,
                min_face_fraction: float = MIN_FACE_FRACTION, progress: bool = False) -> Track:
    """A `Track` from a video path, a .npz track, or a script ("smile,blink,...", needs portrait_landmarks).

    Video and track drivers are `vetted` (refused below `min_face_fraction`, gaps filled in); a given Track
    is returned as it is. progress: a tqdm bar while a video's landmarks are detected.
    """
    if isinstance(driver, Track):
        return driver
    text = str(driver)
    path = Path(text)
    if path.suffix.lower() == ".npz":
        track = load_track_file(path)
        if max_frames is not None:
            track = Track(track.landmarks[:max_frames], track.valid[:max_frames], track.fps, track.kind, track.source,
                          track.frame_size)
        return vetted(track, min_face_fraction)
    if is_video(path) or path.exists():
        if not path.exists():
            raise BadInputError(f"{path}: driving video not found; check the path")

        vl = detect_video(path, backend=backend, max_frames=max_frames, progress=progress, require_face=False)
        lms = np.asarray(vl.landmarks, np.float32)
        track = Track(lms, np.asarray(vl.valid, bool), float(vl.fps), "video", str(path), tuple(vl.frame_size))
        return vetted(track, min_face_fraction)
    if portrait_landmarks is None:
        raise BadInputError(f"driver {text!r} is neither a video, a .npz track, nor usable as a script here")
    return script_track(portrait_landmarks, text, frames_per_edit)


# ---------------------------------------------------------------------------------------------
# Motion transfer (the normalisation against identity leakage)
# ---------------------------------------------------------------------------------------------
def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ≈ s·R·src + t (Umeyama 1991). src, dst (n, 2) -> (s, R (2, 2), t (2,))."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    s = float((sig * np.diag(d)).sum() / (a ** 2).sum(1).mean())
    return s, r, mu_d - s * r @ mu_s


def _mouth_open(lms: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,) inner-lip gap minus eye opening, in inter-ocular units (small = neutral)."""
    iod = np.linalg.norm(lms[:, 45] - lms[:, 36], axis=-1) + 1e-6
    mouth = np.linalg.norm(lms[:, 66] - lms[:, 62], axis=-1)
    eyes = (np.linalg.norm(lms[:, 37] - lms[:, 41], axis=-1) + np.linalg.norm(lms[:, 44] - lms[:, 46], axis=-1)) / 2
    return (mouth - eyes) / iod


def reference_index(track: np.ndarray, valid: np.ndarray, reference: str | int = "first") -> int:
    """The driver frame taken as matching the portrait: an index, "first" (valid) frame, or "neutral"."""
    ok = np.flatnonzero(valid)
    if len(ok) == 0:
        raise BadInputError("the driver has no frame with a face; use another driving video")
    if isinstance(reference, (int, np.integer)):
        if not valid[int(reference)]:
            raise BadInputError(f"reference frame {reference} of the driver has no face")
        return int(reference)
    if reference == "first":
        return int(ok[0])
    if reference == "neutral":
        return int(ok[np.argmin(_mouth_open(track[ok]))])
    raise BadInputError(f"reference must be a frame index, 'first' or 'neutral', got {reference!r}")


def transfer_motion(driver: np.ndarray, portrait: np.ndarray, valid: np.ndarray | None = None,
                    reference: str | int = "first") -> np.ndarray:
    """Driver motion on the portrait's face: (T, 68, 2) driver track, (68, 2) portrait -> (T, 68, 2).

    out[t] = portrait + A · (driver[t] − driver[ref]), A the similarity (scale·rotation) taking the
    driver's reference face onto the portrait (rigid points only). See the module docstring.
    """
    drv = np.asarray(driver, np.float64)
    por = np.asarray(portrait, np.float64)
    if drv.ndim != 3 or drv.shape[1:] != (68, 2):
        raise BadInputError(f"driver track: expected shape (T, 68, 2), got {drv.shape}")
    if por.shape != (68, 2):
        raise BadInputError(f"portrait landmarks: expected shape (68, 2), got {por.shape}")
    valid = np.isfinite(drv).all(axis=(1, 2)) if valid is None else (np.asarray(valid, bool) &
                                                                     np.isfinite(drv).all(axis=(1, 2)))
    r = reference_index(drv, valid, reference)
    ids = list(RIGID_IDS)
    s, rot, _ = similarity(drv[r, ids], por[ids])
    a = s * rot
    out = np.empty_like(drv)
    last = por
    for t in range(len(drv)):
        if valid[t]:
            last = por + (drv[t] - drv[r]) @ a.T
        out[t] = last
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _resize(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h == height:
        return img
    width = max(1, int(round(w * height / h)))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_CUBIC)


def _driver_panel(track: Track, t: int, frame: np.ndarray | None, size: int,
                  source_crop: np.ndarray | None = None) -> np.ndarray:
    """What drove frame t: the driver's video frame, or its raw landmarks drawn."""
    if frame is not None:
        return _resize(frame, size)
    if track.kind == "script" and source_crop is not None:
        return _resize(source_crop, size)  # a script drives the portrait itself: show it
    pts = track.landmarks[t]
    if track.kind == "track" and np.isfinite(pts).all():
        lo, hi = pts.min(0), pts.max(0)
        side = max(hi - lo) * 1.6 + 1
        pts = (pts - (lo + hi) / 2) / side * size + size / 2
    return rasterize(pts, size) if np.isfinite(pts).all() else np.zeros((size, size, 3), np.uint8)


def render_frames(adapted, track: Track, reference: str | int = "first", side_by_side: bool = False,
                  paste_back: bool = False, original: np.ndarray | None = None, panel: int = 256,
                  chunk: int = 8, feather: float = 0.1) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames, rendered `chunk` at a time (a video driver's frames are streamed).

    The result panel is the generated crop (upscaled to `panel` px), or with `paste_back` the portrait at
    its original size with the generated face pasted into its crop box (`CropTransform.paste`, feathered).
    side_by_side: driver | landmarks | result.
    """
    portrait_lms = adapted.crop_landmarks[0]
    if track.kind == "script":
        lms = track.landmarks
    else:
        lms = transfer_motion(track.landmarks, portrait_lms, track.valid, reference)
    if paste_back:
        original = original if original is not None else (adapted.source_images[0] if adapted.source_images else None)
        if original is None:
            raise BadInputError("paste-back needs the original portrait; pass original= (or --portrait IMG)")
    video = iter_video(track.source, max_frames=len(lms)) if (side_by_side and track.kind == "video") else None
    size = adapted.image_size
    for start in range(0, len(lms), chunk):
        gen = adapted.render(lms[start:start + chunk])
        for j, g in enumerate(gen):
            t = start + j
            result = adapted.transforms[0].paste(g, original, feather=feather) if paste_back else g
            result = _resize(result, panel)
            if not side_by_side:
                yield result
                continue
            frame = next(video, None) if video is not None else None
            y = _resize(rasterize(lms[t], size), panel)
            yield np.concatenate([_driver_panel(track, t, frame, panel, adapted.crops[0]), y, result], axis=1)
    if video is not None:
        video.close()


def animate(adapted, driver: str | os.PathLike | Track, out: str | os.PathLike | Sequence[str | os.PathLike],
            reference: str | int = "first", side_by_side: bool = False, paste_back: bool = False,
            original: Any = None, caption: str | None = None, frames_per_edit: int = 16, fps: float | None = None,
            panel: int = 256, backend: str = "auto", max_frames: int | None = None,
            min_face_fraction: float = MIN_FACE_FRACTION) -> dict[str, Any]:
    """Drive `adapted` (an AdaptedPortrait) and write the animation to `out` (.mp4 and/or .gif paths).

    driver: a video path, a .npz landmark track, a script ("smile,blink,open_mouth,turn_left"), or a Track.
    Each output is written whole or not at all (`tkh.media.write_video`): a full disk raises OSError.
    Returns {"paths": [...], "frames": n, "fps": fps, "seconds": s, "track": landmarks (T, 68, 2),
    "coverage": the driver's `FaceCoverage` (video / track drivers, else None)}.
    """
    t0 = time.perf_counter()
    outs = [Path(out)] if isinstance(out, (str, os.PathLike)) else [Path(o) for o in out]
    track = load_driver(driver, adapted.crop_landmarks[0], frames_per_edit, backend, max_frames, min_face_fraction)
    if max_frames is not None and len(track.landmarks) > max_frames:  # a script, or a Track passed in
        track = replace(track, landmarks=track.landmarks[:max_frames], valid=track.valid[:max_frames])
    fps = fps or track.fps
    original = load_image(original) if original is not None else None
    model = f"{adapted.model_name} ({adapted.mode.upper()})"
    frames = render_frames(adapted, track, reference, side_by_side, paste_back, original, panel)
    gif_frames: list[np.ndarray] = []
    mp4s = [o for o in outs if o.suffix.lower() != ".gif"]
    gifs = [o for o in outs if o.suffix.lower() == ".gif"]
    n = 0

    def tee() -> Iterator[np.ndarray]:
        nonlocal n
        for f in frames:
            n += 1
            if gifs:
                gif_frames.append(_resize(f, min(f.shape[0], 256)))
            yield f

    if mp4s:
        write_video(mp4s[0], tee(), fps=fps, model=model, caption=caption)
        for extra in mp4s[1:]:
            copy_output(mp4s[0], extra)
    else:
        for _ in tee():
            pass
    for g in gifs:
        write_video(g, gif_frames, fps=fps, model=model, caption=caption)
    lms = track.landmarks if track.kind == "script" else transfer_motion(track.landmarks, adapted.crop_landmarks[0],
                                                                         track.valid, reference)
    return {"paths": [str(o) for o in outs], "frames": n, "fps": fps, "seconds": time.perf_counter() - t0,
            "track": lms, "kind": track.kind, "coverage": track.coverage}


def animate_from_cli(args) -> None:
    """`tkh animate --model ADAPTED --driver VIDEO|TRACK.npz | --script EDITS --out OUT.mp4 [...]`."""
    # lazy: torch + tkh.adapt cost ~1.5 s to import (python -X importtime); tkh.animate itself is torch-free
    import torch

    from tkh.adapt import AdaptedPortrait, default_device

    device = torch.device(args.device) if getattr(args, "device", None) else default_device()
    adapted = AdaptedPortrait.load(args.model, map_location=device)
    outs = [args.out] + list(getattr(args, "also", None) or [])
    res = animate(adapted, args.driver or args.script, outs, reference=getattr(args, "reference", "first"),
                  side_by_side=args.side_by_side, paste_back=getattr(args, "paste_back", False),
                  original=getattr(args, "portrait", None), caption=args.caption,
                  max_frames=getattr(args, "max_frames", None),
                  min_face_fraction=getattr(args, "min_face_fraction", MIN_FACE_FRACTION))
    if res["coverage"] is not None:
        print(f"tkh animate: driver {Path(res['coverage'].source).name}: {res['coverage'].describe()}")
    print(f"tkh animate: {res['frames']} frames ({res['kind']} driver) in {res['seconds']:.1f}s -> "
          f"{', '.join(res['paths'])} (labelled synthetic)")
