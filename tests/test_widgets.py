"""The ipywidgets puppeteer (tkh.widgets.PuppetApp): sliders drive the displayed JPEG, events are coalesced.

No browser here: widgets are plain Python objects, so setting a slider's `.value` fires the same
observers a drag in JupyterLab fires (tests/test_browser.py checks the real front end).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from test_puppet import inner_lip_height, puppet, tiny_model_path  # noqa: E402,F401,I001  (shared fixtures)

from tkh.media import read_label  # noqa: E402
from tkh.puppet import CONTROLS, PRESETS, Puppet  # noqa: E402
from tkh.widgets import PuppetApp  # noqa: E402


def shown(app: PuppetApp) -> np.ndarray:
    """The frame the user sees: the Image widget's JPEG bytes, decoded."""
    assert app.image.format == "jpeg"
    return np.asarray(Image.open(io.BytesIO(app.image.value)).convert("RGB"))


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


def test_slider_events_are_coalesced_latest_wins(app):
    renders0, events0 = app.stats["renders"], app.stats["events"]
    values = np.linspace(0.01, 1, 60)
    t0 = time.perf_counter()
    for v in values:  # a fast drag: 60 events in well under the time of 60 renders
        app.sliders["jaw_open"].value = float(v)
    assert time.perf_counter() - t0 < 1.0  # the event handlers never wait for a render
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
