"""The puppeteer engine: encode a portrait once, then render any expression or head pose cheaply.

Zakharov et al. (2019) drive the generator only through the landmark image y (sec. 3.1): once a
portrait is adapted (sec. 3.3: ψ̂ = P·ê feed-forward, or a fine-tuned ψ' and G), every new frame is

    landmarks  --tkh.landmarks.edit(**controls)-->  edited landmarks (68, 2)
               --tkh.landmarks.rasterize-->          y (3, S, S)
               --G.render(y, ψ)-->                   x̂ (3, S, S)

so moving a slider costs one generator pass and nothing else: E never runs again. This module is
the engine half of an engine/UI split (as in StyleGAN3's `visualizer.py`); `tkh.widgets` only wires
ipywidgets to `Puppet.render`.

- `Puppet(adapted)` / `Puppet.from_image(image, model="small", mode="ff")`
- `render(**controls) -> uint8 (S, S, 3)`; `render_pair(**controls)` also returns the landmark image.
- `PRESETS`: gaze-free expression presets as data (68-point landmarks carry no pupils, so no preset
  can move the gaze).
- `keyframes(...)`: a smooth control path between control dicts (for scripted clips).
- recording: `start_recording()`, `stop_recording()`, `export(path, fps, caption)` through
  `tkh.media.write_video` (every file labelled synthetic).
- `drive_from_video(path)`: a video of a person moves the portrait through the same render path
  (`tkh.animate`'s driver loading and motion normalisation, reused).

Speed: G runs as `tkh.precision` decides (amp / channels_last: on CUDA bf16 autocast and channels-last,
optionally `torch.compile`d, after a warm-up call; on a CPU bf16 and channels_last only where a short
probe finds them faster). Spectral normalisation is folded into plain weights once (a private
copy of G), since σ(W) is constant at inference time.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tkh import precision, pretrained
from tkh.adapt import adapt
from tkh.animate import load_driver, transfer_motion
from tkh.errors import BadInputError
from tkh.landmarks import edit, rasterize
from tkh.landmarks.coverage import MIN_FACE_FRACTION
from tkh.landmarks.edit import RANGES
from tkh.media import write_video
from tkh.models import Generator, TalkingHeadModel
from tkh.tensors import to_tensor, to_uint8

__all__ = ["CONTROLS", "PRESETS", "Puppet", "Recording", "keyframes", "neutral_controls"]

# Every control `tkh.landmarks.edit` understands, in the order the UI shows them, with its range.
CONTROLS: tuple[str, ...] = ("jaw_open", "smile", "blink_left", "blink_right", "brows", "yaw", "pitch", "roll")

# Expression presets: name -> the controls it sets (the rest stay at 0). Gaze-free: the 68 iBUG points
# have no pupils, so y (and so G) cannot be told where to look; presets move only lids, brows, mouth, head.
PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"smile": 0.9, "jaw_open": 0.12, "brows": 0.15},
    "surprise": {"jaw_open": 0.65, "brows": 1.0, "smile": -0.1},
    "wink": {"blink_left": 1.0, "smile": 0.5},
    "talk": {"jaw_open": 0.35, "smile": 0.1},
    "sleepy": {"blink_left": 0.75, "blink_right": 0.75, "brows": -0.3, "pitch": 6.0},
    "frown": {"smile": -0.8, "brows": -0.9},
    "curious": {"brows": 0.6, "yaw": -15.0, "roll": 8.0},
}


def neutral_controls() -> dict[str, float]:
    """All controls at 0: the portrait's own landmarks."""
    return dict.fromkeys(CONTROLS, 0.0)


def _check_controls(controls: Mapping[str, float]) -> dict[str, float]:
    unknown = set(controls) - set(CONTROLS)
    if unknown:
        raise BadInputError(f"puppet: unknown control(s) {sorted(unknown)}; known: {list(CONTROLS)}")
    full = neutral_controls()
    for name, value in controls.items():
        v = float(value)
        if not np.isfinite(v):
            raise BadInputError(f"puppet: {name}={value} is not a finite number")
        lo, hi = RANGES[name]
        full[name] = min(max(v, lo), hi)  # sliders live in range; scripted paths are clipped silently
    return full


