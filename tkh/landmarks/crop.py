"""Square face crops around the landmarks, the same for training and inference.

The paper trains on VoxCeleb2's face crops (sec. 4; 224 px, used at 256 px by the public re-implementations). A crop that
differs between meta-training and inference is the re-implementations' top complaint (blurry
results, the embedding ignored), so tkh has exactly one crop function, `crop`, used by
`tkh.data.preprocess` and by adaptation/animation alike.

The box: the landmarks' bounding box (side s = max(width, height)), centred on the box centre moved
up by `shift`·s (the 68 points stop at the brows; this keeps the forehead), with side
``s · (1 + 2·margin)``, rounded to whole pixels. Parts outside the image are filled (black by
default). `CropTransform` maps points both ways and pastes a crop-sized image back.

For videos, `stable_boxes` smooths the per-frame boxes over time (zero-phase Gaussian on the
centre, a stronger one on the side) so the crops do not jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tkh.errors import BadInputError
from tkh.media import load_image

MARGIN = 0.35  # default extra space on each side, as a fraction of the landmarks' box side
SHIFT = 0.12  # default upward shift of the box centre, as a fraction of the landmarks' box side


def _check_landmarks(landmarks: np.ndarray, what: str = "landmarks") -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise BadInputError(f"{what}: expected shape (68, 2), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise BadInputError(f"{what}: contain NaN or inf (a frame without a face?); skip that frame")
    return pts


def face_box(landmarks: np.ndarray, margin: float = MARGIN, shift: float = SHIFT) -> np.ndarray:
    """The square crop box of one face: ``(cx, cy, side)`` float, in image pixels."""
    pts = _check_landmarks(landmarks)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    s = float(max(hi - lo))
    cx, cy = (lo + hi) / 2
    return np.array([cx, cy - shift * s, s * (1 + 2 * margin)], dtype=np.float64)


@dataclass(frozen=True)
class CropTransform:
    """The map between an original image and its square crop.

    A point p in the original maps to ``(p - (x0, y0)) · scale`` in the crop, with
    ``scale = size / side``. `x0, y0, side` are whole pixels (the crop is an exact pixel window,
    then resized), so the inverse is exact too.
    """

    x0: int  # left edge of the crop window in the original (may be negative: padded)
    y0: int  # top edge
    side: int  # side of the window in original pixels
    size: int  # side of the crop in pixels
    src_shape: tuple[int, int]  # (H, W) of the original image

    @property
    def scale(self) -> float:
        return self.size / self.side

    @property
    def matrix(self) -> np.ndarray:
        """2x3 affine matrix original -> crop (cv2.warpAffine convention)."""
        s = self.scale
        return np.array([[s, 0, -self.x0 * s], [0, s, -self.y0 * s]], dtype=np.float64)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) points in the original -> in the crop."""
        p = np.asarray(points, dtype=np.float64)
        return ((p - (self.x0, self.y0)) * self.scale).astype(np.float32)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) points in the crop -> in the original."""
        p = np.asarray(points, dtype=np.float64)
        return (p / self.scale + (self.x0, self.y0)).astype(np.float32)

    def paste(self, crop_image: np.ndarray, original: np.ndarray, feather: float = 0.0) -> np.ndarray:
        """Put a crop-sized image (e.g. a generated face) back into a copy of the original.

        feather: width of a soft border, as a fraction of the crop side (0 = hard edge).
        """
        crop_image = load_image(crop_image, name="crop image")
        original = load_image(original, name="original image")
        if original.shape[:2] != tuple(self.src_shape):
            raise BadInputError(f"original image is {original.shape[:2]}, the crop was made from {self.src_shape}")
        h, w = self.src_shape
        if crop_image.shape[:2] != (self.size, self.size):
            crop_image = cv2.resize(crop_image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        # window inside the image, and the matching part of the resized crop
        xa, ya = max(self.x0, 0), max(self.y0, 0)
        xb, yb = min(self.x0 + self.side, w), min(self.y0 + self.side, h)
        out = original.copy()
        if xb <= xa or yb <= ya:
            return out
        interp = cv2.INTER_AREA if self.side < self.size else cv2.INTER_CUBIC  # crop -> window resize
        window = cv2.resize(crop_image, (self.side, self.side), interpolation=interp)
        part = window[ya - self.y0: yb - self.y0, xa - self.x0: xb - self.x0].astype(np.float32)
        if feather > 0:
            ramp = max(1, int(round(feather * self.side)))
            line = np.clip(np.minimum(np.arange(self.side), np.arange(self.side)[::-1]) / ramp, 0, 1)
            alpha = np.minimum.outer(line, line)[ya - self.y0: yb - self.y0, xa - self.x0: xb - self.x0, None]
        else:
            alpha = 1.0
        region = out[ya:yb, xa:xb].astype(np.float32)
        out[ya:yb, xa:xb] = np.clip(np.rint(alpha * part + (1 - alpha) * region), 0, 255).astype(np.uint8)
        return out


def transform_for_box(box: np.ndarray, size: int, src_shape: tuple[int, int]) -> CropTransform:
    """The CropTransform of a ``(cx, cy, side)`` box, rounded to whole pixels."""
    cx, cy, side = (float(v) for v in box)
    iside = max(2, int(round(side)))
    return CropTransform(x0=int(round(cx - iside / 2)), y0=int(round(cy - iside / 2)), side=iside,
                         size=int(size), src_shape=(int(src_shape[0]), int(src_shape[1])))


def crop(image, landmarks: np.ndarray, size: int = 256, margin: float = MARGIN, shift: float = SHIFT,
         box: np.ndarray | None = None, fill: int | tuple[int, int, int] = 0
         ) -> tuple[np.ndarray, np.ndarray, CropTransform]:
    """Square face crop resized to ``size`` pixels.

    image: anything `tkh.media.load_image` reads. landmarks: (68, 2) in that image's pixels.
    box: an explicit ``(cx, cy, side)`` (e.g. from `stable_boxes` for video frames); by default
    `face_box(landmarks, margin, shift)`. fill: colour of the parts of the window outside the image.
    Returns ``(crop uint8 (size, size, 3), landmarks in crop pixels (68, 2) float32, CropTransform)``.
    """
    img = load_image(image)
    pts = _check_landmarks(landmarks)
    if int(size) < 8:
        raise BadInputError(f"crop size must be at least 8 pixels, got {size}")
    t = transform_for_box(face_box(pts, margin, shift) if box is None else np.asarray(box, float), size,
                          img.shape[:2])
    h, w = img.shape[:2]
    # exact pixel window, padded where it leaves the image
    window = np.empty((t.side, t.side, 3), np.uint8)
    window[:] = fill
    xa, ya = max(t.x0, 0), max(t.y0, 0)
    xb, yb = min(t.x0 + t.side, w), min(t.y0 + t.side, h)
    if xb > xa and yb > ya:
        window[ya - t.y0: yb - t.y0, xa - t.x0: xb - t.x0] = img[ya:yb, xa:xb]
    interp = cv2.INTER_AREA if t.side > t.size else cv2.INTER_CUBIC
    out = cv2.resize(window, (t.size, t.size), interpolation=interp) if t.side != t.size else window
    return out, t.to_crop(pts), t


# ---------------------------------------------------------------------------------------------
# Video: boxes that do not jitter
# ---------------------------------------------------------------------------------------------
def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing along axis 0, edges reflected."""
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, [(r, r)] + [(0, 0)] * (x.ndim - 1), mode="reflect" if len(x) > r else "edge")
    return np.stack([np.tensordot(k, pad[i: i + 2 * r + 1], axes=(0, 0)) for i in range(len(x))])


