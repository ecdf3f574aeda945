"""Drivers as landmark tracks: a video (detected), a .npz track file, or a script of edits; vetted for faces.

Every driver becomes a `Track` of 68 landmarks per frame. Video and track drivers are `vetted`
(`tkh.landmarks.coverage`: implausible detections dropped, gaps filled in, refused below a fraction of
frames with a face); scripts (`script_track`) are `tkh.landmarks.edit` applied per frame, eased in and out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tkh.errors import BadInputError
from tkh.landmarks import detect_video, edit
from tkh.landmarks.coverage import MIN_FACE_FRACTION, FaceCoverage, face_coverage, require_faces
from tkh.media import is_video

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
