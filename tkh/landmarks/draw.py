"""The landmark image y: 68 points drawn as coloured polylines on black (paper Sec. 3.1, Fig. 2).

The paper rasterizes each frame's landmarks "using a predefined set of colours to connect certain
landmarks with line segments"; the exact colours are not published, so tkh fixes them in `PARTS`
(one colour per part, RGB). E, G and D only ever see this image, never the raw points, so the
training cache, adaptation and animation must all draw with these functions.

- `rasterize(landmarks, size)` -> uint8 (size, size, 3), anti-aliased cv2 polylines (fast, CPU).
- `rasterize_torch(landmarks (B, 68, 2), size)` -> float (B, 3, size, size) in [-1, 1], batched on
  whatever device the landmarks are on: on a GPU with distance fields to the line segments (agrees
  with `rasterize` up to anti-aliasing details, tested by IoU), on a CPU through `rasterize` itself.

Sides: "right"/"left" are the subject's (iBUG convention): the right eye, points 36-41, appears
on the image's left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from tkh.errors import BadInputError
from tkh.media import load_image

# torch (1.2 s to import, python -X importtime) is imported inside the torch rasterizers only: tkh.landmarks
# imports without it.


@dataclass(frozen=True)
class Part:
    name: str
    start: int  # first landmark index (iBUG-68)
    stop: int  # one past the last index
    closed: bool  # polygon (eyes, lips) or open polyline
    colour: tuple[int, int, int]  # RGB


# The colour table. Distinct saturated colours so every part is separable in y.
PARTS: tuple[Part, ...] = (
    Part("jaw", 0, 17, False, (255, 255, 0)),  # yellow
    Part("brow_right", 17, 22, False, (255, 0, 0)),  # red
    Part("brow_left", 22, 27, False, (255, 128, 0)),  # orange
    Part("nose_bridge", 27, 31, False, (0, 0, 255)),  # blue
    Part("nose_base", 31, 36, False, (0, 160, 255)),  # azure
    Part("eye_right", 36, 42, True, (0, 255, 0)),  # green
    Part("eye_left", 42, 48, True, (0, 255, 160)),  # spring green
    Part("lip_outer", 48, 60, True, (255, 0, 255)),  # magenta
    Part("lip_inner", 60, 68, True, (0, 255, 255)),  # cyan
)
PART_COLOURS: dict[str, tuple[int, int, int]] = {p.name: p.colour for p in PARTS}


def default_thickness(size: int) -> int:
    """Line width in pixels: 1 up to 128 px, 2 at 256 px, growing with the image."""
    return max(1, int(round(size / 128)))


def segments() -> list[tuple[int, int, int]]:
    """All line segments as (i, j, part index): consecutive points of each part, + closing edges."""
    out = []
    for k, p in enumerate(PARTS):
        ids = list(range(p.start, p.stop))
        pairs = list(zip(ids[:-1], ids[1:])) + ([(ids[-1], ids[0])] if p.closed else [])
        out += [(i, j, k) for i, j in pairs]
    return out


def _size_hw(size) -> tuple[int, int]:
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise BadInputError(f"rasterize: size must be positive, got {size}")
    return int(h), int(w)


def _scale_points(pts: np.ndarray, size_hw: tuple[int, int], src_size) -> np.ndarray:
    if src_size is None:
        return pts
    sh, sw = _size_hw(src_size)
    return pts * np.array([size_hw[1] / sw, size_hw[0] / sh], dtype=pts.dtype)


def rasterize(landmarks: np.ndarray, size: int | tuple[int, int] = 256, src_size=None,
              thickness: int | None = None) -> np.ndarray:
    """Draw the landmark image y: uint8 RGB (H, W, 3) on black, one anti-aliased polyline per part.

    landmarks: (68, 2) (x, y) in the pixels of an image of side `size` (int, or (H, W)); pass
    `src_size` (int or (H, W)) when they are in another image's pixels, to scale them. NaN landmarks
    (a frame without a face) give a black image.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise BadInputError(f"rasterize: expected landmarks of shape (68, 2), got {pts.shape}")
    h, w = _size_hw(size)
    img = np.zeros((h, w, 3), np.uint8)
    if not np.isfinite(pts).all():
        return img
    pts = _scale_points(pts, (h, w), src_size)
    thick = thickness or default_thickness(min(h, w))
    shift = 4  # sub-pixel precision: coordinates in 1/16 px
    fixed = np.rint(pts * (1 << shift)).astype(np.int32)
    for p in PARTS:
        cv2.polylines(img, [fixed[p.start:p.stop].reshape(-1, 1, 2)], p.closed, p.colour, thick, cv2.LINE_AA, shift)
    return img


