"""The offline detector cascade (tkh.landmarks.cascade), faces given by hand (box=) or chosen (face=N).

Real dlib detectors on real images, no mocks; the time cap is tested with an injected clock (no test
asserts wall-clock time). The paintings of ../shared/portraits are in test_landmarks_portraits.py.
"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np
import pytest

from tkh.errors import BadInputError, NoFaceError
from tkh.landmarks import cascade as C
from tkh.landmarks import detect, find_faces, get_backend, parse_box, plausible
from tkh.landmarks.faces import check_box, from_cli, per_image

pytestmark = pytest.mark.filterwarnings("ignore:tkh.landmarks. backend 'auto'")


@pytest.fixture(scope="module")
def dlib_backend():
    return get_backend("dlib")


@pytest.fixture(scope="module")
def hopper_face(grace_hopper, dlib_backend):
    det = dlib_backend.find(grace_hopper)
    assert det.stage == "hog" and det.first_stage and len(det.faces) == 1
    return det.faces[0]


# ---------------------------------------------------------------------------------------------
# geometry helpers: quarter turns and tiles
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_turned_points_and_boxes_map_back_exactly(turns):
    img = np.zeros((30, 50), np.uint8)
    img[7, 41] = 1  # (x, y) = (41, 7)
    turned = np.rot90(img, turns)
    yr, xr = np.argwhere(turned)[0]
    assert C._turn_points(np.array([xr, yr], np.float64), turns, img.shape).tolist() == [41, 7]
    box_img = np.zeros_like(img)
    box_img[5:5 + 8, 10:10 + 20] = 1  # box (10, 5, 20, 8)
    ys, xs = np.nonzero(np.rot90(box_img, turns))
    turned_box = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert C._turn_box(turned_box, turns, img.shape) == (10, 5, 20, 8)


def test_tiles_cover_the_image_and_overlap():
    for h, w in [(500, 700), (800, 1600), (1994, 2052)]:
        tiles = C._tiles(h, w, 800, 200)
        cover = np.zeros((h, w), bool)
        for y0, x0, y1, x1 in tiles:
            assert y1 - y0 <= 800 and x1 - x0 <= 800
            cover[y0:y1, x0:x1] = True
        assert cover.all()
        xs = sorted({(x0, x1) for _, x0, _, x1 in tiles})
        assert all(a[1] - b[0] >= 200 for a, b in zip(xs, xs[1:]))  # neighbours share >= 200 px


# ---------------------------------------------------------------------------------------------
# the stages
# ---------------------------------------------------------------------------------------------
def test_blank_image_runs_every_hog_stage_then_stops_without_cnn(dlib_backend):
    det = dlib_backend.find(np.full((120, 160, 3), 127, np.uint8), cnn=False)
    assert det.faces == [] and det.stage == "" and det.tried == ["hog", "hog-up1", "hog-up2"]


def test_time_cap_skips_the_4x_search(dlib_backend):
    """A clock advancing 1 s per reading, so every search seems to take 1 s: the 2x search is predicted to end
    at 3 + 4 x 1 = 7 s (within 9 s), the 4x one at 6 + 4 x 1 = 10 s (past it)."""
    ticks = itertools.count()
    det = dlib_backend.find(np.full((120, 160, 3), 127, np.uint8), cnn=False, time_budget=9.0,
                            clock=lambda: float(next(ticks)))
    assert det.tried == ["hog", "hog-up1"] and det.skipped == ["hog-up2 (time cap)"]


def test_time_cap_skips_the_2x_search_predicted_from_the_1x(dlib_backend):
    """The same clock: the 2x search has 4x the pixels of the 1x one, so it is predicted at 4x its 1 s and,
    ending at 7 s, does not run under a 6 s cap (memory would allow it); without a cap it runs."""
    ticks = itertools.count()
    image = np.full((120, 160, 3), 127, np.uint8)
    det = dlib_backend.find(image, cnn=False, time_budget=6.0, clock=lambda: float(next(ticks)))
    assert det.tried == ["hog"] and det.skipped == ["hog-up1 (time cap)"]
    ticks = itertools.count()
    det = dlib_backend.find(image, cnn=False, time_budget=7.0, clock=lambda: float(next(ticks)))
    assert det.tried == ["hog", "hog-up1"]  # ends at 7 s: within the cap


def test_memory_cap_skips_upsampling(dlib_backend, monkeypatch):
    monkeypatch.setattr(C, "MAX_HOG_BYTES", 120 * 160 * 2 * C.HOG_BYTES_PER_PIXEL)  # 1x fits, 2x (4x pixels) not
    det = dlib_backend.find(np.full((120, 160, 3), 127, np.uint8), cnn=False)
    assert det.tried == ["hog"] and det.skipped == ["hog-up1 (memory)"]


def test_cnn_finds_a_face_lying_on_its_side(grace_hopper, hopper_face):
    """HOG misses Grace Hopper turned a quarter; the CNN finds her in a turned copy, and the 68 points
    (fitted at full resolution in the turned image, then turned back) match the upright ones."""
    sideways = np.ascontiguousarray(np.rot90(grace_hopper, 3))  # a quarter turn clockwise
    with pytest.warns(UserWarning, match="cnn-rot90 stage after hog, hog-up1, hog-up2, cnn found none"):
        pts = detect(sideways, backend="dlib", name="sideways")
    det = find_faces(sideways, backend="dlib")
    assert det.stage == "cnn-rot90" and not det.first_stage and det.faces[0].stage == "cnn-rot90"
    assert plausible(pts, det.faces[0].box)
    upright = C._turn_points(pts, 3, grace_hopper.shape[:2])  # back into the upright photo
    assert np.linalg.norm(upright - hopper_face.landmarks, axis=1).mean() < 10  # a CNN box, not HOG's: near


# ---------------------------------------------------------------------------------------------
# box= and face=
# ---------------------------------------------------------------------------------------------
def test_box_given_by_hand(grace_hopper, hopper_face):
    x, y, w, h = hopper_face.box
    det = find_faces(grace_hopper, backend="dlib", box=(x + 6, y - 4, w, h))
    assert det.stage == "box" and det.tried == ["box"] and det.faces[0].box == (x + 6, y - 4, w, h)
    assert np.linalg.norm(det.faces[0].landmarks - hopper_face.landmarks, axis=1).mean() < 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good box: no warning
        pts = detect(grace_hopper, backend="dlib", box=f"{x},{y},{w},{h}")
    assert np.allclose(pts, hopper_face.landmarks)


def test_box_on_something_else_warns(grace_hopper):
    with pytest.warns(UserWarning, match="do not look like a face"):
        detect(grace_hopper, backend="dlib", box=(0, 0, 512, 120))  # a wide strip of background


@pytest.mark.parametrize("box, match", [
    ((10, 10, 8, 8), "only 8x8 px"),
    ((600, 700, 100, 100), "entirely outside the 512x600 image"),
    ((450, 100, 200, 200), "mostly outside"),
    ("10,20,30", "four numbers"),
    ("a,b,c,d", "four numbers"),
    ((1, 2, float("nan"), 4), "NaN"),
])
def test_bad_boxes_are_clear_errors(grace_hopper, box, match):
    with pytest.raises(BadInputError, match=match):
        detect(grace_hopper, backend="dlib", box=box, name="hopper")


def test_box_helpers():
    assert parse_box(" 1, 2.4,30,40 ") == (1, 2, 30, 40)
    assert check_box((-5, -5, 100, 100), (200, 200)) == (-5, -5, 100, 100)  # a little off the edge is fine
    assert from_cli(["1,2,30,40", "-"]) == [(1, 2, 30, 40), None] and from_cli(["1,2,30,40"]) == (1, 2, 30, 40)
    assert per_image((1, 2, 30, 40), 1, "box") == [(1, 2, 30, 40)]
    assert per_image([None, (1, 2, 30, 40)], 2, "box") == [None, (1, 2, 30, 40)]
    with pytest.raises(BadInputError, match="2 images but one box"):
        per_image((1, 2, 30, 40), 2, "box")


@pytest.fixture(scope="module")
def two_faces(grace_hopper) -> np.ndarray:
    """Grace Hopper at full size beside herself at half size."""
    canvas = np.zeros((600, 512 + 256, 3), np.uint8)
    canvas[:300, :256] = grace_hopper[::2, ::2]
    canvas[:, 256:] = grace_hopper
    return canvas


def test_several_faces_are_listed_and_face_n_chooses(two_faces):
    det = find_faces(two_faces, backend="dlib")
    assert len(det.faces) == 2 and det.faces[0].area > det.faces[1].area  # largest first
    big, small = (",".join(map(str, f.box)) for f in det.faces)
    with pytest.warns(UserWarning, match=f"2 faces found by hog .*#1 {big}; #2 {small}; using #1.*--face N"):
        first = detect(two_faces, backend="dlib")
    assert np.allclose(first, det.faces[0].landmarks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chosen explicitly: no warning
        second = detect(two_faces, backend="dlib", face=2)
    assert np.allclose(second, det.faces[1].landmarks) and second[:, 0].max() < 256
    with pytest.raises(BadInputError, match=f"face 3 does not exist; 2 face.* #1 {big}; #2 {small}"):
        detect(two_faces, backend="dlib", face=3)


@pytest.fixture(scope="module")
def two_faces_small(two_faces) -> np.ndarray:
    """`two_faces` at half size (384x300): HOG at 1x finds only the large face (~105 px); the small one (~53 px)
    needs the 2x search, which the cascade does not run once the first stage found a face."""
    return np.ascontiguousarray(two_faces[::2, ::2])


@pytest.fixture(scope="module")
def all_faces_small(two_faces_small):
    return find_faces(two_faces_small, backend="dlib", all_faces=True)  # the CNN on a 768x600 copy: ~3 s


def test_all_faces_runs_every_stage_and_finds_the_face_the_first_stage_missed(two_faces_small, all_faces_small):
    default = find_faces(two_faces_small, backend="dlib")
    assert default.stage == "hog" and default.tried == ["hog"] and len(default.faces) == 1
    every = all_faces_small
    assert every.tried == ["hog", "hog-up1", "hog-up2", "cnn"]  # the CNN upright only
    assert len(every.faces) >= 2 > len(default.faces) and every.stage == "hog"  # the first stage with a face
    assert every.faces[0].box == default.faces[0].box  # merged: the earlier stage's box of the same face
    small = every.faces[1]
    assert small.stage != "hog" and small.box[0] + small.box[2] <= 128 + 8  # the half-size Grace Hopper, left
    assert all(plausible(f.landmarks, f.box) for f in every.faces)


def test_no_face_error_says_what_was_tried_and_how_to_give_the_box():
    with pytest.raises(NoFaceError, match=r"blank: no face found \(dlib backend: hog, hog-up1, hog-up2, cnn, "
                                          r"cnn-rot90, cnn-rot270 tried in .* s\); give the face by hand: "
                                          r"--box X,Y,W,H"):
        detect(np.full((100, 100, 3), 127, np.uint8), backend="dlib", name="blank")
    assert detect(np.full((100, 100, 3), 127, np.uint8), backend="dlib", on_missing="none", cnn=False) is None


def test_batch_takes_one_box_per_image(grace_hopper, hopper_face):
    blank = np.full_like(grace_hopper, 127)
    out = detect([grace_hopper, blank], backend="dlib", box=[None, hopper_face.box])
    assert np.allclose(out[0], hopper_face.landmarks) and out[1].shape == (68, 2)
    with pytest.raises(BadInputError, match="2 images but 3 values"):
        detect([grace_hopper, blank], backend="dlib", box=[None, None, None])


# ---------------------------------------------------------------------------------------------
# the command line: --box, --face, --all-faces (and its hint); the landmarks file says how the face was found
# ---------------------------------------------------------------------------------------------
def _run(capsys, *args) -> tuple[int, str, str]:
    from tkh.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def two_faces_png(tmp_path_factory, two_faces):
    from PIL import Image

    path = tmp_path_factory.mktemp("faces") / "two_faces.png"
    Image.fromarray(two_faces).save(path)
    return path


def test_cli_landmarks_records_the_stage_and_faces(tmp_path, capsys, two_faces_png, two_faces):
    det = find_faces(two_faces, backend="dlib")
    out = tmp_path / "l.npz"
    with pytest.warns(UserWarning, match="2 faces found"):
        rc, printed, _ = _run(capsys, "landmarks", two_faces_png, "--out", out, "--backend", "dlib")
    assert rc == 0 and "found by hog in" in printed and "face 1 of 2" in printed
    assert "--all-faces" not in printed  # both faces listed already: no hint
    with np.load(out) as f:
        assert str(f["stage"]) == "hog" and str(f["stages_tried"]) == "hog" and int(f["face"]) == 1
        assert f["faces"].tolist() == det.boxes().tolist() and tuple(f["box"]) == det.faces[0].box
        assert float(f["detect_seconds"]) >= 0 and str(f["backend"]) == "dlib"
    rc, printed, _ = _run(capsys, "landmarks", two_faces_png, "--out", out, "--backend", "dlib", "--face", "2")
    assert rc == 0 and "face 2 of 2" in printed
    with np.load(out) as f:
        assert np.allclose(f["landmarks"], det.faces[1].landmarks) and int(f["face"]) == 2
    box = ",".join(map(str, det.faces[1].box))
    rc, printed, _ = _run(capsys, "landmarks", two_faces_png, "--out", out, "--backend", "dlib", "--box", box)
    assert rc == 0 and "found by box" in printed
    with np.load(out) as f:
        assert str(f["stage"]) == "box" and np.allclose(f["landmarks"], det.faces[1].landmarks)


def test_cli_all_faces_lists_every_face(tmp_path, capsys, two_faces_small, all_faces_small):
    from PIL import Image

    image = tmp_path / "small.png"
    Image.fromarray(two_faces_small).save(image)
    out = tmp_path / "l.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one face by default: no "faces found" warning
        rc, printed, _ = _run(capsys, "landmarks", image, "--out", out, "--backend", "dlib")
    assert rc == 0 and "found by hog in" in printed and "face 1 of" not in printed
    listing = "; ".join(f"#{i} {','.join(map(str, f.box))}" for i, f in enumerate(all_faces_small.faces, 1))
    n = len(all_faces_small.faces)
    with pytest.warns(UserWarning, match=f"{n} faces found by hog .*{listing}; using #1"):
        rc, printed, _ = _run(capsys, "landmarks", image, "--out", out, "--backend", "dlib", "--all-faces")
    assert rc == 0 and f"face 1 of {n}" in printed
    with np.load(out) as f:
        assert f["faces"].tolist() == all_faces_small.boxes().tolist() and str(f["stages_tried"]).endswith("cnn")


def test_group_hint_only_where_a_later_stage_could_find_more(grace_hopper, hopper_face):
    """The rule on detections as the cascade returns them: one small face found by a HOG stage -> a hint."""
    from tkh.landmarks.faces import Detection, Face, group_hint

    lone = Face(hopper_face.landmarks, (0, 0, 100, 100), 1.0, "hog")  # 1 % of a 1000x1000 image
    assert "1 face found by hog, 1.0% of the image: a group painting? --all-faces" in group_hint(
        Detection([lone], "hog", "dlib", tried=["hog"]), (1000, 1000))
    assert group_hint(Detection([lone], "hog", "dlib", tried=["hog"]), (500, 500)) == ""  # 4 %: a portrait
    assert group_hint(Detection([lone, lone], "hog", "dlib", tried=["hog"]), (1000, 1000)) == ""  # listed already
    assert group_hint(Detection([lone], "cnn", "dlib", tried=["hog", "hog-up1", "hog-up2", "cnn"]),
                      (1000, 1000)) == ""  # every stage all_faces would run has run
    assert group_hint(Detection([lone], "hog", "dlib", tried=["hog", "hog-up1", "hog-up2", "cnn"]),
                      (1000, 1000)) == ""  # all_faces itself
    assert group_hint(Detection([lone], "s3fd", "face_alignment", tried=["s3fd"]), (1000, 1000)) == ""
    assert group_hint(Detection([lone], "box", "dlib", tried=["box"]), (1000, 1000)) == ""
    # the real cascade: Grace Hopper's portrait (her face ~10 % of it) gets none
    assert group_hint(find_faces(grace_hopper, backend="dlib"), grace_hopper.shape) == ""


def test_cli_hints_at_all_faces_for_one_small_face(tmp_path, capsys, two_faces_small, grace_hopper):
    """The half-size pair on a 768x600 canvas: HOG at 1x finds one face, 2.4 % of the image -> the hint."""
    from PIL import Image

    canvas = np.full((600, 768, 3), 127, np.uint8)
    canvas[:300, :384] = two_faces_small
    image, portrait = tmp_path / "canvas.png", tmp_path / "hopper.png"
    Image.fromarray(canvas).save(image)
    Image.fromarray(grace_hopper).save(portrait)
    out = tmp_path / "l.npz"
    rc, printed, _ = _run(capsys, "landmarks", image, "--out", out, "--backend", "dlib")
    assert rc == 0 and "found by hog in" in printed
    assert re.search(r"-> \S+l\.npz; 1 face found by hog, 2\.\d% of the image: a group painting\? --all-faces "
                     r"searches every stage$", printed.strip()), printed
    rc, printed, _ = _run(capsys, "landmarks", portrait, "--out", out, "--backend", "dlib")
    assert rc == 0 and "--all-faces" not in printed  # a portrait: no hint


@pytest.mark.parametrize("extra, needle", [
    (["--box", "10,10,5,5"], "only 5x5 px"),
    (["--box", "2000,10,100,100"], "outside the 768x600 image"),
    (["--box", "10,10"], "four numbers"),
    (["--face", "3"], "face 3 does not exist"),
    (["--face", "two"], "expected a face number"),
])
def test_cli_bad_box_or_face_is_one_line(tmp_path, capsys, two_faces_png, extra, needle):
    out = tmp_path / "l.npz"
    rc, _, err = _run(capsys, "landmarks", two_faces_png, "--out", out, "--backend", "dlib", *extra)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not out.exists()


def test_cli_box_is_for_images(tmp_path, capsys, carphone_path):
    rc, _, err = _run(capsys, "landmarks", carphone_path, "--out", tmp_path / "v.npz", "--box", "1,1,50,50")
    assert rc == 2 and "apply to images, not videos" in err


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    import torch

    from tkh.config import load_config
    from tkh.models import TalkingHeadModel

    torch.manual_seed(0)
    return TalkingHeadModel(load_config("tiny"), num_videos=2).save(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_cli_finetune_takes_a_box_per_image(tmp_path, capsys, tiny_model_file, two_faces_png, two_faces):
    """Two images: the first's face given by hand (the small one), the second's detected (the largest)."""
    import json

    from safetensors import safe_open

    det = find_faces(two_faces, backend="dlib")
    small = ",".join(map(str, det.faces[1].box))
    out = tmp_path / "a.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "2 faces found" for the detected one
        rc, _, err = _run(capsys, "finetune", "--model", tiny_model_file, "--images", two_faces_png, two_faces_png,
                          "--box", small, "-", "--steps", "0", "--out", out, "--device", "cpu")
    assert rc == 0, err
    with safe_open(str(out), "pt") as f:
        sides = [t["side"] for t in json.loads(f.metadata()["transforms"])]
    assert sides[0] < sides[1] * 0.7  # the small face's crop, then the large face's
    rc, _, err = _run(capsys, "finetune", "--model", tiny_model_file, "--images", two_faces_png, two_faces_png,
                      "--box", small, "--steps", "0", "--out", out, "--device", "cpu")
    assert rc == 2 and "2 images but one box" in err


@pytest.mark.parametrize("command", ["demo", "evaluate"])
def test_cli_demo_and_evaluate_pass_the_box_on(command, monkeypatch, capsys, tmp_path):
    """Plumbing only (the runs themselves are tested elsewhere): --box / --face reach the Python API."""
    import tkh.demo
    import tkh.evaluate

    seen = {}
    if command == "demo":
        monkeypatch.setattr(tkh.demo, "run_demo", lambda **kw: seen.update(kw))
        args = ["demo", "--portrait", "p.jpg", "--box", "1,2,30,40", "--face", "2"]
    else:
        monkeypatch.setattr(tkh.evaluate, "evaluate", lambda *a, **kw: seen.update(kw) or {})
        monkeypatch.setattr("tkh.pretrained.load", lambda *a, **kw: None)
        args = ["evaluate", "--portrait", "p.jpg", "--driver", "d.mp4", "--json", tmp_path / "m.json",
                "--box", "1,2,30,40", "--face", "2", "--device", "cpu"]
    rc, _, err = _run(capsys, *args)
    assert rc == 0, err
    assert seen["box"] == (1, 2, 30, 40) and seen["face"] == 2
