"""Temporal smoothing of landmark tracks: the One-Euro filter (Casiez, Roussel & Vogel, CHI 2012).

Per-frame detections shake by a pixel or two; drawn into the landmark image y that shake becomes
flicker in the generated video (a common complaint about the re-implementations). The One-Euro
filter is an exponential smoother whose cutoff rises with speed: still faces get strong smoothing
(no jitter), fast motion little (no lag). It is causal, so it also works live.

Positions are filtered in units of the face's size (the track's median inter-ocular distance), so
`min_cutoff` and `beta` mean the same for a 100-px and a 1000-px face. Off by default everywhere
(`detect_video(smooth=False)`).
"""

from __future__ import annotations

import numpy as np

from tkh.errors import BadInputError

MIN_CUTOFF = 1.0  # Hz: cutoff when the face is still (lower = smoother, more lag)
BETA = 4.0  # how fast the cutoff rises with speed (in inter-ocular distances per second)
D_CUTOFF = 1.0  # Hz: cutoff of the speed estimate


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal One-Euro filter over arrays of any fixed shape (e.g. one frame's (68, 2) landmarks)."""

    def __init__(self, fps: float = 30.0, min_cutoff: float = MIN_CUTOFF, beta: float = BETA,
                 d_cutoff: float = D_CUTOFF):
        if fps <= 0 or min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise BadInputError("OneEuroFilter: fps, min_cutoff and d_cutoff must be > 0 and beta >= 0")
        self.dt, self.min_cutoff, self.beta, self.d_cutoff = 1.0 / fps, min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        dx = (x - self._x) / self.dt
        self._dx = self._dx + _alpha(self.d_cutoff, self.dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, self.dt) * (x - self._x)
        return self._x.copy()


def smooth_track(track: np.ndarray, fps: float = 30.0, min_cutoff: float = MIN_CUTOFF, beta: float = BETA,
                 d_cutoff: float = D_CUTOFF) -> np.ndarray:
    """One-Euro-filtered copy of a (T, 68, 2) track; NaN frames stay NaN and restart the filter.

    Every point's x and y are filtered independently, in inter-ocular units (see module docstring).
    """
    tr = np.asarray(track, dtype=np.float64)
    if tr.ndim != 3 or tr.shape[1:] != (68, 2):
        raise BadInputError(f"smooth_track: expected a (T, 68, 2) track, got {tr.shape}")
    ok = np.isfinite(tr).all(axis=(1, 2))
    out = np.full_like(tr, np.nan)
    if not ok.any():
        return out.astype(np.float32)
    iod = np.linalg.norm(tr[ok, 42:48].mean(1) - tr[ok, 36:42].mean(1), axis=1)
    unit = float(np.median(iod)) or 1.0
    f = OneEuroFilter(fps, min_cutoff, beta, d_cutoff)
    for t in range(len(tr)):
        if ok[t]:
            out[t] = f(tr[t] / unit) * unit
        else:
            f.reset()
    return out.astype(np.float32)
