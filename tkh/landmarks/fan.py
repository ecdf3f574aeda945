"""The default (face-alignment) backend: S3FD + 2D-FAN-4, and its weights (downloaded, verified).

The paper (Sec. 3.1, "Data") takes the landmarks of every VoxCeleb frame from face-alignment's
FAN [Bulat & Tzimiropoulos 2017]. `FaceAlignmentBackend` wraps face-alignment's S3FD face detector and
2D-FAN-4 (batched on the GPU when one is given) behind the interface `tkh.landmarks.cascade.DlibBackend`
has (`faces`, `faces_batch`, `find_batch`); every fit must pass `tkh.landmarks.plausible`.

Its weights are downloaded by tkh, not by face-alignment: `ensure_face_alignment_weights` fetches the files
the installed face-alignment loads into torch hub's cache (`face_alignment_weight_paths`), checked against
tkh.hub's registry (or the sha256 prefix in torch hub's file names), atomically, optionally from a mirror
(``$TKH_FACE_ALIGNMENT_MIRROR``). Which backend ``auto`` picks is `tkh.landmarks.detect.resolve_backend`'s.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tkh.errors import ChecksumError, WeightsUnavailableError
from tkh.hub import REGISTRY, RemoteFile, download, torch_hub_checkpoints, verify
from tkh.landmarks.faces import Box, Detection, Face, sort_faces
from tkh.landmarks.sanity import plausible

# face_alignment and torch are imported where the FAN backend uses them: face_alignment costs 1.7 s to import
# (torch's 1.2 s of it; python -X importtime), and tkh.landmarks (dlib backend, drawing, crops) works without both.

DOWNLOAD_TIMEOUT = 10.0  # seconds per socket operation when `auto` probes face-alignment's weights
MIRROR_ENV = "TKH_FACE_ALIGNMENT_MIRROR"  # base URL serving face-alignment's files under their own names


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
class FaceAlignmentBackend:
    """face-alignment's S3FD detector + 2D-FAN-4 (the paper's landmarks), on `device`.

    Batches of equally sized images go through the networks together (`get_landmarks_from_batch`).
    """

    name = "face_alignment"

    def __init__(self, device: str = "cpu"):
        missing = [p for p in face_alignment_weight_paths() if not p.exists()]
        if missing:
            raise WeightsUnavailableError(
                f"face-alignment weights missing ({', '.join(str(p) for p in missing)}); run "
                "`tkh.landmarks.ensure_face_alignment_weights()` online, or use backend='dlib'"
            )
        import face_alignment

        kind = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        kwargs: dict[str, Any] = {"device": device, "face_detector": "sfd"}
        try:  # face-alignment >= 1.5 compiles by default: slow start on CPU, not worth it here
            self._fa = face_alignment.FaceAlignment(kind, compile=False, **kwargs)
        except TypeError:
            self._fa = face_alignment.FaceAlignment(kind, **kwargs)
        self.device = device

    def _found(self, image: np.ndarray, boxes=None) -> list[Face]:
        """S3FD's faces, or the 68-point fits in `boxes` ((x0, y0, x1, y1, score) rows), plausible ones only."""
        with warnings.catch_warnings():  # "No faces were detected": tkh reports that itself
            warnings.simplefilter("ignore", UserWarning)
            if boxes is None:
                lms, _, boxes = self._fa.get_landmarks_from_image(image, return_bboxes=True)
            else:
                lms = self._fa.get_landmarks_from_image(image, detected_faces=boxes)
        return self._pack(lms, boxes)

    def _found_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        if len({im.shape for im in images}) != 1 or len(images) == 1:
            return [self._found(im) for im in images]
        import torch

        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device)
        out = []
        for im, b in zip(images, self._fa.face_detector.detect_from_batch(batch)):
            b = [x for x in b if x is not None] if b is not None else []
            out.append(self._found(im, b) if len(b) else [])
        return out

    def faces(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        return [(f.landmarks, f.area) for f in self._found(image)]

    def faces_batch(self, images: Sequence[np.ndarray]) -> list[list[tuple[np.ndarray, float]]]:
        return [[(f.landmarks, f.area) for f in faces] for faces in self._found_batch(images)]

    def find_batch(self, images: Sequence[np.ndarray], boxes: Sequence[Box | None], cnn: bool = True,
                   all_faces: bool = False) -> list[Detection]:
        """One `Detection` per image: S3FD's faces ("s3fd", batched), or the fit in a box given by hand ("box").

        cnn and all_faces concern dlib's cascade; S3FD is one stage that finds every face it can."""
        t0 = time.perf_counter()
        todo = [i for i, b in enumerate(boxes) if b is None]
        found = dict(zip(todo, self._found_batch([images[i] for i in todo])))
        for i, b in enumerate(boxes):
            if b is not None:
                x, y, w, h = b
                found[i] = [Face(f.landmarks, tuple(b), stage="box") for f in
                            self._found(images[i], [np.array([x, y, x + w, y + h, 1.0], np.float32)])[:1]]
        seconds = (time.perf_counter() - t0) / max(1, len(images))
        return [Detection(faces=sort_faces(found[i]), stage=("box" if b is not None else "s3fd") if found[i] else "",
                          backend=self.name, seconds=seconds, tried=["box" if b is not None else "s3fd"])
                for i, b in enumerate(boxes)]

    @staticmethod
    def _pack(lms, boxes) -> list[Face]:
        if lms is None or boxes is None:
            return []
        out = []
        for pts, box in zip(lms, boxes):
            x0, y0, x1, y1 = (float(v) for v in box[:4])
            face = Face(np.asarray(pts, dtype=np.float32)[:, :2],
                        (int(x0), int(y0), int(max(0.0, x1 - x0)), int(max(0.0, y1 - y0))),
                        float(box[4]) if len(box) > 4 else float("nan"), "s3fd")
            if plausible(face.landmarks, face.box if face.area else None):
                out.append(face)
        return out


# ---------------------------------------------------------------------------------------------
# face-alignment's weights: where they live, and downloading them (verified, atomic)
# ---------------------------------------------------------------------------------------------
def _face_alignment_urls() -> list[str]:
    """The URLs the installed face-alignment loads (S3FD + 2D-FAN-4); they change between releases."""
    urls = []
    try:
        from face_alignment.detection.sfd import sfd_detector

        urls.append(sfd_detector.models_urls["s3fd"])
    except (ImportError, AttributeError, KeyError):
        urls.append("https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth")
    try:
        from face_alignment import api

        urls.append(api.models_urls["2DFAN-4"])
    except (ImportError, AttributeError, KeyError):
        urls.append("https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip")
    return urls


def face_alignment_weight_paths() -> list[Path]:
    """Where face-alignment expects its weights: torch hub's checkpoint folder."""
    return [torch_hub_checkpoints() / url.rsplit("/", 1)[-1] for url in _face_alignment_urls()]


def _remote_file(url: str):
    """The tkh.hub registry entry for a face-alignment file, or one with torch hub's name-embedded prefix."""
    filename = url.rsplit("/", 1)[-1]
    for entry in REGISTRY.values():
        if entry.filename == filename:
            return entry
    match = re.search(r"-([a-f0-9]{6,})\.", filename)  # torch hub convention: name-<sha256 prefix>.ext
    return RemoteFile(url=url, sha256=None, sha256_prefix=match.group(1) if match else "", filename=filename,
                      licence="face-alignment (BSD-3-Clause)")


def ensure_face_alignment_weights(mirror: str | None = None, timeout: float = DOWNLOAD_TIMEOUT) -> list[Path]:
    """Download face-alignment's missing weights into torch hub's cache, verified by sha256.

    `mirror` (or ``$TKH_FACE_ALIGNMENT_MIRROR``) is a base URL serving the files under their own
    names; the registered checksums still apply, so a mirror cannot substitute other bytes.
    Raises `DownloadError` / `ChecksumError` (nothing partial is left in the cache).
    """
    mirror = mirror or os.environ.get(MIRROR_ENV)
    dest_dir = torch_hub_checkpoints()
    paths = []
    for url in _face_alignment_urls():
        entry = _remote_file(url)
        dest = dest_dir / entry.filename
        if not dest.exists():
            src = f"{mirror.rstrip('/')}/{entry.filename}" if mirror else url
            download(src, dest, entry.sha256, entry.sha256_prefix, timeout=timeout)
        paths.append(dest)
    return paths


def _corrupt_weights() -> str | None:
    """A message naming the first cached face-alignment file whose checksum is wrong, else None."""
    for url in _face_alignment_urls():
        entry = _remote_file(url)
        try:
            verify(torch_hub_checkpoints() / entry.filename, entry.sha256, entry.sha256_prefix)
        except ChecksumError as exc:
            return str(exc).split(";")[0]
    return None
