"""Identity metrics (sec. 4): dlib-aligned face chips, 128-d identity embeddings, CSIM and dlib's descriptor distance.

A face is found and aligned as dlib's `compute_face_descriptor` aligns it (HOG detector, 5-point shape predictor,
150x150 chip with padding 0.25; tkh.landmarks where HOG finds none) and embedded by tkh's exact torch port of
dlib's face-recognition ResNet (`tkh.nets.dlib_resnet`). `DLIB_SAME_PERSON` is dlib's threshold on the
descriptor distance. What each metric means: the `tkh.metrics` docstring.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np
import torch

from tkh.errors import BadInputError, NoFaceError
from tkh.landmarks import detect
from tkh.metrics.inputs import _as_uint8_list, _is_batch, _lock
from tkh.nets.dlib_resnet import CHIP_PADDING, CHIP_SIZE, DlibFaceResNet, load_dlib_face_resnet

# dlib and face_recognition_models are the optional `offline` extra, imported where the dlib face helpers
# need them.


@functools.lru_cache(maxsize=4)
def _network(device: str) -> DlibFaceResNet:
    return load_dlib_face_resnet(device=device)


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple[Any, Any]:
    """dlib's HOG face detector and 5-point shape predictor (the pair dlib's own example uses)."""
    import dlib
    import face_recognition_models

    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location()))


def _largest(rects: Any) -> Any:
    return max(rects, key=lambda r: r.width() * r.height())


def _shape_from_points(points: np.ndarray, name: str) -> Any:
    """A dlib full_object_detection from (68, 2) or (5, 2) landmarks, for get_face_chip."""
    import dlib

    pts = np.asarray(points, dtype=np.float64)
    if pts.shape not in ((68, 2), (5, 2)) or not np.isfinite(pts).all():
        raise BadInputError(f"{name}: landmarks must be finite (68, 2) or (5, 2) arrays, got {pts.shape}")
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
    return dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in pts])


def _detect_shape(img: np.ndarray, name: str, fallback: str | None) -> Any:
    """dlib's alignment shape for the largest face: HOG + 5 points; tkh.landmarks when HOG finds none."""
    detector, predictor = _dlib_models()
    with _lock:  # dlib's detector objects are not documented as thread-safe
        rects = detector(img, 1)
        if len(rects) == 0 and max(img.shape[:2]) < 400:
            rects = detector(img, 2)  # small or tightly cropped faces (e.g. generated 128-256 px frames)
        if len(rects):
            return predictor(img, _largest(rects))
    if fallback:  # tkh.landmarks (FAN by default) finds faces on tight crops HOG misses
        points = detect(img, backend=fallback, name=name)
        return _shape_from_points(points, name)
    raise NoFaceError(f"{name}: no face found by dlib's detector; pass landmarks= or aligned=True for face chips")


def face_chips(images: Any, landmarks: Any = None, fallback: str | None = "auto") -> np.ndarray:
    """dlib-aligned 150x150 face chips (B, 150, 150, 3) uint8, as compute_face_descriptor makes them.

    `landmarks`: optional (68, 2)/(5, 2) points per image (e.g. the driving landmarks of a generated
    frame) to align with instead of detecting. `fallback`: tkh.landmarks backend used when dlib's
    HOG detector finds no face (None to raise NoFaceError instead).
    """
    import dlib

    imgs, batch = _as_uint8_list(images)
    if landmarks is not None:
        lms = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, torch.Tensor) else landmarks)
        lms = lms.reshape((-1,) + lms.shape[-2:])
        if len(lms) != len(imgs):
            raise BadInputError(f"got {len(imgs)} images but {len(lms)} landmark sets")
    chips = []
    for i, img in enumerate(imgs):
        name = f"image {i}" if batch else "image"
        shape = (_shape_from_points(lms[i], name) if landmarks is not None
                 else _detect_shape(img, name, fallback))
        chips.append(np.asarray(dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING)))
    return np.stack(chips)


