"""Landmark colours in the face: how much of a generated face is painted in the landmark drawing's colours."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from tkh.errors import BadInputError
from tkh.landmarks.draw import PART_COLOURS
from tkh.metrics.inputs import _as_uint8_list, _finish

# G blends the drawing's colours into skin rather than copying them: a magenta lip line half mixed with skin
# is (227, 75, 187), 88 RGB units from magenta but still at magenta's hue. So a pixel counts by hue and
# saturation, not by RGB distance. Skin and lips span red to yellow-orange (hues up to 43 degrees on a
# held-out clip's dark skin under warm light), so the red, orange and yellow parts (brows, jaw) cannot be
# told apart from them by colour: they are left out, and no pixel at a skin hue counts.
PALETTE_HUE_TOLERANCE = 20.0  # degrees of hue within which a pixel counts as a landmark colour
PALETTE_MIN_SATURATION = 0.4  # HSV saturation below which a pixel is grey / skin, whatever its hue
SKIN_HUES = (-30.0, 65.0)  # hue range (degrees, red = 0) of skin and lips


def _hue_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a - b) % 360.0
    return np.minimum(d, 360.0 - d)


def palette_hues() -> np.ndarray:
    """The hues (degrees) of the landmark drawing's colours that no skin or lip has (`SKIN_HUES` left out)."""
    rgb = np.array(list(PART_COLOURS.values()), np.float32)[None] / 255.0
    hues = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[0, :, 0]
    return np.unique(hues[~_skin_hue(hues)])


def _skin_hue(hue: np.ndarray) -> np.ndarray:
    centre, half = sum(SKIN_HUES) / 2, (SKIN_HUES[1] - SKIN_HUES[0]) / 2
    return _hue_distance(hue, centre) <= half


def palette_fraction(images: Any, landmarks: Any, hue_tolerance: float = PALETTE_HUE_TOLERANCE,
                     min_saturation: float = PALETTE_MIN_SATURATION) -> float | np.ndarray:
    """Fraction of face pixels painted in a landmark-drawing colour, pure or blended into skin.

    G sees the landmark image y, drawn in saturated part colours (`tkh.landmarks.draw.PART_COLOURS`); a
    generator that copies y into its output paints those colours, often mixed with skin, into the mouth and
    eyes. A pixel counts when its HSV saturation is at least `min_saturation` and its hue lies within
    `hue_tolerance` degrees of a drawing colour no skin has (`palette_hues`: greens, cyan, blues, magenta)
    and outside skin's hues (`SKIN_HUES`). The face is the convex hull of the 68 points (in the image's pixels). Compare generated frames
    with the real ones: real faces have a small base rate (blue eyes, a green shirt collar under the chin).
    Returns a float or (B,).
    """
    imgs, batch = _as_uint8_list(images)
    lms = np.asarray(landmarks, dtype=np.float32)
    lms = lms[None] if lms.ndim == 2 else lms
    if len(lms) != len(imgs) or lms.shape[1:] != (68, 2):
        raise BadInputError(f"palette_fraction: {len(imgs)} images need as many (68, 2) landmark arrays, got "
                            f"{lms.shape}")
    hues = palette_hues()
    vals = []
    for img, pts in zip(imgs, lms):
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
        if not mask.any():
            vals.append(float("nan"))
            continue
        hsv = cv2.cvtColor(np.ascontiguousarray(img[..., :3]).astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        face = hsv[mask.astype(bool)]  # (N, 3): hue in degrees, saturation and value in [0, 1]
        near = (_hue_distance(face[:, :1], hues[None]).min(1) < hue_tolerance) & ~_skin_hue(face[:, 0])
        vals.append(float((near & (face[:, 1] >= min_saturation)).mean()))
    return _finish(vals, batch)
