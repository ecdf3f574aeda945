"""The offline cascade on ../shared/portraits (paintings and old photographs; skipped without ../shared).

Every image whose sitter is one clear face gets 68 landmarks that pass `plausible`, from the stage
../shared/portraits/dlib_detection_2026-12-02.tsv predicts; the two that defeat every detector work with
a box given by hand; a group painting lists its faces. The time caps are lifted here so that a busy
machine cannot leave out a stage (HOG's 2x and 4x searches are capped by their predicted time, the CNN's
turns by theirs; HOG's 4x search finds none of these faces); speed is benchmarks/portrait_detection.py's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared_path

from tkh.errors import NoFaceError
from tkh.landmarks import detect, get_backend, implausible_reason
from tkh.media import load_image

pytestmark = pytest.mark.filterwarnings("ignore:tkh.landmarks. backend 'auto'")

# single-face images -> the first stage that finds the face (the others: HOG at the image's scale)
LATER_STAGE = {"nadar_photograph_of_claude_monet.jpg": "hog-up1",  # a frontal photograph HOG misses at 1x
               "kroyer_portrait_of_a_woman_in_profile.jpg": "cnn",  # a profile
               "leighton_flaming_june.jpg": "cnn-rot90"}  # a sleeper's head, lying on its side
ONE_FACE = sorted({
    "botticelli_idealized_portrait_of_a_lady.jpg", "kneller_portrait_of_isaac_newton_1689.jpg",
    "kneller_portrait_of_isaac_newton_1702_crop.jpg", "leonardo_ginevra_de_benci.jpg",
    "leonardo_lady_with_an_ermine.jpg", "leonardo_saint_john_the_baptist.jpg", "moller_portrait_of_nikolai_gogol.jpg",
    "photograph_of_gustav_klimt_in_smock.jpg", "rembrandt_self_portrait_1659.jpg",
    "rembrandt_self_portrait_with_two_circles.jpg", "rubens_self_portrait.jpg",
    "uccello_five_famous_men_detail_giotto.jpg", "vangogh_portrait_of_dr_gachet.jpg",
    "vangogh_self_portrait_with_bandaged_ear.jpg", *LATER_STAGE})
# the faces no dlib detector finds, given by hand (x, y, w, h: brows to chin), as README's table lists them
HAND_BOXES = {"vangogh_self_portrait_with_straw_hat.jpg": (230, 360, 310, 280),
              "leonardo_adoration_of_the_magi.jpg": (476, 438, 50, 52)}  # the Virgin


def _image(name: str) -> np.ndarray:
    return load_image(shared_path("portraits", name))


@pytest.mark.parametrize("name", ONE_FACE)
def test_one_clear_face_gives_plausible_landmarks(name):
    det = get_backend("dlib").find(_image(name), time_budget=float("inf"), cnn_budget=float("inf"))
    assert det.stage == LATER_STAGE.get(name, "hog"), (det.tried, det.skipped)
    assert len(det.faces) == 1
    face = det.faces[0]
    assert implausible_reason(face.landmarks, face.box) is None


@pytest.mark.parametrize("name", sorted(HAND_BOXES))
def test_faces_no_detector_finds_work_with_a_box(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good box: no "do not look like a face" warning
        pts = detect(_image(name), backend="dlib", box=HAND_BOXES[name], name=name)
    assert implausible_reason(pts, HAND_BOXES[name]) is None


def test_straw_hat_defeats_every_detector_and_the_error_says_what_to_do():
    image = _image("vangogh_self_portrait_with_straw_hat.jpg")
    with pytest.raises(NoFaceError, match="cnn-rot270 tried .*--box X,Y,W,H"):
        detect(image, backend="dlib", name="straw hat")


def test_group_painting_lists_its_faces():
    image = _image("rembrandt_anatomy_lesson_of_dr_tulp.jpg")
    with pytest.warns(UserWarning, match=r"6 faces found by hog \(X,Y,W,H, largest first\): #1 \d+,\d+,\d+,\d+; "
                                         r"#2 .*#6 .*--face N") as record:
        pts = detect(image, backend="dlib", name="Tulp")
    assert len(record) == 1 and pts.shape == (68, 2)
    sixth = detect(image, backend="dlib", face=6)
    assert not np.allclose(sixth, pts)
