"""Videos in, streamed (a long video is never held in memory whole): mp4/mov/avi/... through imageio's
ffmpeg reader, GIFs through PIL (imageio's FFMPEG plugin refuses the .gif extension); frames as RGB uint8."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imageio.v2 as iio
import numpy as np
from PIL import Image, ImageSequence

from tkh.errors import BadInputError
from tkh.media.constants import VIDEO_SUFFIXES
from tkh.media.images import to_rgb_uint8


def _ffmpeg_reader(path: Path):
    try:
        return iio.get_reader(str(path), format="FFMPEG")
    except Exception as exc:  # imageio raises a zoo of types for bad files
        raise BadInputError(f"{path} is not a readable video ({_short(exc)}); re-encode it as mp4 (H.264)") from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__


def _is_gif(path: Path) -> bool:
    return path.suffix.lower() == ".gif"


def _open_gif(path: Path) -> Image.Image:
    """A GIF opened with PIL: imageio's FFMPEG plugin refuses the .gif extension."""
    try:
        return Image.open(path)
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"{path} is not a readable GIF ({_short(exc)}); re-export it or pass an mp4") from None


def _gif_info(path: Path) -> dict[str, Any]:
    with _open_gif(path) as im:
        duration = float(im.info.get("duration") or 0) or 100.0  # ms per frame; browsers use 100 ms for 0
        return {"fps": 1000.0 / duration, "n_frames": int(getattr(im, "n_frames", 1)), "size": im.size}


def _gif_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a GIF one at a time, as PIL composes them (disposal applied), RGB uint8."""
    with _open_gif(path) as im:
        for frame in ImageSequence.Iterator(im):
            yield np.asarray(frame.convert("RGB"))


def video_info(path: str | os.PathLike) -> dict[str, Any]:
    """fps, frame count (estimated from the container) and (width, height) of a video."""
    path = _check_video_path(path)
    if _is_gif(path):
        return _gif_info(path)
    reader = _ffmpeg_reader(path)
    try:
        meta = reader.get_meta_data()
        fps = float(meta.get("fps") or 25.0)
        duration = float(meta.get("duration") or 0.0)
        size = tuple(meta.get("size") or (0, 0))
    finally:
        reader.close()
    return {"fps": fps, "n_frames": int(round(fps * duration)), "size": size}


def iter_video(path: str | os.PathLike, every: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Stream RGB uint8 frames; `every` keeps one frame in N. Raises BadInputError for no frames."""
    path = _check_video_path(path)
    if _is_gif(path):
        frames = _gif_frames(path)
        reader = frames  # closed below like imageio's reader
        get_next = frames.__next__
    else:
        reader = _ffmpeg_reader(path)
        get_next = reader.get_next_data
    n = kept = 0
    try:
        while max_frames is None or kept < max_frames:
            try:
                frame = get_next()
            except (IndexError, StopIteration):
                break
            except Exception as exc:
                if n == 0:
                    raise BadInputError(f"{path}: could not decode any frame ({_short(exc)}); re-encode it as mp4") from None
                break  # a truncated tail: keep what decoded
            if n % every == 0:
                kept += 1
                yield to_rgb_uint8(frame, str(path))
            n += 1
    finally:
        reader.close()
    if n == 0:
        raise BadInputError(f"{path} has no video frames; pass a video with at least one frame")


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """A whole (short) video as (T, H, W, 3) uint8 plus its fps; use `iter_video` for long ones."""
    fps = video_info(path)["fps"]
    return np.stack(list(iter_video(path, max_frames=max_frames))), fps


def _check_video_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: file not found; check the path")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path} is empty (0 bytes); pass an mp4/mov/avi video")
    return path


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES
