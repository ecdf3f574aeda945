"""Animation: scripted edits, landmark tracks, driving videos; identity-preserving motion transfer; outputs."""

from __future__ import annotations

import numpy as np
import pytest

from tkh import pretrained
from tkh.adapt import adapt
from tkh.animate import animate, script_controls, similarity, transfer_motion
from tkh.errors import BadInputError
from tkh.landmarks import detect, detect_video
from tkh.media import iter_video, read_label

from adapt_helpers import make_tiny_pretrained


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, grace_hopper):
    model = pretrained.load(make_tiny_pretrained(tmp_path_factory.mktemp("pretrained")))
    return adapt(model, [grace_hopper], mode="ff", landmarks=[detect(grace_hopper, backend="dlib")])


@pytest.fixture(scope="module")
def carphone_track(carphone_path):
    return detect_video(carphone_path, backend="dlib", progress=False)


def _shape_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Procrustes distance (pose removed) in inter-ocular units of b."""
    s, r, t = similarity(a, b)
    aligned = a @ (s * r).T + t
    return float(np.linalg.norm(aligned - b, axis=1).mean() / np.linalg.norm(b[45] - b[36]))


def test_script_is_smooth_and_checked():
    c = script_controls("smile,blink", frames_per_edit=10)
    smile = [f.get("smile", 0.0) for f in c]
    assert len(c) == 20 and smile[0] < 0.3 and max(smile) == pytest.approx(1.0) and smile[9] == 0.0
    assert np.abs(np.diff(smile)).max() < 0.6  # eased, no jumps to full strength
    assert max(f.get("blink_left", 0.0) for f in c[10:]) == pytest.approx(1.0)
    assert max(f.get("smile", 0.0) for f in script_controls("smile:0.5", 10)) == pytest.approx(0.5)
    with pytest.raises(BadInputError, match="unknown edit"):
        script_controls("smile,dance")


def test_reenactment_keeps_the_portraits_face_shape(carphone_track, adapted):
    """The transferred track stays nearer Grace Hopper's face shape than the carphone driver's (measured)."""
    lms, valid = carphone_track
    portrait = adapted.crop_landmarks[0]
    out = transfer_motion(lms, portrait, valid)
    assert np.allclose(out[np.flatnonzero(valid)[0]], portrait, atol=1e-3)  # reference frame = the portrait
    ok = np.flatnonzero(valid)
    to_portrait = np.mean([_shape_distance(out[t], portrait) for t in ok])
    to_driver = np.mean([_shape_distance(out[t], lms[t]) for t in ok])
    raw_to_portrait = np.mean([_shape_distance(lms[t], portrait) for t in ok])
    print(f"shape distance (IOD units): transferred->portrait {to_portrait:.3f}, transferred->driver "
          f"{to_driver:.3f}, raw driver->portrait {raw_to_portrait:.3f}")
    assert to_portrait < to_driver
    assert to_portrait < 0.75 * raw_to_portrait
    # and it still moves: the driver's motion is there
    assert np.linalg.norm(out[ok] - portrait, axis=2).mean(axis=1).max() > 0.2


def test_script_animation_mp4_and_gif_labelled(adapted, tmp_path):
    res = animate(adapted, "smile,blink", [tmp_path / "a.mp4", tmp_path / "a.gif"], side_by_side=True,
                  caption="SYNTHETIC", frames_per_edit=5, fps=10)
    assert res["frames"] == 10 and res["track"].shape == (10, 68, 2)
    for name in ("a.mp4", "a.gif"):
        label = read_label(tmp_path / name)
        assert label and "tkh" in label
    first = next(iter_video(tmp_path / "a.mp4"))
    assert first.shape[1] == 3 * first.shape[0]  # portrait | landmarks | result


def test_video_driver_with_paste_back(adapted, carphone_path, tmp_path):
    res = animate(adapted, carphone_path, tmp_path / "v.mp4", paste_back=True, max_frames=6, panel=200)
    frames = list(iter_video(tmp_path / "v.mp4"))
    assert res["kind"] == "video" and len(frames) == 6
    h, w = adapted.source_images[0].shape[:2]
    assert abs(frames[0].shape[1] / frames[0].shape[0] - w / h) < 0.02  # the whole portrait, at its aspect
    assert read_label(tmp_path / "v.mp4")


def test_track_file_driver_and_bad_tracks(adapted, carphone_track, tmp_path):
    lms, valid = carphone_track
    np.savez(tmp_path / "t.npz", landmarks=lms[:5], valid=valid[:5])
    res = animate(adapted, tmp_path / "t.npz", tmp_path / "t.gif", side_by_side=True)
    assert res["frames"] == 5 and read_label(tmp_path / "t.gif")
    np.savez(tmp_path / "bad.npz", landmarks=np.zeros((5, 5, 2)))
    with pytest.raises(BadInputError, match=r"\(T, 68, 2\)"):
        animate(adapted, tmp_path / "bad.npz", tmp_path / "x.mp4")


def test_paste_back_and_side_by_side_frames(adapted, carphone_track):
    """Paste-back: the whole original portrait at its own size, untouched outside the face box, the generated
    face inside it. Side by side: driver | landmarks | result panels of the same height."""
    import cv2

    from tkh.animate import Track, render_frames

    lms, valid = carphone_track
    track = Track(lms[:3], valid[:3], 25.0, "track", "carphone")
    original = adapted.source_images[0]
    h, w = original.shape[:2]
    t = adapted.transforms[0]
    frames = list(render_frames(adapted, track, paste_back=True, panel=h, feather=0.0))
    assert len(frames) == 3 and frames[0].shape == original.shape
    box = np.zeros((h, w), bool)
    box[max(t.y0, 0):t.y0 + t.side, max(t.x0, 0):t.x0 + t.side] = True
    np.testing.assert_array_equal(frames[0][~box], original[~box])  # the rest of the portrait, pixel for pixel
    track_lms = transfer_motion(track.landmarks, adapted.crop_landmarks[0], track.valid)  # what G was given
    gen = adapted.render(track_lms)
    expected = cv2.resize(gen[0], (t.side, t.side), interpolation=cv2.INTER_CUBIC)
    inside = frames[0][max(t.y0, 0):t.y0 + t.side, max(t.x0, 0):t.x0 + t.side].astype(int)
    ref = expected[max(-t.y0, 0):, max(-t.x0, 0):][:inside.shape[0], :inside.shape[1]].astype(int)
    assert np.abs(inside - ref).mean() < 1.0 and np.abs(inside - original[box].reshape(inside.shape)).mean() > 5
    sbs = next(render_frames(adapted, track, side_by_side=True, paste_back=True, panel=128))
    assert sbs.shape[0] == 128 and sbs.shape[1] == 128 + 128 + round(w * 128 / h)
