"""tkh.notebook (the notebooks' one-call set-up and exercise checks) and tkh.architecture (block shapes, drawing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED

from tkh import notebook
from tkh.architecture import draw, format_trace, trace, trace_config
from tkh.config import load_config
from tkh.errors import BadInputError


def test_check_says_not_attempted_correct_or_not_yet(capsys):
    notebook.check("n", None, 3, hint="h")
    notebook.check("n", 3, 3)
    notebook.check("n", 4, 3, hint="h")
    notebook.check("t", torch.ones(2), torch.ones(2) + 1e-6)
    notebook.check("a", np.zeros(3), np.zeros(4))  # shapes differ: wrong, not an exception
    notebook.check("s", {1, 2}, {1, 2})
    notebook.check("f", "x", test=lambda a: a.missing)  # a learner's error explains itself
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "· n: not attempted yet (hint: h)"
    assert lines[1] == "✓ n: correct" and lines[2] == "✗ n: not yet (hint: h)"
    assert lines[3].startswith("✓") and lines[4].startswith("✗") and lines[5].startswith("✓")
    assert lines[6].startswith("✗ f: not yet (hint: AttributeError")


def test_to_image_maps_minus_one_one_to_unit_range():
    img = notebook.to_image(torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 2, 2)[None])
    assert img.shape == (2, 2, 3) and np.allclose(img[0, 0], [0, 0.5, 1])
    with pytest.raises(BadInputError, match="expected a"):
        notebook.to_image(torch.zeros(4, 2, 2))


def test_held_out_clips_follow_the_shipped_manifest(monkeypatch):
    """With ../shared/ the held-out clips are the manifest's train.holdout ones (never a training clip);
    hidden (TKH_SHARED=none) there are none and the notebooks fall back to other inputs."""
    from tkh import pretrained

    if not (SHARED / "talking-heads").is_dir() or not pretrained.available():
        pytest.skip("needs ../shared/talking-heads and the shipped weights")
    monkeypatch.setenv("TKH_SHARED", str(SHARED))
    stems = [c.stem for c in notebook.held_out_clips()]
    assert stems[:2] == ["lp_d5", "grid_swiz3n"] and {"vox_lia_1", "vox_lia_2"} <= set(stems)
    trained = pretrained.info().get("training", {}).get("split", {}).get("train", [])
    assert not set(stems) & set(trained), "a held-out clip the shipped weights trained on"
    assert notebook.held_out_clip("vox_lia_1").stem == "vox_lia_1"
    assert notebook.paintings()[0].name == "mona_lisa.jpg"
    monkeypatch.setenv("TKH_SHARED", "none")
    assert notebook.shared_dir() is None and notebook.held_out_clips() == [] and notebook.paintings() == []


def test_setup_is_a_no_op_outside_colab(monkeypatch):
    monkeypatch.delenv("TKH_PRETRAINED", raising=False)
    assert notebook.setup(widgets=True) is None
    assert "TKH_PRETRAINED" not in __import__("os").environ


def test_trace_lists_every_block_with_the_papers_description():
    from tkh.models import TalkingHeadModel

    cfg = load_config("tiny")
    torch.manual_seed(0)
    m = TalkingHeadModel(cfg, num_videos=2).eval()
    s, n = cfg.model.image_size, cfg.model.embed_dim
    x = torch.zeros(1, 3, s, s)
    g = trace(m.G, x, torch.zeros(1, n))
    kinds = [b.kind for b in g]
    assert kinds.count("ResBlock") == cfg.model.gen_res_blocks and kinds[-1] == "AdaIN"
    assert g[-1].shape == (cfg.model.base_channels, s, s) and "AdaIN" in g[-1].note
    d = trace(m.D, x, x, torch.zeros(1, dtype=torch.long))
    assert d[-1].name == "last" and d[-1].shape[1:] == (4, 4) and "D only" in d[-1].note
    assert "paper (sec. 3.4)" in format_trace(g).splitlines()[0]
    assert not any(h for mod in m.G.modules() for h in mod._forward_hooks.values())  # hooks removed


def test_trace_config_gives_the_papers_shapes_without_memory():
    paper = trace_config(load_config("paper-256"))
    res = [b.shape for b in paper["G"] if b.kind == "ResBlock"]
    assert res == [(512, 16, 16)] * 5  # the paper's "5 residual blocks at 512x16x16"
    assert paper["E"][-1].shape == (512, 4, 4)
    fig = draw(paper, inputs={"E": (6, 256, 256)}, outputs={"E": "ê"})
    assert len(fig.axes) == 3
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_landmark_sliders_build_one_slider_per_control(grace_hopper):
    pytest.importorskip("ipywidgets")
    from tkh.widgets import SLIDERS, landmark_sliders

    points = np.random.default_rng(0).uniform(20, 40, (68, 2)).astype(np.float32)
    ui = landmark_sliders(points, 64)
    assert [w.description for w in ui.children[:-1]] == [label for label, *_ in SLIDERS.values()]


def test_same_pose_rows_redraw_the_first_crop():
    from tkh.figures import same_pose

    class Fake:
        def __init__(self, value):
            self.crops = np.zeros((1, 4, 4, 3), np.uint8)
            self.crop_landmarks = np.zeros((1, 68, 2), np.float32)
            self.value = value

        def render(self, landmarks):
            return np.full((4, 4, 3), self.value, np.uint8)

    row = same_pose({"ff": Fake(1), "ft": Fake(2)})
    assert list(row) == ["real", "FF", "FT"] and row["FT"][0, 0, 0] == 2