def rasterize_torch(landmarks, size: int = 256, src_size=None, thickness: int | None = None,
                    method: str = "auto", chunk: int = 8):
    """Batched landmark images: (B, 68, 2) tensor -> float (B, 3, size, size) in [-1, 1], on the landmarks' device.

    method: "distance" draws with distance fields to the line segments, in torch, on any device: each
    pixel's coverage is ``clamp(half - d, 0, 1)``, with the half-width matched to cv2's anti-aliased
    lines, and parts are composited in `PARTS` order like cv2 draws them (IoU ≥ 0.95 with `rasterize`).
    "cv2" calls `rasterize` per item (identical to it; fastest on a CPU). "auto": cv2 for CPU tensors,
    distance fields elsewhere (GPU). NaN landmarks give a black image. Memory of "distance" is
    O(chunk · 16 · size²) floats at a time. No useful gradients (coverage is clamped).
    """
    import torch

    lms = torch.as_tensor(landmarks)
    if lms.ndim == 2:
        lms = lms[None]
    if lms.ndim != 3 or tuple(lms.shape[1:]) != (68, 2):
        raise BadInputError(f"rasterize_torch: expected landmarks of shape (B, 68, 2), got {tuple(lms.shape)}")
    if method not in ("auto", "cv2", "distance"):
        raise BadInputError(f"rasterize_torch: method must be auto, cv2 or distance, not {method!r}")
    h, w = _size_hw(size)
    if method == "cv2" or (method == "auto" and lms.device.type == "cpu"):
        imgs = [rasterize(p, (h, w), src_size=src_size, thickness=thickness) for p in lms.detach().cpu().numpy()]
        return to_tensor(np.stack(imgs), device=lms.device)
    return torch.cat([_rasterize_distance(part, (h, w), src_size, thickness) for part in lms.split(chunk)])


def _rasterize_distance(lms, size_hw: tuple[int, int], src_size, thickness: int | None):
    import torch

    dev = lms.device
    lms = lms.to(torch.float32)
    h, w = size_hw
    if src_size is not None:
        sh, sw = _size_hw(src_size)
        lms = lms * torch.tensor([w / sw, h / sh], device=dev)
    thick = float(thickness or default_thickness(min(h, w)))
    # half-width of the footprint of cv2's LINE_AA polylines of width `thick` (measured: cv2 draws
    # widths 3/4, 5/6, ... alike, and anti-aliasing adds about a pixel)
    half = 1.25 if thick <= 1 else 1.25 + math.ceil(thick / 2)
    b = lms.shape[0]
    finite = torch.isfinite(lms).all(dim=2).all(dim=1)  # (B,)
    lms = torch.where(finite[:, None, None], lms, torch.full_like(lms, -1e4))
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(1, 1, h * w, 2)  # pixel centres as cv2 samples them
    out = torch.zeros(b, 3, h * w, device=dev)
    segs = segments()
    for k, part in enumerate(PARTS):
        ij = torch.tensor([(i, j) for i, j, kk in segs if kk == k], device=dev)
        a, c = lms[:, ij[:, 0]], lms[:, ij[:, 1]]  # (B, S, 2) segment ends
        ab = (c - a)[:, :, None]  # (B, S, 1, 2)
        ap = grid - a[:, :, None]  # (B, S, HW, 2)
        t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)
        d = (ap - t[..., None] * ab).norm(dim=-1).amin(dim=1)  # (B, HW) distance to the part
        cover = (half - d).clamp(0, 1)[:, None]  # (B, 1, HW) anti-aliased coverage
        colour = torch.tensor(part.colour, device=dev, dtype=torch.float32).view(1, 3, 1) / 255.0
        out = out * (1 - cover) + colour * cover
    out = out * finite[:, None, None]
    return (out.view(b, 3, h, w) * 2 - 1).clamp(-1, 1)


def to_tensor(image: np.ndarray, device=None):
    """uint8 (H, W, 3) landmark image(s) -> float (3, H, W) in [-1, 1] (`tkh.tensors.to_tensor`: the tkh
    tensor convention; imported here, not at the top, so that `tkh.landmarks` imports without torch)."""
    from tkh.tensors import to_tensor as convert

    return convert(image, device=device)


def draw_on_image(image: np.ndarray, landmarks: np.ndarray, radius: int | None = None,
                  lines: bool = True) -> np.ndarray:
    """A copy of an RGB image with the landmarks drawn over it (part-coloured lines and dots)."""
    img = load_image(image).copy()
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        return img
    r = radius or max(1, int(round(max(img.shape[:2]) / 250)))
    fixed = np.rint(pts * 16).astype(np.int32)
    for p in PARTS:
        if lines:
            cv2.polylines(img, [fixed[p.start:p.stop].reshape(-1, 1, 2)], p.closed, p.colour, max(1, r // 2),
                          cv2.LINE_AA, 4)
        for q in fixed[p.start:p.stop]:
            cv2.circle(img, (int(q[0]), int(q[1])), r * 16, p.colour, -1, cv2.LINE_AA, 4)
    return img
