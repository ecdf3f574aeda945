"""Frames spread evenly over a video, decoded front to back (paper Sec. 4: K frames per video).

`tkh preprocess` keeps `frames_per_video` frames of each video; this module chooses them and decodes only
those (streamed with `tkh.media.iter_video`, never the whole video), for a video file, a folder of frames or a
VoxCeleb folder of clips.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import imageio_ffmpeg
import numpy as np

from tkh.data.sources import VideoSource
from tkh.errors import BadInputError
from tkh.media import iter_video, load_image, video_info

log = logging.getLogger(__name__)


def sample_indices(n_total: int, count: int) -> np.ndarray:
    """`count` frame indices spread evenly over [0, n_total) (first and last included), unique, sorted."""
    if n_total <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.rint(np.linspace(0, n_total - 1, min(count, n_total))).astype(np.int64))


def iter_sampled_frames(source: VideoSource, count: int) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB uint8 frame) for `count` frames spread evenly over the video.

    Video files are decoded front to back and only the chosen frames are kept (never the whole
    video). The frame count comes from the container (fps x duration, exact to a frame or two); if
    the stream ends early, the last decoded frame stands in for the missing tail sample. A VoxCeleb
    clip folder is sampled over the concatenation of its clips (the index counts over all of them);
    an unreadable clip is skipped with a warning. Raises BadInputError when nothing can be decoded.
    """
    if source.kind == "frames":
        files = source.frame_files()
        if not files:
            raise BadInputError(f"{source.path}: frame folder without images")
        for i in sample_indices(len(files), count):
            try:
                yield int(i), load_image(files[i])
            except BadInputError as exc:  # one unreadable frame does not sink the video
                log.warning("%s: skipping frame: %s", source.id, exc)
        return
    if source.kind == "video":
        wanted = sample_indices(_frame_count(source.path), count)
        if not len(wanted):
            raise BadInputError(f"{source.path} has no video frames")
        yield from _stream_frames(source.path, wanted)
        return
    clips = source.clip_files()
    counts = []
    for clip in clips:
        try:
            counts.append(_frame_count(clip))
        except BadInputError as exc:
            log.warning("%s: skipping clip: %s", source.id, exc)
            counts.append(0)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    wanted = sample_indices(int(offsets[-1]), count)
    if not len(wanted):
        raise BadInputError(f"{source.path}: none of its {len(clips)} clips has readable video frames")
    for clip, lo, hi in zip(clips, offsets[:-1], offsets[1:]):
        local = wanted[(wanted >= lo) & (wanted < hi)] - lo
        if len(local):
            try:
                for i, frame in _stream_frames(clip, local):
                    yield int(lo + i), frame
            except BadInputError as exc:
                log.warning("%s: skipping clip: %s", source.id, exc)


def _frame_count(path: str | os.PathLike) -> int:
    n = video_info(path)["n_frames"]
    if n <= 0:  # no duration in the container: count by decoding (no frames kept)
        n = imageio_ffmpeg.count_frames_and_secs(str(path))[0]
    return int(n)


def _stream_frames(path: str | os.PathLike, wanted: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Decode front to back, yielding only the frames at the sorted indices `wanted`."""
    todo = set(wanted.tolist())
    last: tuple[int, np.ndarray] | None = None
    for i, frame in enumerate(iter_video(path)):
        if i in todo:
            todo.discard(i)
            yield i, frame
            last = None
            if not todo:
                return
        else:
            last = (i, frame)
    if last is not None:
        yield last
