"""The puppeteer engine (tkh.puppet): controls -> landmarks -> y -> G.render, presets, recorder, video driving.

A tiny-config model with random weights (saved to a temporary file and loaded back) is enough for the
mechanics: G is a deterministic function of y, so different controls must give different frames, and
the landmark image must move the way the control says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tkh.config import load_config
from tkh.errors import BadInputError
from tkh.landmarks.edit import RANGES
from tkh.media import read_label, read_video
from tkh.models import TalkingHeadModel
from tkh.puppet import CONTROLS, PRESETS, Puppet, Recording, keyframes

INNER_LIP = np.array([0, 255, 255])  # tkh.landmarks.PART_COLOURS["lip_inner"]


def read_frames(path) -> np.ndarray:
    """(T, H, W, 3) frames of an mp4 (tkh.media) or a gif (Pillow)."""
    if str(path).endswith(".gif"):
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    return read_video(path)[0]


def inner_lip_height(landmark_image: np.ndarray, tol: int = 60) -> int:
    """Vertical extent in pixels of the inner-lip colour (cyan) in a rasterized landmark image."""
    close = (np.abs(landmark_image.astype(int) - INNER_LIP) < tol).all(axis=-1)
    rows = np.flatnonzero(close.any(axis=1))
    return int(rows.max() - rows.min() + 1) if rows.size else 0


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = TalkingHeadModel(load_config("tiny"))
    return model.save(tmp_path_factory.mktemp("puppet") / "tiny.safetensors")


@pytest.fixture(scope="session")
def puppet(tiny_model_path, grace_hopper) -> Puppet:
    return Puppet.from_image(grace_hopper, model=tiny_model_path, mode="ff")


def test_from_image_encodes_once_and_renders(puppet):
    assert puppet.source.shape == (64, 64, 3) and puppet.neutral.shape == (68, 2)
    frame = puppet.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, puppet.render())  # deterministic: no noise, no state
    assert puppet.last_ms > 0 and puppet.last_fps > 0


def test_different_controls_render_different_frames(puppet):
    frames = {name: puppet.render(**{name: RANGES[name][1]}) for name in CONTROLS}
    neutral = puppet.render()
    for name, frame in frames.items():
        assert np.abs(frame.astype(int) - neutral).mean() > 0.5, name


def test_jaw_open_moves_the_lips_apart(puppet):
    closed = inner_lip_height(puppet.landmark_image())
    half = inner_lip_height(puppet.landmark_image(jaw_open=0.5))
    wide = inner_lip_height(puppet.landmark_image(jaw_open=1.0))
    assert closed < half < wide
    frame, y = puppet.render_pair(jaw_open=1.0)
    assert np.array_equal(y, puppet.landmark_image(jaw_open=1.0))


def test_inference_copy_matches_the_spectrally_normalised_generator(puppet):
    """The engine folds σ(W) into plain weights; the frames must equal G.render of the adapted portrait."""
    adapted = puppet.adapted
    lms = puppet.landmarks(smile=0.7)
    diff = np.abs(adapted.render(lms).astype(int) - puppet.render(smile=0.7))
    assert diff.max() <= 2 and diff.mean() < 0.05  # float rounding of W/σ(W) computed once vs per call


def test_controls_are_checked(puppet):
    with pytest.raises(BadInputError, match="unknown control"):
        puppet.render(mouth=1)
    with pytest.raises(BadInputError, match="finite"):
        puppet.render(yaw=float("nan"))
    assert np.array_equal(puppet.render(yaw=99), puppet.render(yaw=30))  # out of range: clipped


def test_presets_are_valid_gaze_free_controls(puppet):
    assert {"neutral", "happy", "surprise", "wink", "talk"} <= set(PRESETS)
    for name, controls in PRESETS.items():
        assert set(controls) <= set(CONTROLS), name
        for k, v in controls.items():
            assert RANGES[k][0] <= v <= RANGES[k][1], (name, k)
    assert np.array_equal(puppet.render(**PRESETS["neutral"]), puppet.render())
    assert inner_lip_height(puppet.landmark_image(**PRESETS["surprise"])) > inner_lip_height(puppet.landmark_image())


def test_keyframes_interpolate_smoothly():
    path = keyframes({}, {"jaw_open": 0.6}, {}, frames_per_key=5)
    assert len(path) == 11 and all(set(c) == set(CONTROLS) for c in path)
    jaw = [c["jaw_open"] for c in path]
    assert jaw[0] == 0 and jaw[5] == pytest.approx(0.6) and jaw[-1] == 0
    assert all(a <= b for a, b in zip(jaw[:5], jaw[1:6]))


def test_recording_resamples_in_real_time():
    rec = Recording([(0.0, {"jaw_open": 0.0}), (0.5, {"jaw_open": 0.5}), (1.0, {"jaw_open": 1.0})])
    frames = rec.resample(fps=10)
    assert len(frames) == 11
    assert frames[4]["jaw_open"] == 0.0 and frames[5]["jaw_open"] == 0.5 and frames[-1]["jaw_open"] == 1.0
    with pytest.raises(BadInputError, match="empty"):
        Recording().resample(25)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_recorder_exports_labelled_video(puppet, tmp_path, suffix):
    puppet.start_recording()
    for v in (0.0, 0.3, 0.6, 0.9):
        puppet.render(jaw_open=v)
    rec = puppet.stop_recording()
    assert len(rec) == 4 and not puppet.is_recording
    path = puppet.export(tmp_path / f"clip{suffix}", fps=10, caption="SYNTHETIC")
    assert "synthetic" in (read_label(path) or "").lower()
    frames = read_frames(path)
    expected = len(rec.resample(10))  # real-time replay: depends on how fast the 4 renders were
    assert frames.shape[1:3] == (64, 64)
    if suffix == ".mp4":
        assert len(frames) == expected
    else:  # Pillow merges identical consecutive gif frames (adding their durations)
        assert 2 <= len(frames) <= expected
    assert len(puppet.recording) == 4  # exporting re-renders without recording itself


def test_export_with_landmarks_side_by_side(puppet, tmp_path):
    path = puppet.export(tmp_path / "talk.gif", keyframes({}, PRESETS["talk"], frames_per_key=2), fps=5,
                         landmarks=True, caption=None)
    frames = read_frames(path)
    assert frames.shape[1:3] == (64, 128)
    assert read_label(path)


def test_drive_from_a_track_transfers_motion_not_shape(puppet):
    from tkh.animate import Track

    src = puppet.neutral
    # a driver with another face shape (wider), elsewhere in its frame, and larger; frame 0 is neutral
    driver0 = (src - src.mean(0)) * np.array([1.3, 1.0]) * 2.0 + 300
    opened = puppet.landmarks(jaw_open=1.0)
    driver2 = driver0 + (opened - src) * 2.0  # the same mouth opening, at the driver's scale
    lms = np.stack([driver0, np.full_like(driver0, np.nan), driver2]).astype(np.float32)
    track = Track(lms, np.isfinite(lms).all(axis=(1, 2)), 25.0, "track", "synthetic")
    out = puppet.driving_landmarks(track)
    assert np.allclose(out[0], src, atol=1e-3)  # the portrait keeps its own shape
    assert np.allclose(out[1], out[0])  # a frame without a face holds the last pose
    lip = slice(60, 68)
    assert (out[2][lip, 1] - src[lip, 1]).max() > 0.5 * (opened[lip, 1] - src[lip, 1]).max()
    frames = list(puppet.drive_from_video(track))
    assert len(frames) == 3 and np.array_equal(frames[0], puppet.render_landmarks(out[0]))


def test_drive_from_video(puppet, carphone_path):
    frames = list(puppet.drive_from_video(carphone_path, max_frames=3, backend="dlib"))
    assert len(frames) == 3 and all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)


def test_benchmark_reports_frame_rate(puppet):
    b = puppet.benchmark(n=2)
    assert b["ms_per_frame"] > 0 and b["fps"] > 0 and b["device"] == "cpu" and b["bf16"] is False
