"""`tkh landmarks IMAGE_OR_VIDEO --out FILE.npz [--plot FILE.png] [--backend ...]`.

The npz holds: ``landmarks`` ((68, 2) for an image, (T, 68, 2) with NaN rows for a video),
``valid`` ((T,) bool, videos only), ``frame_index`` and ``fps`` (videos), ``source`` (the input
path), ``backend`` (the backend actually used) and ``image_size`` ((H, W)); for an image also ``stage``
(the detector stage that found the face, or "box"), ``stages_tried``, ``detect_seconds``, ``box`` (the
face's x, y, w, h), ``faces`` ((N, 4): every face found, largest first) and ``face`` (which of them, 1 = the
largest). In a video, detections that are
not face-shaped or jump in size (`tkh.landmarks.coverage`) count as no face, and a video with a face in fewer
than half its frames gets a warning (as a driver, `tkh animate` would refuse it). The plot PNG shows the
landmarks over the image (first frame with a face for videos) beside the rasterized landmark image
y; like every image tkh writes, it carries the synthetic label in its metadata.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

from tkh.errors import BadInputError, NoFaceError
from tkh.landmarks.coverage import MIN_FACE_FRACTION, face_coverage
from tkh.landmarks.detect import find_faces
from tkh.landmarks.draw import draw_on_image, rasterize
from tkh.landmarks.faces import group_hint, metadata, pick, report
from tkh.landmarks.video import detect_video
from tkh.media import is_video, iter_video, load_image, write_image


def landmark_plot(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """One RGB image: the landmarks drawn over `image` | the rasterized landmark image at the same height."""
    h, w = image.shape[:2]
    left = draw_on_image(image, landmarks)
    right = rasterize(landmarks, (h, w))
    if w > h * 1.5 or h > w * 1.5:  # very elongated images: keep the right panel square
        right = cv2.resize(rasterize(landmarks, (h, w)), (h, h), interpolation=cv2.INTER_AREA)
    gap = np.full((h, max(4, w // 100), 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _which(found, chosen) -> str:
    """', face 2 of 3' when the image has several faces."""
    n = len(found.faces)
    return f", face {[f is chosen for f in found.faces].index(True) + 1} of {n}" if n > 1 else ""


def run_landmarks_command(input: str | os.PathLike, out: str | os.PathLike, plot: str | os.PathLike | None = None,
                          backend: str = "auto", every: int = 1, smooth: bool = False, box=None,
                          face: int | None = None, all_faces: bool = False) -> dict:
    """Detect landmarks in an image or video and save them (and a plot). Returns a small summary dict.

    Images only: box (x, y, w, h) gives the face by hand, face=N picks the N-th largest of several,
    all_faces runs every detector stage (group paintings)."""
    src, out = Path(input), Path(out)
    if out.suffix.lower() != ".npz":
        raise BadInputError(f"{out}: --out must be a .npz file")
    if plot is not None and Path(plot).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise BadInputError(f"{plot}: --plot must be a .png or .jpg file")
    if not src.exists():
        raise BadInputError(f"{src}: file not found; check the path")
    out.parent.mkdir(parents=True, exist_ok=True)
    if (box is not None or face is not None or all_faces) and is_video(src):
        raise BadInputError(f"{src}: --box, --face and --all-faces apply to images, not videos")
    tmp = out.with_name(out.stem + ".part.npz")
    try:
        if is_video(src):
            track = detect_video(src, backend=backend, every=every, smooth=smooth)
            cov = face_coverage(track.landmarks, track.valid, source=str(src))
            if not cov.with_face:
                raise NoFaceError(f"{src}: no face-shaped landmarks in any of its {cov.frames} frames "
                                  f"({cov.describe(filled=False)}); pass a video showing a face")
            lms = np.where(cov.detected[:, None, None], track.landmarks, np.nan).astype(np.float32)
            np.savez_compressed(tmp, landmarks=lms, valid=cov.detected, frame_index=track.frame_index,
                                fps=track.fps, source=str(src), backend=track.backend,
                                image_size=np.array(track.frame_size))
            summary = {"frames": len(track), "with_face": cov.with_face, "backend": track.backend,
                       "rejected": cov.implausible + cov.inconsistent}
            if cov.fraction < MIN_FACE_FRACTION:
                print(f"tkh landmarks: warning: {src.name}: {cov.describe(filled=False)}; as a driver `tkh animate` "
                      f"would refuse it (a face in under {MIN_FACE_FRACTION:.0%} of the frames)", file=sys.stderr)
            if plot is not None:
                first = int(np.flatnonzero(cov.detected)[0])
                *_, frame = iter_video(src, every=every, max_frames=first + 1)  # streams up to that frame
                write_image(plot, landmark_plot(frame, lms[first]), model="landmarks")
        else:
            image = load_image(src)
            found = find_faces(image, backend=backend, name=str(src), box=box, all_faces=all_faces)
            chosen = pick(found, face, str(src))
            report(found, chosen, str(src))
            lms = chosen.landmarks
            np.savez_compressed(tmp, landmarks=lms, source=str(src), backend=found.backend,
                                image_size=np.array(image.shape[:2]), **metadata(found, chosen))
            summary = {"frames": 1, "with_face": 1, "backend": f"{found.summary()}{_which(found, chosen)}",
                       "hint": group_hint(found, image.shape)}
            if plot is not None:
                write_image(plot, landmark_plot(image, lms), model="landmarks")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # nothing partial is left when writing fails (disk full)
    rejected = f", {summary['rejected']} detection(s) rejected" if summary.get("rejected") else ""
    hint = f"; {summary['hint']}" if summary.get("hint") else ""
    print(f"tkh landmarks: {summary['with_face']}/{summary['frames']} frame(s) with a face{rejected} "
          f"({summary['backend']}) -> {out}" + (f", plot {plot}" if plot else "") + hint)
    return summary
