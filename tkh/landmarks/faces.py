"""What a face search found, and which face to use: `Face`, `Detection`, `pick`, boxes given by hand.

`tkh.landmarks.find_faces(image)` returns a `Detection`: every face that passed `plausible`, largest
box first, and the detector stage that found them (see `tkh.landmarks.cascade` for dlib's stages).
`pick(detection, face=N)` chooses one (the largest by default) and says so when there were several.

A box drawn by hand is ``(x, y, w, h)`` in the image's pixels (left, top, width, height), on the
command line ``--box X,Y,W,H``; `check_box` refuses a box that is tiny or mostly off the image.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tkh.errors import BadInputError, NoFaceError
from tkh.landmarks.sanity import implausible_reason

MIN_BOX_SIDE = 20  # pixels: the 68-point fitter needs at least this much face (the eyes > 10 px apart)
MIN_BOX_INSIDE = 0.5  # fraction of a given box's area that must lie on the image
# A lone face smaller than this fraction of the image suggests others the cascade did not look for: on
# ../shared/portraits the 4 group paintings where it stopped at one face had 0.2-2.7 %, the 15 single
# sitters HOG found 3.2-38 % (dlib_detection_2026-12-02.tsv; a tie-break fitted to 19 images, not a law)
GROUP_HINT_FRACTION = 0.03

Box = tuple[int, int, int, int]  # (x, y, w, h) in pixels

BOX_HELP = ("give the face by hand: --box X,Y,W,H (box=(x, y, w, h) in Python), its left, top, width and "
            "height in pixels, from the brows to the chin")


@dataclass(frozen=True)
class Face:
    """One face: its 68 landmarks (iBUG order, (x, y) pixels of the original image) and its box."""

    landmarks: np.ndarray  # (68, 2) float32
    box: Box  # the detector's box (or the one given), (x, y, w, h) pixels of the original image
    score: float = math.nan  # the detector's confidence (HOG score, CNN confidence); NaN for a given box
    stage: str = ""  # the detector stage that found it ("box" for a box given by hand)

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])


@dataclass
class Detection:
    """The result of one face search in one image.

    faces: the plausible faces, largest box first. stage: the stage that found them ("hog", "hog-up1",
    "hog-up2", "cnn", "cnn-rot90", "cnn-rot270" for dlib, "s3fd" for face-alignment, "box" for a box
    given by hand), "" when none did. tried: the stages run, in order; skipped: stages left out and why;
    rejected: fits that failed `plausible`. seconds: the search's wall time.
    """

    faces: list[Face]
    stage: str
    backend: str
    seconds: float = 0.0
    tried: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rejected: int = 0

    @property
    def first_stage(self) -> bool:
        """True when the first stage tried found the faces (no fallback was needed)."""
        return bool(self.faces) and bool(self.tried) and self.stage == self.tried[0]

    def boxes(self) -> np.ndarray:
        """(N, 4) int: every face's (x, y, w, h), in the order `pick(face=N)` numbers them (1 = largest)."""
        return np.array([f.box for f in self.faces], dtype=np.int64).reshape(-1, 4)

    def summary(self) -> str:
        """A few words for a log line: 'dlib, found by cnn-rot90 in 7.1 s'."""
        if not self.faces:
            return f"{self.backend}, no face ({', '.join(self.tried)} tried in {self.seconds:.1f} s)"
        return f"{self.backend}, found by {self.stage} in {self.seconds:.1f} s"


def sort_faces(faces: list[Face]) -> list[Face]:
    """Largest box first; ties by position (left to right, top to bottom), so the numbering is stable."""
    return sorted(faces, key=lambda f: (-f.area, f.box[0], f.box[1]))


def format_box(box: Sequence[float]) -> str:
    return ",".join(str(int(round(v))) for v in box)


def parse_box(text: str) -> Box:
    """``"X,Y,W,H"`` (the --box option) -> (x, y, w, h) ints."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(round(float(p))) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise BadInputError(f"--box {text!r}: expected four numbers X,Y,W,H (left, top, width, height in pixels), "
                            "e.g. --box 410,300,260,260")
    return values[0], values[1], values[2], values[3]


def check_box(box: Any, image_shape: Sequence[int], name: str = "image") -> Box:
    """A given face box as (x, y, w, h) ints, or BadInputError when it is malformed, tiny or off the image."""
    if isinstance(box, str):
        box = parse_box(box)
    try:
        x, y, w, h = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    except (TypeError, ValueError):
        raise BadInputError(f"{name}: box {box!r} must be four numbers (x, y, w, h): left, top, width, "
                            "height in pixels") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise BadInputError(f"{name}: box {box!r} contains NaN or inf")
    ih, iw = int(image_shape[0]), int(image_shape[1])
    text = format_box((x, y, w, h))
    if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
        raise BadInputError(f"{name}: box {text} is only {w:g}x{h:g} px; a face box needs at least "
                            f"{MIN_BOX_SIDE}x{MIN_BOX_SIDE} px (W and H are its width and height, not a corner)")
    inside_w = max(0.0, min(x + w, iw) - max(x, 0.0))
    inside_h = max(0.0, min(y + h, ih) - max(y, 0.0))
    if inside_w * inside_h < MIN_BOX_INSIDE * w * h:
        raise BadInputError(f"{name}: box {text} lies {'entirely' if inside_w * inside_h == 0 else 'mostly'} "
                            f"outside the {iw}x{ih} image; X,Y is the face's top-left corner in pixels")
    return int(round(x)), int(round(y)), int(round(w)), int(round(h))


def from_cli(value: str | Sequence[str] | None, parse: Any = parse_box) -> Any:
    """--box / --face values as the Python API takes them: one value, or a list ("-" = detect that image's)."""
    if value is None or isinstance(value, (int, np.integer)):
        return value
    if isinstance(value, str):
        return parse(value)
    values = [None if v in ("-", "") else parse(v) for v in value]
    return values[0] if len(values) == 1 else values


def parse_face(text: str) -> int:
    """``"N"`` (the --face option) -> N, a face number (1 = the largest)."""
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"--face {text!r}: expected a face number, 1 = the largest (the warning lists them)") \
            from None


