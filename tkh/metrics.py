"""Evaluation metrics of the paper (sec. 4): CSIM, SSIM, PSNR and landmark error; and LPIPS.

- `identity_embedding(images)`: the 128-d identity descriptor of dlib's face-recognition ResNet, run as
  tkh's exact torch port (`tkh.nets.dlib_resnet`, so it runs on a GPU too) on a face found and aligned
  the way dlib's `compute_face_descriptor` aligns it (HOG detector, 5-point shape predictor,
  `get_face_chip(size=150, padding=0.25)`).
- `csim(a, b)`: cosine similarity of identity embeddings (CSIM). The paper used another face network,
  so our CSIM is comparable in spirit, not in absolute value (the paper's sec. 4 and Table 1).
- `ssim(a, b)`, `psnr(a, b)`: structural similarity (Wang et al. 2004: Gaussian window, sigma 1.5) and
  peak signal-to-noise ratio, on images scaled to [0, 1].
- `lpips(a, b)`: the learned perceptual distance of Zhang et al. 2018 (VGG16 + v0.1 heads, offline from
  `tkh.nets.vgg16`); not in the paper, but closer to what people see than SSIM or PSNR.
- `identity_distance(a, b)`: dlib's descriptor distance (< 0.6: dlib's "same person").
- `palette_fraction(images, landmarks)`: how much of the face is painted in the landmark drawing's colours.
- `landmark_error(pred, ref)`: mean point-to-point distance over the inter-ocular distance (outer eye
  corners 36 and 45 of `ref`), e.g. landmarks detected on generated frames vs the driving landmarks.

Images may be given as RGB uint8 (H, W, 3) arrays, paths, PIL images, float arrays in [0, 1], or tkh
tensors (3, H, W) / (B, 3, H, W) in [-1, 1]; batches as lists, (B, H, W, 3) arrays or (B, 3, H, W)
tensors. A single pair gives a float, a batch an np.ndarray (B,).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

from tkh.errors import BadInputError, NoFaceError
from tkh.landmarks import detect
from tkh.landmarks.draw import PART_COLOURS
from tkh.media import load_image, to_rgb_uint8
from tkh.nets.dlib_resnet import CHIP_PADDING, CHIP_SIZE, DlibFaceResNet, load_dlib_face_resnet
from tkh.nets.vgg16 import load_lpips
from tkh.tensors import to_uint8

# skimage.metrics costs 0.23 s to import (python -X importtime) and is imported in ssim() only; dlib and
# face_recognition_models are the optional `offline` extra, imported where the dlib face helpers need them.

LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45  # iBUG-68 outer eye corners, for the inter-ocular distance
_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------
def _is_batch(x: Any) -> bool:
    if isinstance(x, (list, tuple)):
        return True
    if isinstance(x, torch.Tensor):
        return x.ndim == 4
    if isinstance(x, np.ndarray):
        return x.ndim == 4
    return False


def _check_chw(t: torch.Tensor, i: int) -> None:
    if t.ndim != 3 or t.shape[0] != 3:
        raise BadInputError(f"image {i}: expected a (3, H, W) tensor in [-1, 1], got shape {tuple(t.shape)}")


def _each(x: Any, convert: Callable[[Any, int], np.ndarray]) -> tuple[list[np.ndarray], bool]:
    """convert(item, index) applied to each image of a batch (or to one image); and whether it was a batch."""
    batch = _is_batch(x)
    return [convert(item, i) for i, item in enumerate(list(x) if batch else [x])], batch


def _uint8_image(item: Any, i: int) -> np.ndarray:
    if isinstance(item, torch.Tensor):
        _check_chw(item, i)
        return to_uint8(item)
    if isinstance(item, np.ndarray):
        return to_rgb_uint8(item, f"image {i}")
    return load_image(item)


def _unit_float_image(item: Any, i: int) -> np.ndarray:
    if isinstance(item, torch.Tensor):  # not through uint8: a metric of float frames must not quantise them
        _check_chw(item, i)
        return ((item.detach().double().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    if isinstance(item, np.ndarray) and item.dtype != np.uint8 and np.issubdtype(item.dtype, np.floating):
        a = np.asarray(item, dtype=np.float64)
        if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
            a = np.moveaxis(a, 0, -1)
        if not np.isfinite(a).all():
            raise BadInputError(f"image {i} contains NaN or inf")
        return a / 255.0 if a.max(initial=0) > 1.0 else a
    img = item if isinstance(item, np.ndarray) else load_image(item)
    return to_rgb_uint8(img, f"image {i}").astype(np.float64) / 255.0


def _as_uint8_list(x: Any) -> tuple[list[np.ndarray], bool]:
    """Images in any accepted form -> list of RGB uint8 (H, W, 3), and whether it was a batch."""
    return _each(x, _uint8_image)


def _as_unit_float(x: Any) -> tuple[list[np.ndarray], bool]:
    """Images -> float64 (H, W, 3) in [0, 1] each, without quantising tensors; and whether it was a batch."""
    return _each(x, _unit_float_image)


def _pairs(a: Any, b: Any) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    xa, batch_a = _as_unit_float(a)
    xb, batch_b = _as_unit_float(b)
    if len(xa) != len(xb):
        raise BadInputError(f"cannot compare {len(xa)} images with {len(xb)}")
    for i, (p, q) in enumerate(zip(xa, xb)):
        if p.shape != q.shape:
            raise BadInputError(f"image pair {i}: shapes differ, {p.shape} vs {q.shape}; resize one first")
    return xa, xb, batch_a or batch_b


def _finish(values: list[float], batch: bool) -> float | np.ndarray:
    return np.asarray(values, dtype=np.float64) if batch else float(values[0])


# ---------------------------------------------------------------------------------------------
# SSIM / PSNR
# ---------------------------------------------------------------------------------------------
def ssim(a: Any, b: Any) -> float | np.ndarray:
    """Structural similarity of images a and b (1 = identical), per pair.

    skimage's `structural_similarity` on [0, 1] RGB with the original paper's settings (Gaussian
    weights, sigma 1.5, population covariance), averaged over channels. Returns a float or (B,).
    """
    from skimage.metrics import structural_similarity

    xa, xb, batch = _pairs(a, b)
    vals = [float(structural_similarity(p, q, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False)) for p, q in zip(xa, xb)]
    return _finish(vals, batch)


def psnr(a: Any, b: Any) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, 10 log10(1 / MSE) on [0, 1] images (inf when identical)."""
    xa, xb, batch = _pairs(a, b)
    vals = []
    for p, q in zip(xa, xb):
        mse = float(np.mean((p - q) ** 2))
        vals.append(float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse))
    return _finish(vals, batch)


