"""68-point facial landmarks: detect, crop, rasterize, edit, smooth (paper Sec. 3.1).

The paper's networks see a face's pose and expression only through the landmark image y, made by
drawing the 68 iBUG points as coloured polylines. This package is everything around that:

- `detect(image)` / `detect_video(path)`: landmarks with face-alignment (FAN) or dlib; `find_faces(image)`:
  every face found (`Detection`: `Face`s and the detector stage that found them; dlib's cascade is
  `tkh.landmarks.cascade`, face-alignment's `tkh.landmarks.fan`). ``box=(x, y, w, h)`` gives a face by hand,
  ``face=N`` picks one of several.
- `crop(image, landmarks, size)`: the one square face crop used for training and inference, with a
  `CropTransform` back to the original; `stable_boxes(track)` for jitter-free video crops.
- `rasterize(landmarks, size)` / `rasterize_torch(batch, size)`: the landmark image y.
- `edit(landmarks, jaw_open=..., smile=..., yaw=...)`: expression and head-pose edits.
- `smooth_track(track)`: One-Euro temporal filter for tracks.
- `plausible(landmarks, box)` / `plausible_track(track)`: do 68 points look like a face (eyes above
  nose above mouth above chin, eyes apart, inside the face box)?
"""

from tkh.landmarks.crop import CropTransform, box_jitter, crop, face_box, stable_boxes
from tkh.landmarks.detect import detect, find_faces, get_backend, reset_backends, resolve_backend
from tkh.landmarks.draw import PART_COLOURS, PARTS, draw_on_image, rasterize, rasterize_torch
from tkh.landmarks.edit import CLOSURES, EXPRESSIONS, RANGES, edit, fit_pose, mean_face_3d
from tkh.landmarks.faces import Detection, Face, parse_box
from tkh.landmarks.fan import ensure_face_alignment_weights, face_alignment_weight_paths
from tkh.landmarks.sanity import implausible_reason, plausible, plausible_track
from tkh.landmarks.smooth import OneEuroFilter, smooth_track
from tkh.landmarks.video import VideoLandmarks, detect_video

__all__ = [
    "CLOSURES", "EXPRESSIONS", "PARTS", "PART_COLOURS", "RANGES", "CropTransform", "Detection", "Face", "OneEuroFilter",
    "VideoLandmarks", "box_jitter", "crop", "detect", "detect_video", "draw_on_image", "edit", "ensure_face_alignment_weights",
    "face_alignment_weight_paths", "face_box", "find_faces", "fit_pose", "get_backend", "implausible_reason", "mean_face_3d",
    "parse_box", "plausible", "plausible_track", "rasterize", "rasterize_torch", "reset_backends", "resolve_backend",
    "smooth_track", "stable_boxes",
]

