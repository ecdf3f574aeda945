"""Landmark edits: expressions (jaw, smile, blinks, brows) and head pose (yaw, pitch, roll).

The paper drives G only through the landmark image y (Sec. 3.1), so moving the landmarks is how a
puppeteer animates a portrait: detect the source face's landmarks, `edit` them, rasterize, render.

Expressions are a data table (`EXPRESSIONS`: control -> moves of landmark ids along a direction with
a gain; `CLOSURES`: lid pairs that meet), so each control is inspectable and unit-tested rather than
magic numbers inline. Directions live in the face's own frame (+x towards the subject's left = the
image's right for a frontal face, +y towards the chin) and gains are in inter-ocular units, so the
same control gives the same relative motion at any image size and head orientation.

Head pose: the mean 3D face (`mean_face_3d`, see `tkh/assets/build_mean_face_68.py`) is fitted to
the landmarks by a weak-perspective (scaled orthographic) camera; that gives each landmark a depth
and the head's rotation R. The edit rotates the landmarks, lifted to 3D, by R·R_edit·Rᵀ about a
pivot behind the face (the head turns about its own axes, not the camera's) and projects them back.
Jaw-contour points are silhouette points, so large yaws move them only approximately.

Ranges (values outside are clipped, with a warning):

================  ============  ==============================================================
control           range         meaning
================  ============  ==============================================================
jaw_open          0 .. 1        mouth closed (input) .. wide open (~0.4 inter-ocular gap)
smile             -1 .. 1       frown (corners in, down) .. smile (corners out, up)
blink_left/right  0 .. 1        eye as given .. fully closed (lids meet); subject's left/right
brows             -1 .. 1       lowered .. raised
yaw               -30 .. 30 °   > 0 turns the face towards the image's right (subject's left)
pitch             -20 .. 20 °   > 0 tilts the face down (nose tip moves down)
roll              -30 .. 30 °   > 0 tilts the head clockwise in the image
================  ============  ==============================================================
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tkh.errors import BadInputError

MEAN_FACE_PATH = Path(__file__).resolve().parents[1] / "assets" / "mean_face_68.npy"


@lru_cache(maxsize=1)
def mean_face_3d() -> np.ndarray:
    """The mean 3D 68-point face (68, 3) float32, inter-ocular units, nose tip z = 0, +z to the camera.

    Built by `tkh/assets/build_mean_face_68.py`: x, y are the mean of dlib detections on real frontal
    faces; z is a documented anthropometric depth model (see that file).
    """
    face = np.load(MEAN_FACE_PATH).astype(np.float32)
    face.setflags(write=False)
    return face


# ---------------------------------------------------------------------------------------------
# The expression table
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Move:
    """Landmarks `ids` move by ``control · gain`` inter-ocular units along `direction` (face frame)."""

    ids: tuple[int, ...]
    direction: tuple[float, float]  # (x, y): +x subject's left / image right, +y towards the chin
    gain: float  # displacement at control = 1, in inter-ocular distances

    def __post_init__(self) -> None:  # store a unit direction, so `gain` alone sets the distance
        n = float(np.hypot(*self.direction))
        object.__setattr__(self, "direction", (self.direction[0] / n, self.direction[1] / n))


DOWN, UP = (0.0, 1.0), (0.0, -1.0)

EXPRESSIONS: dict[str, tuple[Move, ...]] = {
    # the mandible rotates open: chin and lower lip drop most, the jaw's sides less, upper lip ~fixed
    "jaw_open": (
        Move((8,), DOWN, 0.40), Move((7, 9), DOWN, 0.36), Move((6, 10), DOWN, 0.28),
        Move((5, 11), DOWN, 0.18), Move((4, 12), DOWN, 0.08), Move((3, 13), DOWN, 0.03),
        Move((56, 57, 58), DOWN, 0.40), Move((55, 59), DOWN, 0.32), Move((65, 66, 67), DOWN, 0.38),
        Move((48, 54, 60, 64), DOWN, 0.12),
        Move((48, 60), (1.0, 0.0), 0.04), Move((54, 64), (-1.0, 0.0), 0.04),  # corners narrow a little
        Move((50, 51, 52, 61, 62, 63), UP, 0.02),
    ),
    # zygomaticus pulls the mouth corners outwards and up; negative values frown
    "smile": (
        Move((48, 60), (-0.8, -0.6), 0.16), Move((54, 64), (0.8, -0.6), 0.16),
        Move((49, 59), (-0.6, -0.4), 0.06), Move((53, 55), (0.6, -0.4), 0.06),
        Move((61, 67), (-0.5, -0.3), 0.05), Move((63, 65), (0.5, -0.3), 0.05),
    ),
    "brows": (
        Move((18, 19, 20, 21, 22, 23, 24, 25), UP, 0.16), Move((17, 26), UP, 0.11),
    ),
}

# Eye closure: each (upper, lower) lid pair meets at `LID_MEET` of the way from the lower lid to
# the upper one (the upper lid does most of the moving); at blink = 1 the points coincide.
CLOSURES: dict[str, tuple[tuple[int, int], ...]] = {
    "blink_right": ((37, 41), (38, 40)),  # subject's right eye: points 36-41 (image left)
    "blink_left": ((43, 47), (44, 46)),  # subject's left eye: points 42-47 (image right)
}
LID_MEET = 0.3

# Pairs (upper, lower) that must never cross: inner lips and eyelids.
ORDERED_PAIRS: tuple[tuple[int, int], ...] = ((61, 67), (62, 66), (63, 65)) + CLOSURES["blink_right"] + CLOSURES[
    "blink_left"]

RANGES: dict[str, tuple[float, float]] = {
    "jaw_open": (0.0, 1.0), "smile": (-1.0, 1.0), "blink_left": (0.0, 1.0), "blink_right": (0.0, 1.0),
    "brows": (-1.0, 1.0), "yaw": (-30.0, 30.0), "pitch": (-20.0, 20.0), "roll": (-30.0, 30.0),
}
POSE = ("yaw", "pitch", "roll")
PIVOT = (0.0, 0.6, -1.6)  # head rotation centre in mean-face units: behind the face, at ear level
FIT_IDS = tuple(range(0, 4)) + tuple(range(13, 17)) + tuple(range(17, 48))  # rigid-ish points for the fit


# ---------------------------------------------------------------------------------------------
# Fitting the mean 3D face (weak perspective)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoseFit:
    """landmarks ≈ scale · R[:2] · (X − centre_3d) + centre_2d, X the mean 3D face."""

    scale: float  # pixels per inter-ocular unit
    rotation: np.ndarray  # (3, 3) head rotation (rows: image x, image y, towards the camera)
    centre_2d: np.ndarray  # (2,)
    centre_3d: np.ndarray  # (3,)

    def angles(self) -> tuple[float, float, float]:
        """(yaw, pitch, roll) in degrees of the fitted head (same conventions as `edit`)."""
        r = self.rotation  # = Rz(roll) · Ry(yaw) · Rx(pitch), see `_rotation`
        yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1, 1)))
        pitch = np.degrees(np.arctan2(-r[2, 1], r[2, 2]))
        roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
        return float(yaw), float(pitch), float(roll)


def fit_pose(landmarks: np.ndarray) -> PoseFit:
    """Fit the mean 3D face to (68, 2) landmarks: scale, rotation, translation (least squares)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    face = mean_face_3d().astype(np.float64)
    ids = list(FIT_IDS)
    c2, c3 = pts[ids].mean(0), face[ids].mean(0)
    a, b = face[ids] - c3, pts[ids] - c2
    m = np.linalg.lstsq(a, b, rcond=None)[0].T  # (2, 3) affine camera
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    r2 = u @ vt  # nearest matrix with orthonormal rows
    r = np.vstack([r2, np.cross(r2[0], r2[1])])
    return PoseFit(scale=float(s.mean()), rotation=r, centre_2d=c2, centre_3d=c3)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) · Ry(yaw) · Rx(pitch) in the x-right, y-down, z-to-camera frame (degrees)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