@functools.lru_cache(maxsize=2)
def _lpips_network(device: str):
    return load_lpips(device=device)


def lpips(a: Any, b: Any, device: str = "cpu", batch_size: int = 16) -> float | np.ndarray:
    """LPIPS (Zhang et al. 2018, VGG variant, v0.1 heads), per pair: 0 = identical, larger = more different.

    ImageNet VGG16 features from `tkh.nets.vgg16` (offline, `tkh fetch vgg16`); images of any accepted
    form, each pair of one size. Raises WeightsUnavailableError when VGG16 cannot be had.
    """
    xa, xb, batch = _pairs(a, b)
    net = _lpips_network(str(device))
    to_t = lambda imgs: torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().mul(2).sub(1)  # noqa: E731
    vals: list[float] = []
    with _lock, torch.inference_mode():
        for i in range(0, len(xa), batch_size):
            pa, pb = xa[i:i + batch_size], xb[i:i + batch_size]
            if len({p.shape for p in pa}) == 1:
                vals += net(to_t(pa).to(device), to_t(pb).to(device)).cpu().tolist()
            else:  # mixed sizes: one pair at a time
                vals += [float(net(to_t([p]).to(device), to_t([q]).to(device))) for p, q in zip(pa, pb)]
    return _finish(vals, batch)


