"""Rendering a driven portrait frame by frame, and writing it (mp4 and/or gif, labelled synthetic).

`render_frames` streams G's frames `chunk` at a time (a video driver's frames are read alongside for the
side-by-side view); `animate` loads the driver, renders and writes every output whole or not at all
(`tkh.media.write_video`); `animate_from_cli` is ``tkh animate``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tkh.animate.drivers import Track, load_driver
from tkh.animate.motion import transfer_motion
from tkh.errors import BadInputError
from tkh.landmarks import rasterize
from tkh.landmarks.coverage import MIN_FACE_FRACTION
from tkh.media import copy_output, iter_video, load_image, write_video


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _resize(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h == height:
        return img
    width = max(1, int(round(w * height / h)))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_CUBIC)


def _driver_panel(track: Track, t: int, frame: np.ndarray | None, size: int,
                  source_crop: np.ndarray | None = None) -> np.ndarray:
    """What drove frame t: the driver's video frame, or its raw landmarks drawn."""
    if frame is not None:
        return _resize(frame, size)
    if track.kind == "script" and source_crop is not None:
        return _resize(source_crop, size)  # a script drives the portrait itself: show it
    pts = track.landmarks[t]
    if track.kind == "track" and np.isfinite(pts).all():
        lo, hi = pts.min(0), pts.max(0)
        side = max(hi - lo) * 1.6 + 1
        pts = (pts - (lo + hi) / 2) / side * size + size / 2
    return rasterize(pts, size) if np.isfinite(pts).all() else np.zeros((size, size, 3), np.uint8)


def render_frames(adapted, track: Track, reference: str | int = "first", side_by_side: bool = False,
                  paste_back: bool = False, original: np.ndarray | None = None, panel: int = 256,
                  chunk: int = 8, feather: float = 0.1) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames, rendered `chunk` at a time (a video driver's frames are streamed).

    The result panel is the generated crop (upscaled to `panel` px), or with `paste_back` the portrait at
    its original size with the generated face pasted into its crop box (`CropTransform.paste`, feathered).
    side_by_side: driver | landmarks | result.
    """
    portrait_lms = adapted.crop_landmarks[0]
    if track.kind == "script":
        lms = track.landmarks
    else:
        lms = transfer_motion(track.landmarks, portrait_lms, track.valid, reference)
    if paste_back:
        original = original if original is not None else (adapted.source_images[0] if adapted.source_images else None)
        if original is None:
            raise BadInputError("paste-back needs the original portrait; pass original= (or --portrait IMG)")
    video = iter_video(track.source, max_frames=len(lms)) if (side_by_side and track.kind == "video") else None
    size = adapted.image_size
    for start in range(0, len(lms), chunk):
        gen = adapted.render(lms[start:start + chunk])
        for j, g in enumerate(gen):
            t = start + j
            result = adapted.transforms[0].paste(g, original, feather=feather) if paste_back else g
            result = _resize(result, panel)
            if not side_by_side:
                yield result
                continue
            frame = next(video, None) if video is not None else None
            y = _resize(rasterize(lms[t], size), panel)
            yield np.concatenate([_driver_panel(track, t, frame, panel, adapted.crops[0]), y, result], axis=1)
    if video is not None:
        video.close()


def animate(adapted, driver: str | os.PathLike | Track, out: str | os.PathLike | Sequence[str | os.PathLike],
            reference: str | int = "first", side_by_side: bool = False, paste_back: bool = False,
            original: Any = None, caption: str | None = None, frames_per_edit: int = 16, fps: float | None = None,
            panel: int = 256, backend: str = "auto", max_frames: int | None = None,
            min_face_fraction: float = MIN_FACE_FRACTION) -> dict[str, Any]:
    """Drive `adapted` (an AdaptedPortrait) and write the animation to `out` (.mp4 and/or .gif paths).

    driver: a video path, a .npz landmark track, a script ("smile,blink,open_mouth,turn_left"), or a Track.
    Each output is written whole or not at all (`tkh.media.write_video`): a full disk raises OSError.
    Returns {"paths": [...], "frames": n, "fps": fps, "seconds": s, "track": landmarks (T, 68, 2),
    "coverage": the driver's `FaceCoverage` (video / track drivers, else None)}.
    """
    t0 = time.perf_counter()
    outs = [Path(out)] if isinstance(out, (str, os.PathLike)) else [Path(o) for o in out]
    track = load_driver(driver, adapted.crop_landmarks[0], frames_per_edit, backend, max_frames, min_face_fraction)
    if max_frames is not None and len(track.landmarks) > max_frames:  # a script, or a Track passed in
        track = replace(track, landmarks=track.landmarks[:max_frames], valid=track.valid[:max_frames])
    fps = fps or track.fps
    original = load_image(original) if original is not None else None
    model = f"{adapted.model_name} ({adapted.mode.upper()})"
    frames = render_frames(adapted, track, reference, side_by_side, paste_back, original, panel)
    gif_frames: list[np.ndarray] = []
    mp4s = [o for o in outs if o.suffix.lower() != ".gif"]
    gifs = [o for o in outs if o.suffix.lower() == ".gif"]
    n = 0

    def tee() -> Iterator[np.ndarray]:
        nonlocal n
        for f in frames:
            n += 1
            if gifs:
                gif_frames.append(_resize(f, min(f.shape[0], 256)))
            yield f

    if mp4s:
        write_video(mp4s[0], tee(), fps=fps, model=model, caption=caption)
        for extra in mp4s[1:]:
            copy_output(mp4s[0], extra)
    else:
        for _ in tee():
            pass
    for g in gifs:
        write_video(g, gif_frames, fps=fps, model=model, caption=caption)
    lms = track.landmarks if track.kind == "script" else transfer_motion(track.landmarks, adapted.crop_landmarks[0],
                                                                         track.valid, reference)
    return {"paths": [str(o) for o in outs], "frames": n, "fps": fps, "seconds": time.perf_counter() - t0,
            "track": lms, "kind": track.kind, "coverage": track.coverage}


def animate_from_cli(args) -> None:
    """`tkh animate --model ADAPTED --driver VIDEO|TRACK.npz | --script EDITS --out OUT.mp4 [...]`."""
    # lazy: torch + tkh.adapt cost ~1.5 s to import (python -X importtime); tkh.animate itself is torch-free
    import torch

    from tkh.adapt import AdaptedPortrait, default_device

    device = torch.device(args.device) if getattr(args, "device", None) else default_device()
    adapted = AdaptedPortrait.load(args.model, map_location=device)
    outs = [args.out] + list(getattr(args, "also", None) or [])
    res = animate(adapted, args.driver or args.script, outs, reference=getattr(args, "reference", "first"),
                  side_by_side=args.side_by_side, paste_back=getattr(args, "paste_back", False),
                  original=getattr(args, "portrait", None), caption=args.caption,
                  max_frames=getattr(args, "max_frames", None),
                  min_face_fraction=getattr(args, "min_face_fraction", MIN_FACE_FRACTION))
    if res["coverage"] is not None:
        print(f"tkh animate: driver {Path(res['coverage'].source).name}: {res['coverage'].describe()}")
    print(f"tkh animate: {res['frames']} frames ({res['kind']} driver) in {res['seconds']:.1f}s -> "
          f"{', '.join(res['paths'])} (labelled synthetic)")