def keyframes(*keys: Mapping[str, float], frames_per_key: int = 12) -> list[dict[str, float]]:
    """A smooth control path through control dicts (cosine ease between consecutive keys).

    keyframes({}, {"jaw_open": .6}, {}) -> 2·frames_per_key + 1 control dicts, mouth opening and closing.
    """
    if len(keys) < 2:
        raise BadInputError("keyframes: give at least two control dicts")
    full = [_check_controls(k) for k in keys]
    out: list[dict[str, float]] = []
    for a, b in zip(full[:-1], full[1:]):
        for i in range(frames_per_key):
            w = 0.5 - 0.5 * np.cos(np.pi * i / frames_per_key)
            out.append({n: float((1 - w) * a[n] + w * b[n]) for n in CONTROLS})
    out.append(full[-1])
    return out


class AdaptedLike(Protocol):
    """What the engine needs of `tkh.adapt.AdaptedPortrait` (sec. 3.3)."""

    G: torch.nn.Module  # the generator (fine-tuned or base), with `render(y, psi)`
    psi: torch.Tensor  # ψ' or ψ̂ = P·ê: (n_adain,) or (1, n_adain)
    crops: np.ndarray  # (T, S, S, 3) uint8 source crops
    crop_landmarks: np.ndarray  # (T, 68, 2) their landmarks in crop pixels
    model_name: str


@dataclass
class Recording:
    """A recorded slider path: (seconds since the start, full control dict) per rendered frame."""

    events: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events)

    @property
    def duration(self) -> float:
        return self.events[-1][0] if self.events else 0.0

    def resample(self, fps: float, max_seconds: float = 60.0) -> list[dict[str, float]]:
        """Controls at a fixed frame rate: at each tick, the latest recorded controls (replays in real time).

        A recording of a single event (or scripted renders with no time between them) keeps one frame
        per event.
        """
        if not self.events:
            raise BadInputError("recording is empty: render some frames between start_recording() and export()")
        if self.duration * fps < len(self.events):  # recorded faster than real time: one frame per event
            return [c for _, c in self.events]
        n = int(min(self.duration, max_seconds) * fps) + 1
        times = np.array([t for t, _ in self.events])
        idx = np.searchsorted(times, np.arange(n) / fps, side="right") - 1
        return [self.events[max(i, 0)][1] for i in idx]


