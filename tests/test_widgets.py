"""The ipywidgets puppeteer (tkh.widgets.PuppetApp): sliders drive the displayed JPEG, events are coalesced.

No browser here: widgets are plain Python objects, so setting a slider's `.value` fires the same
observers a drag in JupyterLab fires (tests/test_browser.py checks the real front end).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from test_puppet import inner_lip_height, puppet, tiny_model_path  # noqa: E402,F401,I001  (shared fixtures)

from tkh.landmarks.draw import PART_COLOURS  # noqa: E402
from tkh.media import read_label  # noqa: E402
from tkh.puppet import CONTROLS, PRESETS, Puppet  # noqa: E402
from tkh.widgets import SLIDERS, PuppetApp, slider_value  # noqa: E402


def shown(app: PuppetApp) -> np.ndarray:
    """The frame the user sees: the Image widget's JPEG bytes, decoded."""
    assert app.image.format == "jpeg"
    return np.asarray(Image.open(io.BytesIO(app.image.value)).convert("RGB"))


def part_rows(landmark_image: np.ndarray, part: str, window: np.ndarray, tol: int = 80) -> tuple[int, int]:
    """(top, bottom) rows of a face part's colour in a (displayed, JPEG-decoded) landmark image.

    window: points (N, 2) in this image's pixels; only their box (plus a margin) is searched, so that
    JPEG colour bleeding from a neighbouring part (the inner lip's cyan near the eye's green) cannot count.
    """
    colour = np.array(PART_COLOURS[part])
    margin = 0.03 * landmark_image.shape[0]
    (c0, r0), (c1, r1) = np.floor(window.min(0) - margin).astype(int), np.ceil(window.max(0) + margin).astype(int)
    r0, c0 = max(r0, 0), max(c0, 0)
    close = (np.abs(landmark_image[r0:r1, c0:c1].astype(int) - colour) < tol).all(axis=-1)
    rows = np.flatnonzero(close.any(axis=1))
    assert rows.size, f"{part} not found in the landmark image"
    return int(r0 + rows.min()), int(r0 + rows.max())


@pytest.fixture()
def app(puppet: Puppet):  # noqa: F811 (the fixture imported above)
    a = PuppetApp(puppet, display_size=128, min_interval=0.05)
    yield a
    a.close()


def test_app_shows_the_portrait_with_every_control(app):
    assert set(app.sliders) == set(CONTROLS)
    assert len(app.preset_buttons) == len(PRESETS)
    img = shown(app)
    assert img.shape == (128, 128, 3) and img.std() > 5  # a rendered frame, not a blank
    assert "ms/frame" in app.fps_label.value and "fps" in app.fps_label.value


def test_slider_changes_the_image_and_opens_the_mouth(app):
    app.show_landmarks.value = True
    app.wait()
    before_bytes, before = app.image.value, shown(app)
    assert before.shape == (128, 256, 3)  # result | landmark image
    app.set_controls(jaw_open=1.0)
    after = shown(app)
    assert app.image.value != before_bytes
    # the landmark half of the displayed JPEG: the inner lips (cyan) are further apart
    assert inner_lip_height(after[:, 128:], tol=90) > inner_lip_height(before[:, 128:], tol=90) + 4
    assert np.abs(after[:, :128].astype(int) - before[:, :128]).mean() > 0.5  # the portrait changed too
    assert inner_lip_height(app.landmark_frame) > inner_lip_height(app.puppet.landmark_image())


@pytest.mark.parametrize("control, value, part, check", [
    # jaw open: the lower inner lip goes down, much further than the upper one moves (the jaw drops)
    ("jaw_open", 1.0, "lip_inner", lambda b, a: a[1] - b[1] >= 8 and a[1] - b[1] > 3 * abs(a[0] - b[0])),
    # brows raised: the brow goes up
    ("brows", 1.0, "brow_left", lambda b, a: a[0] <= b[0] - 4 and a[1] <= b[1] - 4),
    # subject's left eye closed: its outline gets flatter (at 64 px an open eye is only ~2 px tall)
    ("blink_left", 1.0, "eye_left", lambda b, a: a[1] - a[0] <= (b[1] - b[0]) - 3),
])
def test_slider_moves_the_displayed_landmarks_the_right_way(puppet, control, value, part, check):  # noqa: F811
    """Measured on what the user sees: the landmark half of the displayed JPEG, before and after a slider move."""
    from tkh.landmarks.draw import PARTS

    app = PuppetApp(puppet, display_size=256, min_interval=0.0)
    try:
        app.show_landmarks.value = True
        app.wait()
        before = shown(app)[:, 256:]
        app.sliders[control].value = value  # what a drag in the browser sets
        assert app.wait()
        after = shown(app)[:, 256:]
    finally:
        app.close()
    scale = 256 / puppet.size
    ids = {p.name: slice(p.start, p.stop) for p in PARTS}
    window = np.concatenate([puppet.landmarks()[ids[part]], puppet.landmarks(**{control: value})[ids[part]]]) * scale
    b, a = part_rows(before, part, window), part_rows(after, part, window)
    assert check(b, a), (control, part, b, a)
    if control == "blink_left":  # the other eye keeps its height
        other = puppet.landmarks()[ids["eye_right"]] * scale
        eb, ea = part_rows(before, "eye_right", other), part_rows(after, "eye_right", other)
        assert abs((ea[1] - ea[0]) - (eb[1] - eb[0])) <= 2, (eb, ea)


