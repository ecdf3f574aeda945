"""An ipywidgets puppeteer on top of `tkh.puppet.Puppet` (the UI half of the engine/UI split).

This module only wires widgets to `Puppet.render_pair`; every model call lives in `tkh.puppet`.

- One `ipywidgets.Image(format="jpeg")` whose `.value` is replaced with JPEG bytes per frame: no
  matplotlib figure is redrawn, so a frame costs one generator pass plus a few ms of encoding.
- Latest-wins: slider events only store the wanted controls and wake a render thread. The thread
  renders the newest controls it finds, skips them when they equal what is on screen, waits at
  least `min_interval` seconds between renders, and never renders a value that was superseded while
  it was busy. A fast drag of 50 events therefore costs a handful of renders, not 50.

- Programmatic values are set to exactly the float the browser's slider (noUiSlider) would hold for
  them (`slider_value`). Otherwise the front end "corrects" e.g. 0.04 to 0.040000000000000036 and
  sends it back; while a cell is running the kernel only reads that echo after the cell, so a stale
  value overwrites the last one the code set (seen in the browser test: brows stuck at 0.04).

`PuppetApp(puppet).widget` is what a notebook displays; `app.set_controls(jaw_open=0.8)` drives it
from code (tests, scripted demos) and waits until that frame is shown; `app.play(video)` drives the
shown frame from a video of a person through the same render path.
"""

from __future__ import annotations

import io
import math
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
from PIL import Image

from tkh.animate import load_driver
from tkh.errors import TkhError, describe_os_error
from tkh.landmarks import edit, rasterize
from tkh.landmarks.coverage import MIN_FACE_FRACTION
from tkh.puppet import CONTROLS, PRESETS, Puppet, neutral_controls

__all__ = ["SLIDERS", "PuppetApp", "jpeg_bytes", "landmark_sliders", "slider_value"]

# Slider table: control -> (label, min, max, step). Ranges match `tkh.landmarks.edit`; presets lie on the grid.
SLIDERS: dict[str, tuple[str, float, float, float]] = {
    "jaw_open": ("jaw open", 0.0, 1.0, 0.01),
    "smile": ("smile", -1.0, 1.0, 0.01),
    "blink_left": ("blink L", 0.0, 1.0, 0.01),
    "blink_right": ("blink R", 0.0, 1.0, 0.01),
    "brows": ("brows", -1.0, 1.0, 0.01),
    "yaw": ("yaw °", -30.0, 30.0, 0.5),
    "pitch": ("pitch °", -20.0, 20.0, 0.5),
    "roll": ("roll °", -30.0, 30.0, 0.5),
}
assert tuple(SLIDERS) == CONTROLS


def slider_value(value: float, lo: float, hi: float, step: float) -> float:
    """`value` clipped to [lo, hi], on the step grid, as the exact float a browser slider holds for it.

    Mirrors noUiSlider's arithmetic (the slider ipywidgets' FloatSlider draws): value -> percent of the
    range -> nearest step (in percent) -> value. E.g. 0.04 on [-1, 1] becomes 0.040000000000000036.
    The result is a fixed point of that round trip, so the front end has nothing to send back.
    """
    v = min(max(float(value), lo), hi)
    pct = 100.0 if v >= hi else 100 * (v - lo) / (hi - lo)
    if pct < 100:
        pct_step = 100 * step / (hi - lo)
        pct = math.floor(pct / pct_step + 0.5) * pct_step  # JavaScript's Math.round
    return float(hi) if pct >= 100 else pct * (hi - lo) / 100 + lo


