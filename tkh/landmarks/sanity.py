"""Is a set of 68 landmarks a face? A cheap geometric check, shared by image and video code.

A landmark fitter always returns 68 points, even on a detector's false positive (a chair ornament,
a fold of cloth) or on a face it could not fit; the generator then gets a landmark image y of
nothing. `plausible(points, box)` rejects such fits before they are used:

- the eyes are apart by more than `min_eye_distance` pixels (10 by default);
- along the face's own vertical axis (perpendicular to the line through the eye centres, so a
  head tilted like Dr Gachet's or lying like Flaming June's still counts) the eyes are above the
  nose tip, the nose tip above the mouth's centre, and the mouth's centre above the chin;
- the chin lies at least `MIN_CHIN_DROP` eye distances below the eyes (real faces, paintings and video
  alike: 1.6 to 3; a fit squeezed into a wide box of background: 0.6);
- given the face box ``(x, y, w, h)`` the landmarks came from, every point lies inside it, grown by
  `box_margin` of its longer side on each side (dlib's fitter puts the chin and jaw slightly
  outside its detector's box, and a hand-drawn box is rarely tight).

`implausible_reason` says which test failed (for messages); `plausible_track` checks a whole
``(T, 68, 2)`` track at once (NaN frames are not plausible).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tkh.errors import BadInputError

MIN_EYE_DISTANCE = 10.0  # pixels between the eye centres
MIN_CHIN_DROP = 0.8  # the chin's distance below the eyes, in eye distances
BOX_MARGIN = 0.25  # fraction of the box's longer side the landmarks may stick out on each side

_RIGHT_EYE, _LEFT_EYE = slice(36, 42), slice(42, 48)  # iBUG-68: the subject's right eye is on the image's left
_NOSE_TIP, _CHIN, _MOUTH = 30, 8, slice(48, 68)

Box = Sequence[float]  # (x, y, w, h) in pixels


def _reasons(track: np.ndarray, boxes: np.ndarray | None, min_eye_distance: float,
             box_margin: float) -> list[str | None]:
    """One reason (or None when plausible) per (68, 2) frame of a (T, 68, 2) float64 track."""
    right, left = track[:, _RIGHT_EYE].mean(axis=1), track[:, _LEFT_EYE].mean(axis=1)
    across = left - right
    eye_distance = np.linalg.norm(across, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = across / eye_distance[:, None]
    down = np.stack([-unit[:, 1], unit[:, 0]], axis=1)  # `across` turned 90 degrees towards the chin
    mid = (left + right) / 2

    def height(p: np.ndarray) -> np.ndarray:
        return ((p - mid) * down).sum(axis=1)

    nose, mouth, chin = height(track[:, _NOSE_TIP]), height(track[:, _MOUTH].mean(axis=1)), height(track[:, _CHIN])
    reasons: list[str | None] = []
    for t in range(len(track)):
        if not np.isfinite(track[t]).all():
            reasons.append("no landmarks (NaN)")
        elif eye_distance[t] <= min_eye_distance:
            reasons.append(f"eyes only {eye_distance[t]:.1f} px apart (need > {min_eye_distance:g})")
        elif not 0 < nose[t] < mouth[t] < chin[t]:
            reasons.append("eyes, nose, mouth and chin are not in that order from top to bottom")
        elif chin[t] < MIN_CHIN_DROP * eye_distance[t]:
            reasons.append(f"a flat face: the chin only {chin[t] / eye_distance[t]:.2f} eye distances below the eyes "
                           f"(need >= {MIN_CHIN_DROP:g})")
        elif boxes is not None and not _inside(track[t], boxes[t], box_margin):
            x, y, w, h = boxes[t]
            reasons.append(f"landmarks fall outside the face box {int(x)},{int(y)},{int(w)},{int(h)}")
        else:
            reasons.append(None)
    return reasons


def _inside(points: np.ndarray, box: np.ndarray, margin: float) -> bool:
    x, y, w, h = box
    pad = margin * max(w, h)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return bool(lo[0] >= x - pad and lo[1] >= y - pad and hi[0] <= x + w + pad and hi[1] <= y + h + pad)


def _as_track(points: np.ndarray, what: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-2:] != (68, 2) or pts.ndim not in (2, 3):
        raise BadInputError(f"{what}: expected shape (68, 2) or (T, 68, 2), got {pts.shape}")
    return pts.reshape(-1, 68, 2)


def _as_boxes(box, n: int) -> np.ndarray | None:
    if box is None:
        return None
    b = np.asarray(box, dtype=np.float64).reshape(-1, 4)
    if len(b) == 1 and n > 1:
        b = np.repeat(b, n, axis=0)
    if len(b) != n:
        raise BadInputError(f"expected one (x, y, w, h) box or {n}, got {len(b)}")
    return b


def implausible_reason(points: np.ndarray, box: Box | None = None, min_eye_distance: float = MIN_EYE_DISTANCE,
                       box_margin: float = BOX_MARGIN) -> str | None:
    """Why (68, 2) landmarks do not look like a face (one short phrase), or None when they do."""
    if np.shape(points) != (68, 2):
        raise BadInputError(f"landmarks: expected shape (68, 2), got {np.shape(points)}; "
                            "use plausible_track for a (T, 68, 2) track")
    return _reasons(_as_track(points, "landmarks"), _as_boxes(box, 1), min_eye_distance, box_margin)[0]


def plausible(points: np.ndarray, box: Box | None = None, min_eye_distance: float = MIN_EYE_DISTANCE,
              box_margin: float = BOX_MARGIN) -> bool:
    """True when (68, 2) landmarks pass the checks in this module's docstring (box: ``(x, y, w, h)``)."""
    return implausible_reason(points, box, min_eye_distance, box_margin) is None


def plausible_track(track: np.ndarray, boxes: np.ndarray | Box | None = None,
                    min_eye_distance: float = MIN_EYE_DISTANCE, box_margin: float = BOX_MARGIN) -> np.ndarray:
    """(T,) bool: which frames of a (T, 68, 2) track pass `plausible` (NaN frames do not).

    boxes: None, one ``(x, y, w, h)`` for every frame, or ``(T, 4)``.
    """
    pts = _as_track(track, "landmark track")
    return np.array([r is None for r in _reasons(pts, _as_boxes(boxes, len(pts)), min_eye_distance, box_margin)],
                    dtype=bool)
