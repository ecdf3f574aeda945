"""Outputs a user can trust (issue 19): every image and video tkh writes appears whole or not at all.

`tkh.media.write_image` / `write_video` are the only writers (animate, demo, the puppeteer's export, figures
and training samples all go through them). On a nearly full disk each kind (png, jpg, gif, mp4) raises the
disk-full OSError naming the file and leaves nothing behind; an ffmpeg that exits 0 after "Error writing
trailer: No space left on device" (imageio's writer took that for success) or writes fewer frames than it
was given is caught by the exit-status / error-line check and the frame-count read-back. The command-line
cases (`tkh animate --out FULL/x.mp4`, one line, exit 2) are in test_bad_inputs.py.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
from disk_helpers import fake_ffmpeg, full_disk, leftovers
from test_puppet import puppet, tiny_model_path  # noqa: F401,I001  (shared fixtures)

from tkh.errors import WriteError
from tkh.media import read_label, read_video, write_image, write_video

KINDS = ["png", "jpg", "gif", "mp4"]


def noise_frames(n: int = 12, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Incompressible frames: even a few of them do not fit in the space left."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def write(kind: str, path, frames: list[np.ndarray]):
    if kind in ("png", "jpg"):
        return write_image(path, np.concatenate(frames[:4], axis=1), model="test")
    return write_video(path, frames, fps=12, model="test")


@pytest.mark.parametrize("kind", KINDS)
def test_a_write_to_a_nearly_full_disk_raises_disk_full_and_leaves_nothing(kind, tmp_path, monkeypatch):
    with full_disk(tmp_path / "disk", monkeypatch, free=24 * 1024) as disk:
        target = disk / f"out.{kind}"
        with pytest.raises(OSError) as info:
            write(kind, target, noise_frames())
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
        assert leftovers(disk) == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_reads_back_whole_and_labelled(kind, tmp_path):
    frames = noise_frames(n=5)
    path = write(kind, tmp_path / f"ok.{kind}", frames)
    assert read_label(path) and [p.name for p in tmp_path.iterdir()] == [path.name]
    if kind in ("gif", "mp4"):
        assert len(read_video(path)[0]) == 5


def test_ffmpeg_exiting_0_after_a_trailer_error_is_disk_full_and_the_old_file_stays(tmp_path, monkeypatch):
    """The issue's case: "Error writing trailer: No space left on device", exit status 0, a truncated file."""
    target = tmp_path / "x.mp4"
    write_video(target, noise_frames(n=3), fps=12)
    before = target.read_bytes()
    fake_ffmpeg(monkeypatch, tmp_path)
    with pytest.raises(OSError) as info:
        write_video(target, noise_frames(n=48), fps=12)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_bytes() == before and leftovers(tmp_path) == ["x.mp4"]


DROP_FRAMES = '''#!{python}
import os, sys
real = {real!r}
args = sys.argv[1:]
if args[-1].startswith({folder!r}):  # the encoder: keep 2 frames, exit 0 (a silent short write)
    args = args[:-1] + ["-frames:v", "2", args[-1]]
os.execv(real, [real] + args)
'''


def test_a_video_with_fewer_frames_than_written_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    fake_ffmpeg(monkeypatch, out, DROP_FRAMES)
    with pytest.raises(WriteError, match=r"12 frames were written but the file holds 2"):
        write_video(out / "short.mp4", noise_frames(n=12), fps=12)
    assert leftovers(out) == []


@pytest.mark.parametrize("kind", ["png", "gif"])
def test_a_file_that_does_not_read_back_is_refused(kind, tmp_path, monkeypatch):
    from PIL import Image

    def broken_save(self, fp, *args, **kwargs):  # "succeeds" but leaves garbage
        with open(fp, "wb") as f:
            f.write(b"GIF89a" if kind == "gif" else b"\x89PNG\r\n\x1a\n" + b"\0" * 50)

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(WriteError, match="does not read back") as info:
        write(kind, tmp_path / f"bad.{kind}", noise_frames(n=3))
    line = str(info.value)
    assert "\n" not in line and f"bad.{kind}" in line and "; " in line
    assert list(tmp_path.iterdir()) == []


def test_the_puppeteer_export_on_a_full_disk(puppet, tmp_path, monkeypatch):  # noqa: F811
    from tkh.puppet import keyframes

    with full_disk(tmp_path / "disk", monkeypatch) as disk:
        with pytest.raises(OSError) as info:
            puppet.export(disk / "puppet.mp4", keyframes({}, {"jaw_open": 0.6}, frames_per_key=4))
        assert info.value.errno == errno.ENOSPC and leftovers(disk) == []


def test_the_puppeteer_apps_export_says_disk_full_in_the_cli_words(puppet, tmp_path, monkeypatch):  # noqa: F811
    """The app's status line reads like `tkh finetune`'s one-line error, not a raw '[Errno 28] …'."""
    pytest.importorskip("ipywidgets")
    from tkh.widgets import PuppetApp

    app = PuppetApp(puppet, display_size=96)
    try:
        app.record_button.value = True
        app.set_controls(jaw_open=0.5)
        with full_disk(tmp_path / "disk", monkeypatch) as disk:
            assert app.export(disk / "take.mp4") is None
            assert app.status.value.startswith("export failed: disk full writing") and "Errno" not in app.status.value
            assert leftovers(disk) == []
    finally:
        app.close()


def test_a_figure_on_a_full_disk(grace_hopper, tmp_path, monkeypatch):
    from tkh.figures import blind_grid

    grid = blind_grid({"hopper": {"real": grace_hopper, "FF": grace_hopper[::-1]}})
    with full_disk(tmp_path / "disk", monkeypatch) as disk:
        with pytest.raises(OSError) as info:
            grid.save(disk, size=160)
        assert info.value.errno == errno.ENOSPC and "grid.png" in str(info.value.filename)
        assert "grid.png" not in leftovers(disk) and "answer_key.json" not in leftovers(disk)