# ---------------------------------------------------------------------------------------------
# Landmark error
# ---------------------------------------------------------------------------------------------
def landmark_error(pred: Any, ref: Any) -> float | np.ndarray:
    """Mean distance between predicted and reference landmarks over the inter-ocular distance of `ref`.

    pred, ref: (68, 2) or (B, 68, 2) arrays/tensors in pixels (iBUG-68 order). Points that are NaN in
    either are ignored; a pair with no finite point, or a reference without both outer eye corners,
    gives NaN. Returns a float or (B,).
    """
    p = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float64)
    r = np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    batch = p.ndim == 3 or r.ndim == 3
    p = p.reshape((-1,) + p.shape[-2:])
    r = r.reshape((-1,) + r.shape[-2:])
    if p.shape[1:] != r.shape[1:] or p.shape[-1] != 2 or p.shape[1] <= RIGHT_EYE_OUTER:
        raise BadInputError(f"landmark_error needs (68, 2) or (B, 68, 2) landmarks, got {p.shape} and {r.shape}")
    if len(p) != len(r):
        if len(p) != 1 and len(r) != 1:
            raise BadInputError(f"cannot compare {len(p)} landmark sets with {len(r)}")
        p, r = np.broadcast_arrays(p, r)
    dist = np.linalg.norm(p - r, axis=-1)                                     # (B, 68), NaN where missing
    iod = np.linalg.norm(r[:, LEFT_EYE_OUTER] - r[:, RIGHT_EYE_OUTER], axis=-1)  # (B,)
    ok = np.isfinite(dist)
    count = ok.sum(axis=1)
    mean = np.where(count > 0, np.where(ok, dist, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(np.isfinite(iod) & (iod > 0), mean / iod, np.nan)
    return err if batch else float(err[0])


# ---------------------------------------------------------------------------------------------
# Identity embedding and CSIM
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Landmark colours in the face
# ---------------------------------------------------------------------------------------------
# G blends the drawing's colours into skin rather than copying them: a magenta lip line half mixed with skin
# is (227, 75, 187), 88 RGB units from magenta but still at magenta's hue. So a pixel counts by hue and
# saturation, not by RGB distance. Skin and lips span red to yellow-orange (hues up to 43 degrees on a
# held-out clip's dark skin under warm light), so the red, orange and yellow parts (brows, jaw) cannot be
# told apart from them by colour: they are left out, and no pixel at a skin hue counts.
PALETTE_HUE_TOLERANCE = 20.0  # degrees of hue within which a pixel counts as a landmark colour
PALETTE_MIN_SATURATION = 0.4  # HSV saturation below which a pixel is grey / skin, whatever its hue
SKIN_HUES = (-30.0, 65.0)  # hue range (degrees, red = 0) of skin and lips


def _hue_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a - b) % 360.0
    return np.minimum(d, 360.0 - d)


def palette_hues() -> np.ndarray:
    """The hues (degrees) of the landmark drawing's colours that no skin or lip has (`SKIN_HUES` left out)."""
    rgb = np.array(list(PART_COLOURS.values()), np.float32)[None] / 255.0
    hues = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[0, :, 0]
    return np.unique(hues[~_skin_hue(hues)])


def _skin_hue(hue: np.ndarray) -> np.ndarray:
    centre, half = sum(SKIN_HUES) / 2, (SKIN_HUES[1] - SKIN_HUES[0]) / 2
    return _hue_distance(hue, centre) <= half


def palette_fraction(images: Any, landmarks: Any, hue_tolerance: float = PALETTE_HUE_TOLERANCE,
                     min_saturation: float = PALETTE_MIN_SATURATION) -> float | np.ndarray:
    """Fraction of face pixels painted in a landmark-drawing colour, pure or blended into skin.

    G sees the landmark image y, drawn in saturated part colours (`tkh.landmarks.draw.PART_COLOURS`); a
    generator that copies y into its output paints those colours, often mixed with skin, into the mouth and
    eyes. A pixel counts when its HSV saturation is at least `min_saturation` and its hue lies within
    `hue_tolerance` degrees of a drawing colour no skin has (`palette_hues`: greens, cyan, blues, magenta)
    and outside skin's hues (`SKIN_HUES`). The face is the convex hull of the 68 points (in the image's pixels). Compare generated frames
    with the real ones: real faces have a small base rate (blue eyes, a green shirt collar under the chin).
    Returns a float or (B,).
    """
    imgs, batch = _as_uint8_list(images)
    lms = np.asarray(landmarks, dtype=np.float32)
    lms = lms[None] if lms.ndim == 2 else lms
    if len(lms) != len(imgs) or lms.shape[1:] != (68, 2):
        raise BadInputError(f"palette_fraction: {len(imgs)} images need as many (68, 2) landmark arrays, got "
                            f"{lms.shape}")
    hues = palette_hues()
    vals = []
    for img, pts in zip(imgs, lms):
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
        if not mask.any():
            vals.append(float("nan"))
            continue
        hsv = cv2.cvtColor(np.ascontiguousarray(img[..., :3]).astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        face = hsv[mask.astype(bool)]  # (N, 3): hue in degrees, saturation and value in [0, 1]
        near = (_hue_distance(face[:, :1], hues[None]).min(1) < hue_tolerance) & ~_skin_hue(face[:, 0])
        vals.append(float((near & (face[:, 1] >= min_saturation)).mean()))
    return _finish(vals, batch)


__all__ = ["DLIB_SAME_PERSON", "csim", "face_chips", "identity_distance", "identity_embedding", "landmark_error", "lpips",
           "palette_fraction", "palette_hues", "psnr", "ssim"]