def identity_embedding(images: Any, aligned: bool = False, landmarks: Any = None,
                       device: str | torch.device | None = None, fallback: str | None = "auto") -> np.ndarray:
    """128-d identity descriptors (dlib's face-recognition ResNet, tkh's torch port): (128,) or (B, 128).

    By default each image's largest face is detected and aligned exactly as dlib's
    `compute_face_descriptor(img, shape)` does (5-point shape, 150x150 chip, padding 0.25), so the
    result equals dlib's to float rounding. `aligned=True`: the images already are such chips (any
    size, resized to 150). `landmarks`: align with these points instead of detecting (e.g. the driving
    landmarks of generated frames). `fallback`: tkh.landmarks backend for faces HOG misses.
    Raises NoFaceError naming the image when no face is found.
    """
    dev = str(device) if device is not None else "cpu"
    if aligned:
        imgs, batch = _as_uint8_list(images)

        chips = np.stack([img if img.shape[:2] == (CHIP_SIZE, CHIP_SIZE) else
                          cv2.resize(img, (CHIP_SIZE, CHIP_SIZE), interpolation=cv2.INTER_AREA) for img in imgs])
    else:
        batch = _is_batch(images)
        chips = face_chips(images, landmarks=landmarks, fallback=fallback)
    emb = _network(dev).embed_chips(chips).cpu().numpy().astype(np.float32)
    return emb if batch else emb[0]


def _is_embedding(x: Any) -> bool:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.ndim in (1, 2) and (not isinstance(x, np.ndarray) or np.issubdtype(x.dtype, np.floating))
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, (int, float)) for v in x):
        return True
    return False


def csim(a: Any, b: Any, **embed_kwargs: Any) -> float | np.ndarray:
    """Cosine similarity of identity embeddings (CSIM, sec. 4): 1 = same direction.

    a, b: embeddings ((128,) or (B, 128)) or images (embedded with `identity_embedding(**embed_kwargs)`).
    Returns a float for one pair, (B,) for batches (a single side is broadcast).
    """
    ea, eb, batch = _embedding_pair(a, b, embed_kwargs)
    na, nb = np.linalg.norm(ea, axis=-1), np.linalg.norm(eb, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = (ea * eb).sum(-1) / (na * nb)
    return sim if batch else float(sim[0])


DLIB_SAME_PERSON = 0.6  # dlib's threshold on the descriptor distance: below it, the same person


def identity_distance(a: Any, b: Any, **embed_kwargs: Any) -> float | np.ndarray:
    """Euclidean distance of dlib identity descriptors: under `DLIB_SAME_PERSON` (0.6) dlib calls two faces
    the same person (99.38% on LFW). CSIM alone cannot say that: dlib's cosine is ≈ 0.88 between strangers.

    a, b: embeddings or images, as for `csim`. Returns a float for one pair, (B,) for batches.
    """
    ea, eb, batch = _embedding_pair(a, b, embed_kwargs)
    d = np.linalg.norm(ea - eb, axis=-1)
    return d if batch else float(d[0])


def _embedding_pair(a: Any, b: Any, embed_kwargs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(B, 128) float64 descriptors of both sides (a single side broadcasts), and whether it was a batch."""
    def emb(x: Any) -> np.ndarray:
        if _is_embedding(x):
            v = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            return np.asarray(v, dtype=np.float64)
        return identity_embedding(x, **embed_kwargs).astype(np.float64)

    ea, eb = emb(a), emb(b)
    batch = ea.ndim == 2 or eb.ndim == 2
    ea, eb = np.atleast_2d(ea), np.atleast_2d(eb)
    if ea.shape[-1] != eb.shape[-1]:
        raise BadInputError(f"embeddings differ in length: {ea.shape[-1]} vs {eb.shape[-1]}")
    return ea, eb, batch
