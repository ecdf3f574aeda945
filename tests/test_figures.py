"""tkh.figures: the comparison grid and the blind user-study grid, on real faces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tkh.errors import BadInputError
from tkh.figures import blind_grid, image_grid


@pytest.fixture(scope="module")
def faces(grace_hopper, astronaut):
    """Three real images per identity: the photo, a darker copy, a mirrored copy (stand-ins for real/FF/FT)."""
    def three(img):
        img = img[:256, :256]
        return {"real": img, "FF": (img * 0.5).astype(np.uint8), "FT": img[:, ::-1].copy()}

    return {"grace-hopper": three(grace_hopper), "astronaut": three(astronaut)}


def test_image_grid_lays_out_rows_columns_labels_and_captions(grace_hopper, astronaut):
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    fig = image_grid([[grace_hopper, astronaut, None], [astronaut, grace_hopper, grace_hopper]],
                     row_labels=["a", "b"], col_labels=["x", "y", "z"],
                     cell_text=[["CSIM 0.9", "", ""], ["", "", "SSIM 0.5"]], title="t")
    axes = fig.get_axes()
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["x", "y", "z"]
    assert axes[0].get_ylabel() == "a" and axes[3].get_ylabel() == "b"
    assert axes[0].get_xlabel() == "CSIM 0.9" and axes[5].get_xlabel() == "SSIM 0.5"
    assert len(axes[2].get_images()) == 0 and len(axes[1].get_images()) == 1  # None leaves the cell empty
    fig.canvas.draw()  # renders headless
    assert plt.get_fignums() == open_before  # no pyplot figure left open


def test_image_grid_rejects_bad_labels(grace_hopper):
    with pytest.raises(BadInputError, match="col_labels"):
        image_grid([[grace_hopper]], col_labels=["a", "b"])
    with pytest.raises(BadInputError, match="no images"):
        image_grid([])


def test_blind_grid_shuffles_reproducibly_and_keeps_every_image(faces):
    grid = blind_grid(faces, seed=3)
    assert grid.identities == ["grace-hopper", "astronaut"] and grid.letters == ["A", "B", "C"]
    for name, order, images in zip(grid.identities, grid.order, grid.images):
        assert sorted(order) == ["FF", "FT", "real"]
        for method, img in zip(order, images):  # the image behind each letter is the method's image
            assert np.array_equal(img, faces[name][method])
    assert blind_grid(faces, seed=3).order == grid.order
    orders = {str(blind_grid(faces, seed=s).order) for s in range(20)}
    assert len(orders) > 1  # different seeds give different shuffles


def test_blind_grid_key_and_score(faces):
    grid = blind_grid(faces, seed=1)
    key = grid.key()
    real = {name: next(k for k, m in key[name].items() if m == "real") for name in key}
    fake = {name: next(k for k, m in key[name].items() if m == "FF") for name in key}
    assert grid.score(real) == 1.0
    assert grid.score(fake) == 0.0
    assert grid.score({"grace-hopper": real["grace-hopper"].lower()}) == 0.5  # a missing pick is wrong
    with pytest.raises(BadInputError, match="not in the grid"):
        grid.score({"mona-lisa": "A"})


def test_the_naive_observer_spots_blurred_fakes(faces):
    import cv2

    rows = {name: {"real": f["real"], "FF": cv2.GaussianBlur(f["real"], (9, 9), 3),
                   "FT": cv2.GaussianBlur(f["real"], (5, 5), 1.5)} for name, f in faces.items()}
    grid = blind_grid(rows, seed=2)
    assert grid.score(grid.sharpest_picks()) == 1.0


def test_blind_grid_figure_hides_then_reveals(faces):
    grid = blind_grid(faces, seed=0)
    hidden = [ax.get_xlabel() for ax in grid.figure().get_axes()]
    shown = [ax.get_xlabel() for ax in grid.figure(reveal=True).get_axes()]
    assert hidden == ["A", "B", "C"] * 2
    assert all(m not in " ".join(hidden) for m in ("real", "FF", "FT"))
    assert shown[:3] == [f"{k} = {m}" for k, m in grid.key()["grace-hopper"].items()]


def test_blind_grid_saves_a_labelled_png_and_the_key(faces, tmp_path):
    from tkh.media import load_image, read_label

    grid = blind_grid(faces, seed=0)
    png, key = grid.save(tmp_path / "study", model="tiny-test", size=64)
    img = load_image(png)
    assert img.shape == (2 * 64 + 4, 3 * 64 + 2 * 4, 3)
    assert "tiny-test" in (read_label(png) or "")
    saved = json.loads(key.read_text())
    assert saved["key"] == grid.key() and saved["rows_top_to_bottom"] == grid.identities


def test_blind_grid_rejects_empty_input():
    with pytest.raises(BadInputError):
        blind_grid({})
    with pytest.raises(BadInputError, match="no images"):
        blind_grid({"x": {}})


def test_score_parts_draws_each_sum_from_its_signed_parts():
    """tkh.figures.score_parts (notebook 02's r = VᵀW_i + Vᵀw0 + b): one bar segment per part and label, positive
    parts stacked up from 0, negative ones down, a marker at each sum; a part of the wrong length is refused."""
    pytest.importorskip("matplotlib")
    from tkh.errors import BadInputError
    from tkh.figures import score_parts

    fig = score_parts({"a": [1.0, -2.0], "b": [0.5, 0.5], "c": [-1.0, 0.25]}, ["x", "y"])
    ax = fig.axes[0]
    bars = [(round(p.get_y(), 6), round(p.get_height(), 6)) for p in ax.patches]
    # (bottom, height) per part, then per label: b stacks on x's +1, x's -1 goes down from 0, y's 0.25 sits on 0.5
    assert bars == [(0.0, 1.0), (0.0, -2.0), (1.0, 0.5), (0.0, 0.5), (0.0, -1.0), (0.5, 0.25)]
    assert [round(v, 6) for v in ax.lines[0].get_ydata()] == [0.5, -1.25]  # the sums
    with pytest.raises(BadInputError):
        score_parts({"a": [1.0]}, ["x", "y"])