# ---------------------------------------------------------------------------------------------
# edit
# ---------------------------------------------------------------------------------------------
def _clip_controls(controls: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, value in controls.items():
        v = float(value)
        if not np.isfinite(v):
            raise BadInputError(f"edit: {name}={value} is not a finite number")
        lo, hi = RANGES[name]
        if not lo <= v <= hi:
            warnings.warn(f"edit: {name}={v:g} is outside [{lo:g}, {hi:g}]; clipped", stacklevel=3)
            v = min(max(v, lo), hi)
        out[name] = v
    return out


def _order_pairs(pts: np.ndarray, z: np.ndarray, down: np.ndarray) -> None:
    """Where a lower point (lip, lid) rose above its upper partner along `down`, both meet halfway."""
    for up, lo in ORDERED_PAIRS:
        if np.dot(pts[lo] - pts[up], down) < 0:
            pts[[up, lo]] = (pts[up] + pts[lo]) / 2
            z[[up, lo]] = (z[up] + z[lo]) / 2


def edit(landmarks: np.ndarray, jaw_open: float = 0.0, smile: float = 0.0, blink_left: float = 0.0,
         blink_right: float = 0.0, brows: float = 0.0, yaw: float = 0.0, pitch: float = 0.0,
         roll: float = 0.0) -> np.ndarray:
    """Edited landmarks (68, 2) float32: expression moves first, then the head-pose rotation.

    landmarks: (68, 2) (x, y) pixels, iBUG order. Controls and their ranges: see the module
    docstring (`RANGES`). All controls 0 returns the landmarks unchanged. Guarantees: inner upper
    lip never below the inner lower lip, eyelids never cross and meet exactly at blink = 1.
    """
    pts = np.asarray(landmarks, dtype=np.float64).copy()
    if pts.shape != (68, 2):
        raise BadInputError(f"edit: expected landmarks of shape (68, 2), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise BadInputError("edit: landmarks contain NaN or inf (a frame without a face?)")
    c = _clip_controls(dict(jaw_open=jaw_open, smile=smile, blink_left=blink_left, blink_right=blink_right,
                            brows=brows, yaw=yaw, pitch=pitch, roll=roll))
    if not any(c.values()):
        return pts.astype(np.float32)

    fit = fit_pose(pts)
    r2 = fit.rotation[:2]
    face_to_image = fit.scale * r2[:, :2]  # (2, 2): a face-frame (x, y) displacement in pixels
    down = r2[:, 1] / np.linalg.norm(r2[:, 1])
    # depth of each landmark in the camera frame (inter-ocular units), from the fitted mean face
    z = (mean_face_3d().astype(np.float64) - fit.centre_3d) @ fit.rotation[2]
    for up, lo in ORDERED_PAIRS:  # a lid/lip pair shares its depth, so rotation cannot make it cross
        z[[up, lo]] = (z[up] + z[lo]) / 2

    # 1. expressions (2D, in the face frame)
    for name, moves in EXPRESSIONS.items():
        if c[name]:
            for mv in moves:
                pts[list(mv.ids)] += c[name] * mv.gain * (face_to_image @ np.asarray(mv.direction))
    for name, pairs in CLOSURES.items():
        b = c[name]
        if b:
            for up, lo in pairs:
                meet, zmeet = pts[lo] + LID_MEET * (pts[up] - pts[lo]), z[lo] + LID_MEET * (z[up] - z[lo])
                pts[up] += b * (meet - pts[up])
                pts[lo] += b * (meet - pts[lo])
                z[up] += b * (zmeet - z[up])
                z[lo] += b * (zmeet - z[lo])
                if b >= 1.0:  # exactly closed, not just within rounding
                    pts[up] = pts[lo] = meet
                    z[up] = z[lo] = zmeet
    _order_pairs(pts, z, down)

    # 2. head pose: lift to 3D with the fitted depths, rotate about the pivot in the head's axes, project
    if any(c[k] for k in POSE):
        p3 = np.concatenate([(pts - fit.centre_2d) / fit.scale, z[:, None]], axis=1)
        pivot = fit.rotation @ (np.asarray(PIVOT) - fit.centre_3d)
        rot = fit.rotation @ _rotation(c["yaw"], c["pitch"], c["roll"]) @ fit.rotation.T
        p3 = (p3 - pivot) @ rot.T + pivot
        pts = p3[:, :2] * fit.scale + fit.centre_2d
        _order_pairs(pts, z, _down(pts))  # safety net in the output's own frame
    return pts.astype(np.float32)


def _down(pts: np.ndarray) -> np.ndarray:
    """Unit vector from the brows towards the chin: perpendicular to the line between the eye centres."""
    ex = pts[42:48].mean(0) - pts[36:42].mean(0)
    ex = ex / max(float(np.linalg.norm(ex)), 1e-9)
    return np.array([-ex[1], ex[0]])