class Puppet:
    """Render an adapted portrait under any expression/pose controls (sec. 3.1: G sees only y).

    adapted: a `tkh.adapt.AdaptedPortrait` (or anything with .G, .psi, .crops, .crop_landmarks).
    index: which of its source images gives the neutral landmarks (and the crop shown as "source").
    device: None = where ψ lives; "auto" = CUDA when available; or any torch device.
    compile: `torch.compile` the generator on CUDA (a slower first frame, faster later ones).
    warmup: render one frame now so the first slider move is not the slow one.
    amp, channels_last: `tkh.precision`'s settings ("auto": bf16 / channels_last where they are faster).
    """

    def __init__(self, adapted: AdaptedLike, index: int = 0, device: str | torch.device | None = None,
                 compile: bool = False, warmup: bool = True, amp: str = "auto",
                 channels_last: str = "auto") -> None:
        self.adapted = adapted
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device) if device is not None else adapted.psi.device
        self.model_name = str(getattr(adapted, "model_name", "tkh"))
        crops = np.asarray(adapted.crops)
        lms = np.asarray(adapted.crop_landmarks, dtype=np.float32)
        if crops.ndim == 3:
            crops, lms = crops[None], lms[None]
        if not 0 <= index < len(crops):
            raise BadInputError(f"puppet: index {index} out of range for {len(crops)} source image(s)")
        self.source = crops[index]  # (S, S, 3) uint8
        self.neutral = lms[index].copy()  # (68, 2) landmarks of the source crop, in crop pixels
        self.size = int(self.source.shape[0])

        # A private inference copy of G: eval mode, spectral norm folded into plain weights (σ(W) is a
        # constant once training is over), no autograd state; bf16 + channels-last on CUDA.
        self.G = _inference_copy(adapted.G).to(self.device)
        self.psi = adapted.psi.detach().to(self.device, torch.float32).reshape(1, -1)
        self.precision = precision.resolve(amp, channels_last, self.device, getattr(self.G, "cfg", None))
        self.use_bf16 = self.precision.bf16
        self.precision.prepare(self.G)
        self._render_fn = self.G.render
        if compile and self.device.type == "cuda":
            self._render_fn = torch.compile(self.G.render, dynamic=False)

        self.last_ms = float("nan")  # wall time of the last render (landmark edit to uint8 frame)
        self._recording: Recording | None = None
        self._record_t0 = 0.0
        self.renders = 0  # frames rendered so far (coalescing tests count these)
        if warmup:
            self.render()
            if compile and self.device.type == "cuda":
                self.render(jaw_open=0.5)  # compile may specialise on the first call

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_image(cls, image: Any, model: Any = "small", mode: str = "ff", device: str | torch.device | None = None,
                   steps: int | None = None, compile: bool = False, progress: bool = False,
                   backend: str = "auto") -> Puppet:
        """Adapt one portrait (sec. 3.3) and wrap it: `Puppet.from_image("me.jpg", model="small")`.

        model: a `TalkingHeadModel`, a checkpoint path, or a shipped weights name (`tkh.pretrained.load`).
        mode: "ff" (feed-forward ψ̂ = P·ê, instant) or "ft" (fine-tuning, better identity, slower).
        backend: the landmark detector (`tkh.landmarks.detect`).
        """
        model = _load_model(model)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        adapted = adapt(model, [image], mode=mode, steps=steps, progress=progress, device=device, backend=backend)
        return cls(adapted, device=device, compile=compile)

    # --- rendering ---------------------------------------------------------------------------------
    def landmarks(self, **controls: float) -> np.ndarray:
        """The edited landmarks (68, 2) in crop pixels for these controls (`tkh.landmarks.edit`)."""
        c = _check_controls(controls)
        return edit(self.neutral, **c) if any(c.values()) else self.neutral.copy()

    def landmark_image(self, **controls: float) -> np.ndarray:
        """The landmark image y as uint8 (S, S, 3), what G sees for these controls (sec. 3.1)."""
        return rasterize(self.landmarks(**controls), self.size)

    def render(self, **controls: float) -> np.ndarray:
        """The portrait under these controls: uint8 (S, S, 3). Controls: `CONTROLS`, ranges as in `edit`."""
        return self.render_pair(**controls)[0]

    def render_pair(self, **controls: float) -> tuple[np.ndarray, np.ndarray]:
        """(frame, landmark image), both uint8 (S, S, 3)."""
        t0 = time.perf_counter()
        c = _check_controls(controls)
        y_img = rasterize(edit(self.neutral, **c) if any(c.values()) else self.neutral, self.size)
        frame = self._generate(y_img)
        self.last_ms = (time.perf_counter() - t0) * 1000
        self.renders += 1
        if self._recording is not None:
            self._recording.events.append((time.perf_counter() - self._record_t0, c))
        return frame, y_img

    def render_landmarks(self, landmarks: np.ndarray) -> np.ndarray:
        """Render explicit landmarks (68, 2) in crop pixels (e.g. from a driving video): uint8 (S, S, 3)."""
        return self.render_landmarks_pair(landmarks)[0]

    def render_landmarks_pair(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(frame, landmark image) for explicit landmarks (68, 2) in crop pixels, both uint8 (S, S, 3)."""
        t0 = time.perf_counter()
        y_img = rasterize(np.asarray(landmarks, np.float32), self.size)
        frame = self._generate(y_img)
        self.last_ms = (time.perf_counter() - t0) * 1000
        self.renders += 1
        return frame, y_img

    def _generate(self, y_img: np.ndarray) -> np.ndarray:
        """x̂ = G.render(y, ψ) for one uint8 landmark image (S, S, 3) -> uint8 frame (S, S, 3)."""
        y = self.precision.tensor(to_tensor(y_img, batch=True, device=self.device))
        with torch.inference_mode(), self.precision.autocast():
            return to_uint8(self._render_fn(y, self.psi)[0])

    @property
    def last_fps(self) -> float:
        """Frames per second of the last render (1000 / last_ms)."""
        return 1000.0 / self.last_ms if self.last_ms and np.isfinite(self.last_ms) else float("nan")

    def benchmark(self, n: int = 10) -> dict[str, float]:
        """Median render time over `n` frames of a moving mouth: {'ms_per_frame', 'fps', 'device'}."""
        times = []
        for i in range(n):
            self.render(jaw_open=(i % 5) / 5)
            times.append(self.last_ms)
        ms = float(np.median(times))
        return {"ms_per_frame": ms, "fps": 1000.0 / ms, "device": str(self.device), "bf16": self.use_bf16,
                "channels_last": self.precision.channels_last, "precision": self.precision.describe()}

    # --- recording -----------------------------------------------------------------------------------
    def start_recording(self) -> None:
        """Record every rendered control dict (with its time) from now on."""
        self._recording = Recording()
        self._record_t0 = time.perf_counter()

    def stop_recording(self) -> Recording:
        """Stop recording; returns the recording (also kept as `.recording` for `export`)."""
        rec = self._recording or Recording()
        self._recording = None
        self.recording = rec
        return rec

    @property
    def is_recording(self) -> bool:
        return self._recording is not None

    def export(self, path: str | Path, controls: Sequence[Mapping[str, float]] | Recording | None = None,
               fps: float = 25.0, caption: str | None = "SYNTHETIC", landmarks: bool = False) -> Path:
        """Render a control path and write it as mp4/gif via `tkh.media.write_video` (labelled synthetic).

        controls: a list of control dicts (e.g. `keyframes(...)`), a `Recording`, or None for the last
        recording. landmarks=True puts the landmark image beside each frame. caption: burnt-in text.
        """
        if controls is None:
            if self._recording is not None:
                self.stop_recording()
            controls = getattr(self, "recording", None)
            if controls is None:
                raise BadInputError("puppet.export: nothing recorded; call start_recording() and move the sliders")
        path_controls = controls.resample(fps) if isinstance(controls, Recording) else list(controls)
        if not path_controls:
            raise BadInputError("puppet.export: no frames to write")
        was, self._recording = self._recording, None  # exporting must not record itself
        try:
            frames = []
            for c in path_controls:
                frame, y = self.render_pair(**c)
                frames.append(np.concatenate([frame, y], axis=1) if landmarks else frame)
        finally:
            self._recording = was
        return write_video(path, frames, fps=fps, model=self.model_name, caption=caption)

    # --- driving from a video --------------------------------------------------------------------------
    def drive_from_video(self, driver: Any, max_frames: int | None = None, backend: str = "auto",
                         reference: str | int = "first",
                         min_face_fraction: float = MIN_FACE_FRACTION) -> Iterator[np.ndarray]:
        """Frames of the portrait following a driver's expressions and head motion: uint8 (S, S, 3) each.

        driver: a video path, a .npz landmark track, or a `tkh.animate.Track` (`tkh.animate.load_driver`).
        The driver's landmarks are normalised onto this portrait by `tkh.animate.transfer_motion` (only
        the motion since the `reference` frame transfers, not the driver's face shape: sec. 4.4's
        identity leakage), then each frame takes the same rasterize -> G.render path as the sliders.
        A video or track needs a face in most frames, as for `tkh animate` (`tkh.animate.vetted`: NoFaceError
        below `min_face_fraction`, default half; the frames without a face are filled in).
        """
        for lms in self.driving_landmarks(driver, max_frames=max_frames, backend=backend, reference=reference,
                                          min_face_fraction=min_face_fraction):
            yield self.render_landmarks(lms)

    def driving_landmarks(self, driver: Any, max_frames: int | None = None, backend: str = "auto",
                          reference: str | int = "first", min_face_fraction: float = MIN_FACE_FRACTION
                          ) -> np.ndarray:
        """The driver's landmark track mapped onto this portrait's crop: (T, 68, 2) (see `drive_from_video`)."""
        track = load_driver(driver, self.neutral, backend=backend, max_frames=max_frames,
                            min_face_fraction=min_face_fraction)
        lms, valid = track.landmarks, track.valid
        if max_frames is not None:
            lms, valid = lms[:max_frames], valid[:max_frames]
        return transfer_motion(lms, self.neutral, valid, reference=reference)


def _inference_copy(G: torch.nn.Module) -> torch.nn.Module:
    """A frozen eval-mode copy of G with every spectral-norm weight W/σ(W) folded into a plain weight.

    Built as a fresh generator with `spectral_norm=False` loaded with the normalised weights (the
    parametrised modules share their class with G, so removing parametrisations in place would break G).
    Generators of another class are deep-copied and only put in eval mode.
    """
    G.eval()
    if not isinstance(G, Generator) or not G.cfg.spectral_norm:
        return copy.deepcopy(G).eval().requires_grad_(False)
    plain = Generator(dataclasses.replace(G.cfg, spectral_norm=False))
    state = {}
    with torch.no_grad():
        for name, module in G.named_modules():
            if hasattr(module, "parametrizations"):
                for pname in module.parametrizations.keys():
                    state[f"{name}.{pname}" if name else pname] = getattr(module, pname).detach().clone()
        for key, value in G.state_dict().items():
            if ".parametrizations." not in key:
                state[key] = value.detach().clone()
    plain.load_state_dict(state, strict=True)
    return plain.eval().requires_grad_(False)


def _load_model(model: Any):
    """A TalkingHeadModel from itself, or by shipped name / checkpoint path (`tkh.pretrained.load`)."""
    if isinstance(model, TalkingHeadModel):
        return model
    return pretrained.load(model)
