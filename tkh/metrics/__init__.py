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

The parts: `tkh.metrics.inputs` (the shared input handling above), `.pixels` (SSIM, PSNR, LPIPS),
`.landmarks` (landmark error), `.identity` (face chips, embeddings, CSIM, identity distance) and `.palette`
(landmark colours in the face).
"""

from __future__ import annotations

from tkh.metrics.identity import DLIB_SAME_PERSON, csim, face_chips, identity_distance, identity_embedding
from tkh.metrics.identity import _dlib_models as _dlib_models  # tests/test_metrics.py: dlib's own detector
from tkh.metrics.landmarks import LEFT_EYE_OUTER, RIGHT_EYE_OUTER, landmark_error
from tkh.metrics.palette import (
    PALETTE_HUE_TOLERANCE,
    PALETTE_MIN_SATURATION,
    SKIN_HUES,
    palette_fraction,
    palette_hues,
)
from tkh.metrics.pixels import lpips, psnr, ssim

__all__ = ["DLIB_SAME_PERSON", "csim", "face_chips", "identity_distance", "identity_embedding", "landmark_error", "lpips",
           "palette_fraction", "palette_hues", "psnr", "ssim",
           # constants, importable from here as before the split
           "LEFT_EYE_OUTER", "PALETTE_HUE_TOLERANCE", "PALETTE_MIN_SATURATION", "RIGHT_EYE_OUTER", "SKIN_HUES"]
