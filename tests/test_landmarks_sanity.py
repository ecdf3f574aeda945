"""tkh.landmarks.plausible: the geometric check that 68 landmarks are a face (image and video code share it)."""

from __future__ import annotations

import numpy as np
import pytest

from tkh.errors import BadInputError
from tkh.landmarks import implausible_reason, plausible, plausible_track


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The shipped mean face (an upright, frontal 68-point layout), scaled to a 200 px face at (100, 100)."""
    from tkh.landmarks import mean_face_3d

    pts = mean_face_3d()[:, :2].astype(np.float64)
    pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0)).max() * 200 + 100  # y already points down
    return pts.astype(np.float32)


def _rotate(pts: np.ndarray, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = pts.mean(0)
    return ((pts - c) @ r.T + c).astype(np.float32)


def test_upright_and_tilted_faces_are_plausible(face):
    assert plausible(face)
    assert plausible(_rotate(face, 30)) and plausible(_rotate(face, -60))  # tilted / lying heads still count
    assert plausible(face, box=(100, 100, 200, 200))


def test_implausible_fits_say_why(face):
    flipped = face.copy()
    flipped[:, 1] = 2 * face[:, 1].mean() - face[:, 1]  # eyes below the mouth, a mirror image top to bottom
    assert not plausible(flipped)
    assert "order" in implausible_reason(flipped)
    tiny = (face - face.mean(0)) * 0.03 + 50
    assert "apart" in implausible_reason(tiny)
    assert "outside the face box" in implausible_reason(face, box=(400, 400, 50, 50))
    nose_below_mouth = face.copy()
    nose_below_mouth[30] = face[48:68].mean(0) + (0, 5)
    assert not plausible(nose_below_mouth)


def test_track_with_nan_frames(face):
    track = np.stack([face, np.full((68, 2), np.nan, np.float32), np.full((68, 2), 3.0, np.float32)])
    assert plausible_track(track).tolist() == [True, False, False]
    assert plausible_track(track, boxes=(100, 100, 200, 200)).tolist() == [True, False, False]
    with pytest.raises(BadInputError, match="68, 2"):
        plausible(track)
    with pytest.raises(BadInputError, match="box"):
        plausible_track(track, boxes=np.zeros((2, 4)))


def test_a_flat_fit_is_not_a_face(face):
    squashed = face.copy()
    squashed[:, 1] = (face[:, 1] - face[:, 1].mean()) * 0.3 + face[:, 1].mean()  # a fit in a wide strip
    assert "flat face" in implausible_reason(squashed)