def per_image(value: Any, n: int, what: str) -> list[Any]:
    """One `box` / `face` value per image: a single value (one image), or a list of n (None = detect)."""
    if value is None:
        return [None] * n
    if _single(value):
        if n != 1:
            raise BadInputError(f"{what}: {n} images but one {what}; give a list with one {what} per image "
                                "(None to detect that image's face)")
        return [value]
    values = list(value)
    if len(values) != n:
        raise BadInputError(f"{what}: {n} images but {len(values)} values; give one per image (None to detect)")
    return values


def _single(value: Any) -> bool:
    """A face number, a "X,Y,W,H" string or four numbers, as opposed to a list of those (one per image)."""
    if isinstance(value, (int, np.integer, str)):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value)


def no_face_message(name: str, detection: Detection) -> str:
    """The one-line error when every stage failed: what was tried, and how to give the face by hand."""
    tried = ", ".join(detection.tried) or detection.backend
    rejected = f"; {detection.rejected} fit(s) did not look like a face" if detection.rejected else ""
    return (f"{name}: no face found ({detection.backend} backend: {tried} tried in {detection.seconds:.1f} s"
            f"{rejected}); {BOX_HELP}")


def pick(detection: Detection, face: int | None = None, name: str = "image") -> Face:
    """The face to use: number `face` (1 = the largest box), or the largest, saying so when there are several.

    Raises NoFaceError (what was tried, and --box) when there is none, BadInputError for a `face` out of range.
    """
    faces = detection.faces
    if not faces:
        raise NoFaceError(no_face_message(name, detection))
    listing = "; ".join(f"#{i} {format_box(f.box)}" for i, f in enumerate(faces, 1))
    if face is not None:
        if isinstance(face, bool) or not isinstance(face, (int, np.integer)) or not 1 <= face <= len(faces):
            raise BadInputError(f"{name}: face {face!r} does not exist; {len(faces)} face(s) found by "
                                f"{detection.stage} (X,Y,W,H, largest first): {listing}; choose --face 1 to "
                                f"{len(faces)}, or give the box with --box")
        return faces[int(face) - 1]
    if len(faces) > 1:
        warnings.warn(f"{name}: {len(faces)} faces found by {detection.stage} (X,Y,W,H, largest first): {listing}; "
                      "using #1, the largest; choose another with --face N (face=N in Python)", stacklevel=3)
    return faces[0]


def metadata(detection: Detection, face: Face) -> dict[str, Any]:
    """What a landmarks file records about how its face was found (numpy-friendly values)."""
    number = [f is face for f in detection.faces].index(True) + 1 if any(f is face for f in detection.faces) else 1
    return {"stage": detection.stage, "stages_tried": ",".join(detection.tried),
            "detect_seconds": round(float(detection.seconds), 3), "box": np.array(face.box, np.int64),
            "faces": detection.boxes(), "face": number}


def group_hint(detection: Detection, image_shape: Sequence[int]) -> str:
    """A few words suggesting ``--all-faces`` when the search stopped at one small face, else "".

    Only where more faces could honestly be found: dlib's cascade stops at the first stage with a face,
    so when that was a HOG stage, its later stages and the CNN (which `all_faces` runs on a larger copy)
    never looked for the small, turned or painted faces of the others; and only when the face is a small
    part of the image (`GROUP_HINT_FRACTION`), so a portrait's sitter gets no hint."""
    if detection.backend != "dlib" or len(detection.faces) != 1 or "cnn" in detection.tried \
            or not detection.stage.startswith("hog"):
        return ""
    fraction = detection.faces[0].area / max(1, int(image_shape[0]) * int(image_shape[1]))
    if fraction >= GROUP_HINT_FRACTION:
        return ""
    return (f"1 face found by {detection.stage}, {fraction:.1%} of the image: a group painting? "
            "--all-faces searches every stage")


def report(detection: Detection, face: Face, name: str = "image", fallback: bool = True) -> None:
    """Warn about what the user should know of a chosen face: that only a later stage found it (slower;
    `fallback`), or that the points fitted in a box given by hand do not look like a face (the box is off)."""
    if detection.stage == "box":
        why = implausible_reason(face.landmarks, face.box)
        if why:
            warnings.warn(f"{name}: the landmarks fitted in box {format_box(face.box)} do not look like a face "
                          f"({why}); check that the box covers the face from the brows to the chin", stacklevel=3)
    elif fallback and detection.tried and not detection.first_stage:
        missed = ", ".join(s for s in detection.tried if s != detection.stage)
        warnings.warn(f"{name}: face found by {detection.backend}'s {detection.stage} stage after {missed} "
                      f"found none ({detection.seconds:.1f} s)", stacklevel=3)