def jpeg_bytes(image: np.ndarray, quality: int = 90, size: int | None = None) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG bytes, optionally resized so its height is `size` (nearest-free: bilinear)."""
    im = Image.fromarray(np.ascontiguousarray(image))
    if size and im.height != size:
        im = im.resize((round(im.width * size / im.height), size), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class PuppetApp:
    """Sliders, presets, reset, landmark toggle, recorder and an fps label around one `Puppet`.

    puppet: the engine. display_size: height in pixels of the shown frame (frames are upscaled for
    display only). min_interval: seconds between two renders (throttle; 0.06 s ≈ 16 fps at most).
    """

    def __init__(self, puppet: Puppet, display_size: int = 256, min_interval: float = 0.06,
                 export_path: str | Path = "puppet.mp4") -> None:
        self.puppet = puppet
        self.display_size = int(display_size)
        self.min_interval = float(min_interval)
        self.stats = {"events": 0, "renders": 0, "skipped_unchanged": 0}
        self.last_error: str | None = None

        style = {"description_width": "64px"}
        layout = widgets.Layout(width="330px")
        self.sliders: dict[str, Any] = {}
        for name, (label, lo, hi, step) in SLIDERS.items():
            s = widgets.FloatSlider(value=0.0, min=lo, max=hi, step=step, description=label, continuous_update=True,
                                    readout_format=".2f" if step < 0.1 else ".1f", style=style, layout=layout)
            s.observe(self._on_slider, names="value")
            self.sliders[name] = s

        self.preset_buttons = []
        for name in PRESETS:
            b = widgets.Button(description=name, layout=widgets.Layout(width="78px"), tooltip=f"preset: {PRESETS[name] or 'all 0'}")
            b.on_click(lambda _b, n=name: self.apply_preset(n))
            self.preset_buttons.append(b)
        self.reset_button = widgets.Button(description="reset", icon="undo", button_style="warning",
                                           layout=widgets.Layout(width="90px"))
        self.reset_button.on_click(lambda _b: self.reset())
        self.show_landmarks = widgets.ToggleButton(value=False, description="landmarks", icon="eye",
                                                   tooltip="show the landmark image y beside the result",
                                                   layout=widgets.Layout(width="110px"))
        self.show_landmarks.observe(lambda _c: self._request(force=True), names="value")

        self.record_button = widgets.ToggleButton(value=False, description="record", icon="circle",
                                                  tooltip="record the slider path", layout=widgets.Layout(width="90px"))
        self.record_button.observe(self._on_record, names="value")
        self.export_name = widgets.Text(value=str(export_path), description="file", style={"description_width": "30px"},
                                        tooltip="name.mp4 or name.gif", layout=widgets.Layout(width="200px"))
        self.export_button = widgets.Button(description="export", icon="download", layout=widgets.Layout(width="90px"))
        self.export_button.on_click(lambda _b: self.export())
        self.status = widgets.Label(value="")
        self.fps_label = widgets.Label(value="")

        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(width="auto", height="auto"))
        self.image.add_class("tkh-puppet-frame")  # the browser test finds the frame by this class
        # the photo being animated, encoded once: the reference a user compares the result against
        self.source_image = widgets.Image(value=jpeg_bytes(puppet.source, size=max(48, self.display_size // 3)),
                                          format="jpeg", layout=widgets.Layout(width="auto", height="auto"))
        self.source_image.add_class("tkh-puppet-source")

        controls_box = widgets.VBox(list(self.sliders.values()))
        buttons = widgets.HBox([self.reset_button, self.show_landmarks, self.record_button])
        presets = widgets.Box(self.preset_buttons, layout=widgets.Layout(flex_flow="row wrap", width="340px"))
        recorder = widgets.HBox([self.export_name, self.export_button])
        right = widgets.VBox([controls_box, widgets.HTML("<b>presets</b> (gaze-free)"), presets, buttons, recorder,
                              self.fps_label, self.status])
        source = widgets.HBox([self.source_image, widgets.HTML("<div style='line-height:1.3'><b>source</b><br>the photo the<br>model adapted to</div>")])
        self.widget = widgets.HBox([widgets.VBox([self.image, source]), right])

        # latest-wins machinery: the wanted controls, what is on screen, a wake-up event and a worker
        self._lock = threading.Lock()  # guards _wanted / _shown (held for microseconds)
        self._engine_lock = threading.Lock()  # the engine is not re-entrant: renders and exports take turns
        self._wanted: tuple | None = None
        self._shown: tuple | None = None
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._suspend = False  # set while several sliders are changed at once (presets, reset)
        self._closed = False
        self._last_render = 0.0
        self._thread = threading.Thread(target=self._worker, name="tkh-puppet-render", daemon=True)
        self._thread.start()
        self._request()
        self.wait()

    # --- public API ------------------------------------------------------------------------------
    @property
    def controls(self) -> dict[str, float]:
        """The sliders' current values."""
        return {n: float(s.value) for n, s in self.sliders.items()}

    def set_controls(self, wait: bool = True, timeout: float = 60.0, **controls: float) -> None:
        """Move sliders from code (as a user would); unnamed controls keep their value. Waits for the frame."""
        unknown = set(controls) - set(CONTROLS)
        if unknown:
            raise ValueError(f"unknown control(s) {sorted(unknown)}; known: {list(CONTROLS)}")
        self._suspend = True
        try:
            for name, value in controls.items():
                s = self.sliders[name]
                # exactly what the browser's slider would hold: any other float is "corrected" there and
                # echoed back, racing the next programmatic change (sliders drifting by a step)
                s.value = slider_value(value, s.min, s.max, s.step)
        finally:
            self._suspend = False
        self._request()
        if wait:
            self.wait(timeout)

    def apply_preset(self, name: str) -> None:
        """Set every slider to a preset of `tkh.puppet.PRESETS` (others to 0)."""
        values = neutral_controls() | PRESETS[name]
        self.set_controls(wait=False, **values)
        self.status.value = f"preset: {name}"

    def reset(self) -> None:
        """All sliders back to 0 (the portrait's own expression)."""
        self.set_controls(wait=False, **neutral_controls())
        self.status.value = "reset"

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until the newest requested frame is on screen (or `timeout` s). True when it is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = self._wanted == self._shown and self._idle.is_set()
            if done:
                return True
            time.sleep(0.005)
        return False

    def export(self, path: str | Path | None = None, fps: float = 25.0) -> Path | None:
        """Write the recorded slider path as mp4/gif (labelled synthetic) via `Puppet.export`."""
        if self.record_button.value:
            self.record_button.value = False  # stops the recording
        path = Path(path or self.export_name.value)
        try:
            with self._engine_lock:  # no slider frame while exporting
                out = self.puppet.export(path, fps=fps)
        except Exception as exc:  # shown in the UI; the notebook keeps running

            self.status.value = f"export failed: {describe_os_error(exc, path) or exc}"
            return None
        n = len(getattr(self.puppet, "recording", []) or [])
        self.status.value = f"saved {out} ({n} recorded frames)"
        return out

    def play(self, driver: Any, max_frames: int | None = None, backend: str = "auto",
             min_face_fraction: float = MIN_FACE_FRACTION) -> int:
        """Show the portrait following a driving video (a file of the user), a .npz track or a `tkh.animate.Track`.

        The same path as the sliders (`Puppet.drive_from_video`: the driver's motion, normalised onto the
        portrait, -> rasterize -> G), shown frame by frame in the app's image; slider renders wait meanwhile.
        Returns the number of frames shown; the last one stays until a slider moves. As for `tkh animate`,
        a driver with a face in fewer than `min_face_fraction` of its frames is refused (the status says why,
        NoFaceError is raised); otherwise the status says how many frames were filled in.
        """
        name = Path(driver).name if isinstance(driver, (str, Path)) else type(driver).__name__
        self.status.value = f"driving from {name}: tracking landmarks"
        try:
            driving = load_driver(driver, self.puppet.neutral, backend=backend, max_frames=max_frames,
                                  min_face_fraction=min_face_fraction)
        except TkhError as exc:
            self.status.value = f"cannot drive from {name}: {exc}"
            raise
        note = f" ({driving.coverage.describe()})" if driving.coverage is not None else ""
        shown = 0
        with self._engine_lock:
            track = self.puppet.driving_landmarks(driving, max_frames=max_frames)
            for lms in track:
                frame, y = self.puppet.render_landmarks_pair(lms)
                self._show(frame, y if self.show_landmarks.value else None)
                shown += 1
                self.status.value = f"driving from {name}: frame {shown}/{len(track)}"
        self.status.value = f"drove {shown} frames from {name}{note}; move a slider to take over"
        return shown

    def close(self) -> None:
        """Stop the render thread and close the widgets."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.widget.close()

    # --- events ------------------------------------------------------------------------------------
    def _on_slider(self, _change: dict) -> None:
        self.stats["events"] += 1
        if not self._suspend:
            self._request()

    def _on_record(self, change: dict) -> None:
        if change["new"]:
            self.puppet.start_recording()
            self.record_button.description, self.record_button.button_style = "stop", "danger"
            self.status.value = "recording: move the sliders"
            self._request(force=True)  # the current pose is the first recorded frame
        else:
            rec = self.puppet.stop_recording()
            self.record_button.description, self.record_button.button_style = "record", ""
            self.status.value = f"recorded {len(rec)} frames over {rec.duration:.1f} s: press export"

    def _request(self, force: bool = False) -> None:
        """Ask for the sliders' current state; the worker renders only the newest request."""
        key = (tuple(self.controls.values()), bool(self.show_landmarks.value))
        with self._lock:
            if force:
                self._shown = None
            self._wanted = key
        self._wake.set()

    def _worker(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                break
            while True:
                # throttle: at most one render per min_interval; events arriving meanwhile overwrite _wanted
                pause = self.min_interval - (time.monotonic() - self._last_render)
                if pause > 0:
                    time.sleep(pause)
                with self._lock:
                    key = self._wanted
                    if key is None or key == self._shown:
                        self.stats["skipped_unchanged"] += key is not None
                        break
                    self._idle.clear()
                try:
                    with self._engine_lock:  # slider events never wait on this lock, only on _lock
                        self._render(key)
                finally:
                    with self._lock:
                        self._shown = key
                        self._idle.set()
                    self._last_render = time.monotonic()

    def _render(self, key: tuple) -> None:
        values, with_landmarks = key
        try:
            frame, y = self.puppet.render_pair(**dict(zip(CONTROLS, values)))
        except Exception as exc:  # a bad frame must not kill the render thread
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.status.value = f"render failed: {self.last_error}"
            return
        self.stats["renders"] += 1
        self._show(frame, y if with_landmarks else None)
        self.landmark_frame = y  # the last rendered arrays (tests read them)

    def _show(self, frame: np.ndarray, y: np.ndarray | None) -> None:
        """Put a rendered frame (and the landmark image beside it when given) on screen, with the frame rate."""
        self.frame = frame
        self.image.value = jpeg_bytes(frame if y is None else np.concatenate([frame, y], axis=1), size=self.display_size)
        ms = self.puppet.last_ms
        self.fps_label.value = (f"{ms:.0f} ms/frame ≈ {1000 / ms:.1f} fps on {self.puppet.device}"
                                f"{' (bf16)' if self.puppet.use_bf16 else ''}")


def landmark_sliders(points: np.ndarray, size: int, figsize: float = 3.5):
    """Sliders over `tkh.landmarks.edit` that redraw the landmark image y of the edited `points` (crop pixels).

    No model is involved (notebook 01 shows what the generator will be given); returns the
    `ipywidgets.interactive` to display. Each change re-edits and re-rasterizes, fast enough to follow it."""
    import matplotlib.pyplot as plt  # lazy: 0.42 s to import (python -X importtime), only these sliders draw


    def show(**controls: float) -> None:
        plt.figure(figsize=(figsize, figsize))
        plt.imshow(rasterize(edit(points, **controls), size))
        plt.axis("off")
        plt.show()

    sliders = {name: widgets.FloatSlider(value=0.0, min=lo, max=hi, step=step, description=label,
                                         continuous_update=False)
               for name, (label, lo, hi, step) in SLIDERS.items()}
    return widgets.interactive(show, **sliders)