def stable_boxes(landmarks: np.ndarray, valid: np.ndarray | None = None, margin: float = MARGIN,
                 shift: float = SHIFT, center_sigma: float = 2.0, size_sigma: float = 8.0) -> np.ndarray:
    """Per-frame crop boxes ``(T, 3)`` = (cx, cy, side), smoothed over time so crops do not jitter.

    landmarks: (T, 68, 2) track (NaN rows allowed); valid: (T,) bool (default: finite rows).
    Boxes of frames without a face are interpolated from their neighbours. The centre is smoothed
    with a zero-phase Gaussian of `center_sigma` frames, the side with `size_sigma` frames (the face's
    size changes slowly, its per-frame estimate is noisier). Offline (the whole track is known), so
    no lag. Use with ``crop(frame, lms, size, box=boxes[t])``.
    """
    track = np.asarray(landmarks, dtype=np.float64)
    if track.ndim != 3 or track.shape[1:] != (68, 2):
        raise BadInputError(f"landmark track: expected shape (T, 68, 2), got {track.shape}")
    ok = np.isfinite(track).all(axis=(1, 2)) if valid is None else np.asarray(valid, bool) & np.isfinite(
        track).all(axis=(1, 2))
    if not ok.any():
        raise BadInputError("landmark track has no valid frame; nothing to crop")
    boxes = np.full((len(track), 3), np.nan)
    for t in np.flatnonzero(ok):
        boxes[t] = face_box(track[t], margin, shift)
    idx = np.arange(len(track))
    for c in range(3):
        boxes[:, c] = np.interp(idx, idx[ok], boxes[ok, c])
    boxes[:, :2] = _gaussian_smooth(boxes[:, :2], center_sigma)
    boxes[:, 2] = _gaussian_smooth(boxes[:, 2:], size_sigma)[:, 0]
    return boxes


def box_jitter(boxes: np.ndarray) -> float:
    """Mean box-centre jitter in pixels: the norm of the second difference c[t+1] - 2c[t] + c[t-1].

    Smooth motion (a head turning steadily) has a small second difference; frame-to-frame shake
    has a large one.
    """
    c = np.asarray(boxes, dtype=np.float64)[:, :2]
    if len(c) < 3:
        return 0.0
    return float(np.linalg.norm(c[2:] - 2 * c[1:-1] + c[:-2], axis=1).mean())
