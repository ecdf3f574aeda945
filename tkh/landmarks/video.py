"""Landmarks of a video: `detect_video` streams its frames through a backend into a `VideoLandmarks` track.

Frames go to the backend in batches (`faces_batch`; face-alignment runs a batch of equally sized frames
through its networks together), the largest face of each frame is kept, and frames without one get NaN
landmarks and ``valid=False``. The video is never held whole; an optional One-Euro filter
(`tkh.landmarks.smooth`) trades a little lag for less jitter.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tkh.errors import BadInputError, NoFaceError
from tkh.landmarks.detect import get_backend
from tkh.landmarks.smooth import smooth_track
from tkh.media import iter_video, video_info


@dataclass
class VideoLandmarks:
    """A landmark track. Unpacks as ``landmarks, valid = detect_video(path)``.

    landmarks: (T, 68, 2) float32, NaN rows for frames without a face.
    valid: (T,) bool, True where a face was found.
    frame_index: (T,) int, index of each kept frame in the source video (``every`` skips frames).
    """

    landmarks: np.ndarray
    valid: np.ndarray
    frame_index: np.ndarray
    fps: float
    backend: str
    source: str
    frame_size: tuple[int, int] = (0, 0)  # (H, W) of the frames
    smoothed: bool = False
    extra: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.landmarks
        yield self.valid

    def __len__(self) -> int:
        return len(self.landmarks)


def detect_video(path: str | os.PathLike, backend: str = "auto", every: int = 1, max_frames: int | None = None,
                 smooth: bool = False, batch_size: int = 8, progress: bool = True, device: str | None = None,
                 require_face: bool = True, **smooth_kwargs) -> VideoLandmarks:
    """Landmarks of every `every`-th frame of a video, streamed (never holds the whole video).

    Frames without a face get NaN landmarks and ``valid=False``. `smooth=True` applies the
    One-Euro filter (`smooth_track`, off by default: it trades a little lag for less jitter).
    Raises NoFaceError when no frame has a face (and `require_face`).
    """
    if every < 1:
        raise BadInputError(f"every must be >= 1, got {every}")
    info = video_info(path)
    impl = get_backend(backend, device)
    total = info["n_frames"] // every if info["n_frames"] else None
    if max_frames is not None:
        total = min(total or max_frames, max_frames)
    tracks: list[np.ndarray] = []
    frame_size = (0, 0)
    pending: list[np.ndarray] = []

    def flush() -> None:
        for faces in impl.faces_batch(pending):
            pts = max(faces, key=lambda f: f[1])[0] if faces else np.full((68, 2), np.nan, np.float32)
            tracks.append(pts)
        pending.clear()

    with tqdm(total=total, desc=f"landmarks {Path(path).name}", unit="frame", disable=not progress,
              leave=False) as bar:
        for frame in iter_video(path, every=every, max_frames=max_frames):
            frame_size = frame.shape[:2]
            pending.append(frame)
            if len(pending) >= batch_size:
                bar.update(len(pending))
                flush()
        bar.update(len(pending))
        flush()
    landmarks = np.stack(tracks).astype(np.float32) if tracks else np.zeros((0, 68, 2), np.float32)
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    if require_face and not valid.any():
        raise NoFaceError(f"{path}: no face found in any of its {len(landmarks)} frames ({impl.name} backend); "
                          "pass a video showing a face")
    if smooth:
        landmarks = smooth_track(landmarks, fps=info["fps"] / every, **smooth_kwargs)
    return VideoLandmarks(landmarks=landmarks, valid=valid, frame_index=np.arange(len(landmarks)) * every,
                          fps=info["fps"] / every, backend=impl.name, source=str(path),
                          frame_size=tuple(int(v) for v in frame_size), smoothed=smooth)