def test_slider_values_are_what_the_browser_holds():
    """Programmatic values are fixed points of the browser slider's arithmetic (else it echoes a 'corrected' one)."""
    assert slider_value(0.04, -1.0, 1.0, 0.01) == 0.040000000000000036  # noUiSlider's float for 0.04 on [-1, 1]
    for name, (_label, lo, hi, step) in SLIDERS.items():
        n = round((hi - lo) / step)
        for k in range(n + 1):
            v = slider_value(lo + k * step, lo, hi, step)
            assert slider_value(v, lo, hi, step) == v, (name, k)  # stable: nothing to correct
            assert abs(v - (lo + k * step)) < 1e-9 and lo <= v <= hi, (name, k, v)
        assert slider_value(0.0, lo, hi, step) == 0.0  # every slider starts at exactly 0
        assert slider_value(hi + 5, lo, hi, step) == hi and slider_value(lo - 5, lo, hi, step) == lo


def test_app_shows_the_source_portrait(app, puppet):  # noqa: F811
    src = np.asarray(Image.open(io.BytesIO(app.source_image.value)).convert("RGB"))
    assert src.shape[0] == max(48, 128 // 3) and src.std() > 10
    small = np.asarray(Image.fromarray(puppet.source).resize(src.shape[1::-1], Image.BILINEAR))
    assert np.abs(src.astype(int) - small).mean() < 8  # the adapted photo, not a render


def test_play_drives_the_shown_frame_from_a_track(app, puppet):  # noqa: F811
    """A driving track goes through the same render path and ends on screen; a slider takes over afterwards."""
    from tkh.animate import Track

    src = puppet.neutral
    driver0 = (src - src.mean(0)) * 1.5 + 200  # another scale and place: only the motion transfers
    driver1 = driver0 + (puppet.landmarks(jaw_open=1.0) - src) * 1.5
    lms = np.stack([driver0, driver1]).astype(np.float32)
    track = Track(lms, np.ones(2, bool), 25.0, "track", "synthetic")
    before = app.image.value
    assert app.play(track) == 2
    expected = puppet.render_landmarks(puppet.driving_landmarks(track)[-1])
    assert np.array_equal(app.frame, expected) and app.image.value != before
    assert "drove 2 frames" in app.status.value
    app.set_controls(smile=0.5)
    assert np.array_equal(app.frame, puppet.render(smile=0.5))


def test_slider_events_are_coalesced_latest_wins(app):
    import threading

    renders0, events0 = app.stats["renders"], app.stats["events"]
    values = np.linspace(0.01, 1, 60)
    # The event handlers never wait for a render: with every render held at a gate, a fast drag of 60
    # events still completes (a handler that waited would hang until the gate opens).
    gate, render_pair = threading.Event(), app.puppet.render_pair
    app.puppet.render_pair = lambda **c: (gate.wait(60), render_pair(**c))[1]

    def drag() -> None:
        for v in values:
            app.sliders["jaw_open"].value = float(v)

    dragger = threading.Thread(target=drag)
    dragger.start()
    dragger.join(timeout=30)
    drag_done = not dragger.is_alive()
    gate.set()
    app.puppet.render_pair = render_pair
    assert drag_done, "a slider event handler waited for a render"
    assert app.wait(timeout=30)
    renders = app.stats["renders"] - renders0
    assert app.stats["events"] - events0 == 60
    assert 1 <= renders <= 10, renders
    # latest wins: what is on screen is the last value, not a stale one
    assert np.array_equal(app.frame, app.puppet.render(jaw_open=1.0))


def test_unchanged_values_do_not_render(app):
    app.set_controls(smile=0.5)
    n = app.stats["renders"]
    app.set_controls(smile=0.5)
    app.sliders["smile"].value = 0.5
    app.wait()
    assert app.stats["renders"] == n


def test_presets_and_reset(app):
    app.preset_buttons[list(PRESETS).index("surprise")].click()
    app.wait()
    for name in CONTROLS:
        assert app.sliders[name].value == pytest.approx(PRESETS["surprise"].get(name, 0.0))
    assert np.array_equal(app.frame, app.puppet.render(**PRESETS["surprise"]))
    app.reset_button.click()
    app.wait()
    assert all(s.value == 0 for s in app.sliders.values())
    assert np.array_equal(app.frame, app.puppet.render())


def test_record_and_export(app, tmp_path):
    app.record_button.value = True
    for v in (0.2, 0.5, 0.8):
        app.set_controls(jaw_open=v)
    app.record_button.value = False
    assert "recorded" in app.status.value
    path = app.export(tmp_path / "puppet.gif", fps=10)
    assert path is not None and path.exists() and read_label(path)
    assert "saved" in app.status.value


def test_presets_lie_on_the_slider_grid():
    """Off-grid values would be snapped by the browser and echoed back, moving other sliders by a step."""
    from tkh.widgets import SLIDERS

    for name, controls in PRESETS.items():
        for k, v in controls.items():
            step = SLIDERS[k][3]
            assert abs(v / step - round(v / step)) < 1e-6, (name, k, v)


def test_programmatic_values_are_snapped_to_the_grid(app):
    app.set_controls(jaw_open=0.123456)
    assert app.sliders["jaw_open"].value == pytest.approx(0.12)
    assert np.array_equal(app.frame, app.puppet.render(jaw_open=0.12))
