"""tkh.landmarks at its edges: bad inputs, the face-alignment download path (local HTTP server), the CLI."""

from __future__ import annotations

import functools
import http.server
import io
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tkh.errors import BadInputError, ChecksumError, DownloadError, NoFaceError, WeightsUnavailableError
from tkh.landmarks import (
    detect,
    ensure_face_alignment_weights,
    face_alignment_weight_paths,
    reset_backends,
    resolve_backend,
)
from tkh.media import iter_video, read_label

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:tkh.landmarks. backend 'auto'")


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Bad and unusual inputs
# ---------------------------------------------------------------------------------------------
def test_no_face_names_the_file(tmp_path, bikes_path):
    blank = _save(tmp_path / "blank.png", np.full((200, 300, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="blank.png"):
        detect(blank, backend="dlib")
    frame = next(iter_video(bikes_path))  # a real street scene without a face
    with pytest.raises(NoFaceError, match="bikes frame 0"):
        detect(frame, backend="dlib", name="bikes frame 0")
    assert "no face" in str(pytest.raises(NoFaceError, detect, np.zeros((64, 64, 3), np.uint8), backend="dlib").value)


def test_empty_missing_truncated(tmp_path, grace_hopper):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty.jpg.*empty"):
        detect(empty, backend="dlib")
    with pytest.raises(BadInputError, match="not found"):
        detect(tmp_path / "missing.jpg", backend="dlib")
    buf = io.BytesIO()
    Image.fromarray(grace_hopper).save(buf, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(BadInputError, match="truncated.jpg"):
        detect(truncated, backend="dlib")


def test_gray_rgba_16bit_give_the_same_face(tmp_path, grace_hopper):
    ref = detect(grace_hopper, backend="dlib")
    gray = np.asarray(Image.fromarray(grace_hopper).convert("L"))
    rgba = np.dstack([grace_hopper, np.full(grace_hopper.shape[:2], 255, np.uint8)])
    sixteen = (gray.astype(np.uint16) * 257)
    cases = {
        "gray.png": _save(tmp_path / "gray.png", gray),
        "rgba.png": _save(tmp_path / "rgba.png", rgba),
        "gray16.png": _save(tmp_path / "gray16.png", sixteen),
    }
    for name, path in cases.items():
        pts = detect(path, backend="dlib")
        assert np.abs(pts - ref).mean() < 3.0, name
    assert np.abs(detect(sixteen, backend="dlib") - ref).mean() < 3.0  # a 16-bit array directly


def test_unknown_backend():
    with pytest.raises(BadInputError, match="unknown landmark backend"):
        detect(np.zeros((8, 8, 3), np.uint8), backend="mediapipe")


# ---------------------------------------------------------------------------------------------
# face-alignment's weights: download path against a local HTTP server (no internet here)
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def local_server(tmp_path):
    """An http.server on 127.0.0.1 serving tmp_path/www; yields (base_url, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache for this test; tkh's backend choice is forgotten before and after."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TKH_OFFLINE", raising=False)
    monkeypatch.delenv("TKH_FACE_ALIGNMENT_MIRROR", raising=False)
    reset_backends()
    yield tmp_path / "torch" / "hub" / "checkpoints"
    reset_backends()


def test_download_with_wrong_checksum_keeps_nothing_and_falls_back(local_server, torch_home):
    base, www = local_server
    for path in face_alignment_weight_paths():
        (www / path.name).write_bytes(b"these are not the weights you are looking for " * 1000)
    with pytest.raises(ChecksumError, match="checksum"):
        ensure_face_alignment_weights(mirror=base, timeout=5)
    leftovers = list(torch_home.iterdir()) if torch_home.exists() else []
    assert leftovers == [], leftovers  # no partial or mismatching file in torch hub's cache
    with pytest.warns(UserWarning, match="chose dlib.*checksum"):
        assert resolve_backend("auto", device="cpu", mirror=base, timeout=5) == "dlib"
    assert resolve_backend("auto", device="cpu") == "dlib"  # decided once per process and device


def test_download_unreachable_falls_back(local_server, torch_home):
    base, _ = local_server  # serves nothing: 404
    with pytest.raises(DownloadError):
        ensure_face_alignment_weights(mirror=base, timeout=5)
    with pytest.warns(UserWarning, match="chose dlib"):
        assert resolve_backend("auto", device="cpu", mirror=base, timeout=5) == "dlib"


def test_corrupt_cached_weights_are_not_used(torch_home):
    torch_home.mkdir(parents=True)
    for path in face_alignment_weight_paths():
        path.write_bytes(b"corrupt")
    with pytest.warns(UserWarning, match="chose dlib.*sha256"):
        assert resolve_backend("auto", device="cpu", download=False) == "dlib"


def test_explicit_face_alignment_without_weights_is_a_clear_error(torch_home, grace_hopper, tmp_path):
    from tkh.cli import main

    with pytest.raises(WeightsUnavailableError, match="s3fd-619a316812.pth.*backend='dlib'"):
        detect(grace_hopper, backend="face_alignment")
    src = _save(tmp_path / "g.png", grace_hopper)
    assert main(["landmarks", str(src), "--out", str(tmp_path / "g.npz"), "--backend", "face_alignment"]) == 2


def test_offline_env_chooses_dlib_and_detects(torch_home, monkeypatch, grace_hopper):
    monkeypatch.setenv("TKH_OFFLINE", "1")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pts = detect(grace_hopper)  # backend="auto"
        detect(grace_hopper)
    chose = [x for x in w if "chose" in str(x.message)]
    assert len(chose) == 1 and "dlib" in str(chose[0].message)  # said once
    assert pts.shape == (68, 2)


# ---------------------------------------------------------------------------------------------
# CLI: tkh landmarks IMAGE_OR_VIDEO --out FILE.npz [--plot FILE.png]
# ---------------------------------------------------------------------------------------------
def test_cli_image_with_plot(tmp_path, monkeypatch):
    import matplotlib.cbook

    from tkh.cli import main

    monkeypatch.setenv("TKH_OFFLINE", "1")
    src = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    out, plot = tmp_path / "g.npz", tmp_path / "g.png"
    assert main(["landmarks", str(src), "--out", str(out), "--plot", str(plot), "--backend", "dlib"]) == 0
    data = np.load(out)
    assert data["landmarks"].shape == (68, 2) and str(data["backend"]) == "dlib"
    assert str(data["source"]) == str(src) and tuple(data["image_size"]) == (600, 512)
    img = np.asarray(Image.open(plot))
    assert img.shape[0] == 600 and img.shape[1] > 2 * 512  # image | gap | landmark image
    assert read_label(plot) is not None  # labelled synthetic


def test_cli_video(tmp_path, carphone_path, monkeypatch):
    from tkh.cli import main

    monkeypatch.setenv("TKH_OFFLINE", "1")
    out, plot = tmp_path / "v.npz", tmp_path / "v.png"
    assert main(["landmarks", str(carphone_path), "--out", str(out), "--plot", str(plot), "--every", "4",
                 "--backend", "dlib"]) == 0
    data = np.load(out)
    lms, valid = data["landmarks"], data["valid"]
    assert lms.ndim == 3 and lms.shape[1:] == (68, 2) and valid.shape == (len(lms),) and valid.mean() > 0.9
    assert (data["frame_index"] == np.arange(len(lms)) * 4).all() and plot.exists()


def test_cli_user_error_is_one_line(tmp_path):
    blank = _save(tmp_path / "blank.png", np.zeros((100, 100, 3), np.uint8))
    proc = subprocess.run([sys.executable, "-m", "tkh.cli", "landmarks", str(blank), "--out", str(tmp_path / "x.npz"),
                           "--backend", "dlib"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("tkh landmarks: error:") and "blank.png" in lines[0], proc.stderr
    assert not (tmp_path / "x.npz").exists()


def test_cli_gif(tmp_path, carphone_path, monkeypatch):
    """A GIF is read as a video (imageio's ffmpeg plugin refuses .gif; tkh.media reads it with PIL)."""
    from tkh.cli import main
    from tkh.media import write_video

    monkeypatch.setenv("TKH_OFFLINE", "1")
    gif = write_video(tmp_path / "carphone.gif", list(iter_video(carphone_path, every=10)), fps=3)
    out = tmp_path / "gif.npz"
    assert main(["landmarks", str(gif), "--out", str(out), "--backend", "dlib"]) == 0
    data = np.load(out)
    assert data["landmarks"].shape == (12, 68, 2) and data["valid"].mean() > 0.9
    assert float(data["fps"]) == pytest.approx(3.0, rel=0.02) and tuple(data["image_size"]) == (144, 176)
