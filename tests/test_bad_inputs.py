"""Bad inputs through the real `tkh` command line (issue 6): exit code 2 and ONE line on stderr that names
the file and says what to do, never a traceback. Unusual but valid images (grayscale, RGBA, 16-bit, CMYK,
EXIF-rotated) are handled, not rejected.

The module-level checks of each reader live beside their modules (test_media: bad files and array layouts at
`load_image` level; test_models: truncated checkpoints at `TalkingHeadModel.load` level; test_data: videos
without faces in `preprocess`). Here every case goes through `tkh.cli.main([...])` as a user would call it,
plus two real subprocesses. Disk full is a real tiny tmpfs when this process may mount one (else each writer
fails there as on a full disk: tests/disk_helpers.py), a non-writable folder is a read-only tmpfs (root) or a
chmod-ed folder (non-root). A driving video needs a face in most of its frames (issue 19).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from disk_helpers import full_disk, leftovers, try_mount, umount
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tkh.cli import main
from tkh.errors import BadInputError, NoFaceError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """`auto` landmark backend: never try a download here (dlib is always available offline)."""
    monkeypatch.setenv("TKH_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str]:
    """Run `tkh ARGS` in-process; (exit code, stderr without progress-bar redraws)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [seg.split("\r")[-1] for seg in err.split("\n")]  # tqdm redraws with \r; keep what stays visible
    return rc, "\n".join(line for line in lines if line.strip())


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    """Exit code 2, exactly one `tkh CMD: error: WHAT ...; WHAT TO DO` line, naming `needles`."""
    assert "Traceback" not in err, err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("tkh ") and ": error: " in line, line
    assert ";" in line, f"the message should say what to do after ';': {line}"
    assert len(line) < 400, f"not one clear line ({len(line)} chars): {line}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in: {line}"
    return line


def jpeg_bytes(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hopper_small(grace_hopper) -> np.ndarray:
    """Grace Hopper at 300x256: dlib finds her face in ~0.1 s."""
    return np.asarray(Image.fromarray(grace_hopper).resize((256, 300), Image.LANCZOS))


@pytest.fixture(scope="module")
def hopper_png(tmp_path_factory, hopper_small) -> Path:
    path = tmp_path_factory.mktemp("img") / "hopper.png"
    Image.fromarray(hopper_small).save(path)
    return path


@pytest.fixture(scope="module")
def hopper_lms(hopper_small) -> np.ndarray:
    from tkh.landmarks import detect

    return detect(hopper_small, backend="dlib")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny-config TalkingHeadModel checkpoint (random weights: these tests check plumbing, not quality)."""
    import torch

    from tkh.config import load_config
    from tkh.models import TalkingHeadModel

    torch.manual_seed(0)
    return TalkingHeadModel(load_config("tiny"), num_videos=2).save(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def adapted_file(tiny_ckpt, hopper_small, tmp_path_factory) -> Path:
    """An adapted portrait (FF, one shot) of the tiny checkpoint, as `tkh finetune` writes it."""
    from tkh import pretrained
    from tkh.adapt import adapt

    model = pretrained.load(tiny_ckpt)
    return adapt(model, [hopper_small], mode="ff", progress=False, backend="dlib").save(
        tmp_path_factory.mktemp("adapted") / "hopper.safetensors")


@pytest.fixture
def full_dir(tmp_path, monkeypatch):
    """A folder on a full file system: a small tmpfs filled up, or every writer failing there as on one."""
    with full_disk(tmp_path / "full", monkeypatch) as folder:
        yield folder


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody can write: a read-only tmpfs (root ignores permissions) or a chmod 555 folder."""
    mnt = tmp_path / "readonly"
    if try_mount(mnt, "ro,size=64k"):
        try:
            yield mnt
        finally:
            umount(mnt)
        return
    if os.geteuid() == 0:
        pytest.skip("root without mount rights: no folder is non-writable for this process")
    mnt.mkdir()
    mnt.chmod(0o555)
    yield mnt
    mnt.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def _bad_image(kind: str, folder: Path, img: np.ndarray) -> Path:
    path = folder / {"corrupt": "corrupt.jpg", "empty": "empty.png", "truncated": "truncated.jpg",
                     "huge": "huge.png", "missing": "missing.jpg", "folder": "a_folder.png",
                     "text": "notes.png"}[kind]
    if kind == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))  # a JPEG signature, then noise
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = jpeg_bytes(img)
        path.write_bytes(data[: len(data) // 3])
    elif kind == "huge":
        Image.new("1", (12_000, 9_000)).save(path)  # 108 Mpx, ~14 KB on disk: a decompression bomb
    elif kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("this is a text file with an image's name\n" * 20)
    return path


@pytest.mark.parametrize("kind", ["corrupt", "empty", "truncated", "huge", "missing", "folder", "text"])
def test_bad_image_files(kind, tmp_path, capsys, hopper_small):
    path = _bad_image(kind, tmp_path, hopper_small)
    out = tmp_path / "out.npz"
    rc, err = cli(capsys, "landmarks", path, "--out", out, "--backend", "dlib")
    assert_one_line_error(rc, err, path.name)
    assert not out.exists() and not list(tmp_path.glob("*.part*"))


def test_bad_image_in_finetune_names_it(tmp_path, capsys, tiny_ckpt, hopper_png, hopper_small):
    bad = _bad_image("truncated", tmp_path, hopper_small)
    rc, err = cli(capsys, "finetune", "--model", tiny_ckpt, "--images", hopper_png, bad, "--steps", "0",
                  "--out", tmp_path / "a.safetensors")
    assert_one_line_error(rc, err, bad.name)


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit", "cmyk", "exif"])
def test_unusual_images_are_handled(kind, tmp_path, capsys, hopper_small, hopper_lms):
    """Each variant of the same photo gives the same landmarks as the RGB original (EXIF: upright)."""
    gray = np.asarray(Image.fromarray(hopper_small).convert("L"))
    path = tmp_path / f"hopper_{kind}.{'jpg' if kind in ('cmyk', 'exif') else 'png'}"
    if kind == "gray":
        Image.fromarray(gray).save(path)
    elif kind == "rgba":
        rgba = np.dstack([hopper_small, np.full(hopper_small.shape[:2], 255, np.uint8)])
        rgba[:20, :, 3] = 0  # a transparent band at the top: composited on white
        Image.fromarray(rgba, "RGBA").save(path)
    elif kind == "16bit":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)  # PIL writes mode I;16 PNG
        assert Image.open(path).mode.startswith("I")
    elif kind == "cmyk":
        Image.fromarray(hopper_small).convert("CMYK").save(path, quality=95)
    elif kind == "exif":
        # Stored lying on its side; the EXIF orientation tag (6: rotate 90° CW to view) stands it up.
        sideways = np.ascontiguousarray(np.rot90(hopper_small, k=1))
        exif = Image.Exif()
        exif[0x0112] = 6
        path.write_bytes(jpeg_bytes(sideways, exif=exif.tobytes()))
    out = tmp_path / "lms.npz"
    rc, err = cli(capsys, "landmarks", path, "--out", out, "--backend", "dlib", "--plot", tmp_path / "plot.png")
    assert rc == 0, err
    with np.load(out) as f:
        lms, size = f["landmarks"], tuple(f["image_size"])
    assert size == hopper_small.shape[:2]  # EXIF: the upright (H, W), not the stored sideways one
    err_px = np.linalg.norm(lms - hopper_lms, axis=1).mean()
    assert err_px < 3.0, f"{kind}: landmarks differ from the RGB original's by {err_px:.1f} px on average"
    assert lms[8, 1] > lms[27, 1]  # chin below the nose bridge: right way up


def test_large_photo_under_the_limit_is_handled(tmp_path, capsys, hopper_small, hopper_lms):
    """A 2400x2048 (4.9 Mpx) camera-sized photo: read and detected in full resolution, not refused."""
    import cv2

    big = cv2.resize(hopper_small, None, fx=8, fy=8, interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(big))
    out = tmp_path / "big.npz"
    rc, err = cli(capsys, "landmarks", path, "--out", out, "--backend", "dlib")
    assert rc == 0, err
    with np.load(out) as f:
        lms, size = f["landmarks"], tuple(f["image_size"])
    assert size == (2400, 2048)
    err_px = np.linalg.norm(lms / 8 - hopper_lms, axis=1).mean()
    assert err_px < 3.0, f"landmarks of the 8x photo, scaled back, differ by {err_px:.1f} px on average"


# ---------------------------------------------------------------------------------------------
# videos
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def partial_face_video(tmp_path_factory, carphone_path, bikes_path) -> Path:
    """10 carphone frames (a face), then 10 bikes frames (no face), at carphone's 176x144."""
    import cv2

    from tkh.media import iter_video, write_video

    face = list(iter_video(carphone_path, max_frames=10))
    h, w = face[0].shape[:2]
    bikes = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in iter_video(bikes_path, max_frames=10)]
    return write_video(tmp_path_factory.mktemp("vid") / "half_face.mp4", face + bikes, fps=10)


def test_video_without_frames(tmp_path, capsys):
    import imageio_ffmpeg

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    rc, err = cli(capsys, "landmarks", empty, "--out", tmp_path / "o.npz", "--backend", "dlib")
    assert_one_line_error(rc, err, "empty.mp4")
    audio = tmp_path / "audio_only.mp4"  # a valid mp4 with a sound track and no video stream
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
                    "-t", "0.3", "-c:a", "aac", str(audio)], check=True, capture_output=True)
    rc, err = cli(capsys, "landmarks", audio, "--out", tmp_path / "o.npz", "--backend", "dlib")
    assert_one_line_error(rc, err, "audio_only.mp4")


def test_video_without_a_face(tmp_path, capsys, bikes_path):
    rc, err = cli(capsys, "landmarks", bikes_path, "--out", tmp_path / "o.npz", "--backend", "dlib", "--every", "25")
    assert_one_line_error(rc, err, "bikes.mp4", "no face")
    assert not (tmp_path / "o.npz").exists()


def test_video_with_a_face_in_some_frames(tmp_path, capsys, partial_face_video):
    out, plot = tmp_path / "track.npz", tmp_path / "plot.png"
    rc, err = cli(capsys, "landmarks", partial_face_video, "--out", out, "--plot", plot, "--backend", "dlib")
    assert rc == 0, err
    with np.load(out) as f:
        lms, valid = f["landmarks"], f["valid"]
    assert lms.shape == (20, 68, 2) and valid[:10].sum() >= 8 and not valid[12:].any()
    assert np.isnan(lms[~valid]).all() and np.isfinite(lms[valid]).all()
    assert plot.is_file()


# ---------------------------------------------------------------------------------------------
# landmark tracks (tkh animate --driver x.npz)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["wrong_shape", "no_landmarks_key", "not_npz", "pickled", "missing"])
def test_bad_landmark_track(kind, tmp_path, capsys, adapted_file):
    track = tmp_path / f"{kind}.npz"
    if kind == "wrong_shape":
        np.savez(track, landmarks=np.zeros((10, 5, 2), np.float32))
    elif kind == "no_landmarks_key":
        np.savez(track, points=np.zeros((10, 68, 2), np.float32))
    elif kind == "not_npz":
        track.write_bytes(os.urandom(300))
    elif kind == "pickled":  # an object array: loading it would need pickle, which tkh never allows
        np.savez(track, landmarks=np.array([{"x": 1}], dtype=object))
    out = tmp_path / "out.mp4"
    rc, err = cli(capsys, "animate", "--model", adapted_file, "--driver", track, "--out", out)
    assert_one_line_error(rc, err, track.name)
    assert not out.exists()


def test_driver_video_with_a_face_in_some_frames(tmp_path, capsys, adapted_file, partial_face_video):
    from tkh.media import read_label

    out = tmp_path / "out.gif"
    rc, err = cli(capsys, "animate", "--model", adapted_file, "--driver", partial_face_video, "--out", out)
    assert rc == 0, err
    assert read_label(out)


@pytest.fixture(scope="module")
def gappy_face_video(tmp_path_factory, carphone_path, bikes_path) -> Path:
    """carphone frames 0-11 (a face), 4 bikes frames, carphone 12-23, 4 bikes frames: 24 of 32 with a face."""
    import cv2

    from tkh.media import iter_video, write_video

    face = list(iter_video(carphone_path, max_frames=24))
    h, w = face[0].shape[:2]
    bikes = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in iter_video(bikes_path, max_frames=8)]
    return write_video(tmp_path_factory.mktemp("vid") / "gappy_face.mp4", face[:12] + bikes[:4] + face[12:] + bikes[4:],
                       fps=10)


def test_driver_with_gaps_is_accepted_and_says_what_was_filled_in(tmp_path, capsys, adapted_file, gappy_face_video):
    out = tmp_path / "out.mp4"
    capsys.readouterr()
    rc = main(["animate", "--model", str(adapted_file), "--driver", str(gappy_face_video), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    match = re.search(r"gappy_face.mp4: a face in (\d+) of 32 frames \(\d+%\); (\d+) filled in "
                      r"\((\d+) interpolated, (\d+) held\)", stdout)
    assert match, stdout
    faces, filled, interpolated, held = map(int, match.groups())
    assert 22 <= faces <= 26 and filled == 32 - faces and interpolated >= 3 and held >= 3
    assert "32 frames (video driver)" in stdout
    rc, err = cli(capsys, "animate", "--model", adapted_file, "--driver", gappy_face_video, "--out", tmp_path / "b.mp4",
                  "--min-face-fraction", "0.9")  # the threshold is the user's
    assert_one_line_error(rc, err, "gappy_face.mp4: a face in only", "at least 90%")


def test_a_driver_without_a_face_is_refused(tmp_path, capsys, adapted_file, tiny_ckpt, hopper_png, bikes_path):
    """bikes.mp4: dlib "finds" face-shaped landmarks in 9 of its first 40 frames; no driver for a portrait."""
    out = tmp_path / "out.mp4"
    refused = r"bikes.mp4: a face in only \d+ of 40 frames \(\d+%\).*needs one in at least 50%"
    for args in (
        ["animate", "--model", adapted_file, "--driver", bikes_path, "--out", out, "--max-frames", "40"],
        ["evaluate", "--model", tiny_ckpt, "--portrait", hopper_png, "--driver", bikes_path, "--max-frames", "40",
         "--json", tmp_path / "m.json", "--device", "cpu"],
        ["evaluate", "--model", tiny_ckpt, "--self", "--driver", bikes_path, "--max-frames", "40",
         "--json", tmp_path / "m.json", "--device", "cpu"],
    ):
        rc, err = cli(capsys, *args)
        line = assert_one_line_error(rc, err)
        assert re.search(refused, line), line
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_landmarks_of_a_video_with_few_faces_warns(tmp_path, capsys, bikes_path):
    rc, err = cli(capsys, "landmarks", bikes_path, "--out", tmp_path / "o.npz", "--backend", "dlib", "--every", "5",
                  "--plot", tmp_path / "p.png")
    assert rc == 0, err
    assert re.search(r"warning: bikes.mp4: a face in \d+ of 50 frames \(\d+%\); as a driver", err), err
    with np.load(tmp_path / "o.npz") as f:
        assert f["valid"].mean() < 0.5 and np.isnan(f["landmarks"][~f["valid"]]).all()


# ---------------------------------------------------------------------------------------------
# checkpoints (tkh finetune --model)
# ---------------------------------------------------------------------------------------------
def _bad_checkpoint(kind: str, folder: Path, tiny_ckpt: Path, adapted_file: Path) -> Path:
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from tkh.config import load_config

    path = folder / f"{kind}.safetensors"
    if kind == "truncated":
        data = tiny_ckpt.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "other_config":  # tiny's tensors under small's config: what a mixed-up copy looks like
        with safe_open(str(tiny_ckpt), framework="pt") as f:
            meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        meta["config"] = json.dumps(load_config("small").to_dict())
        save_file(state, str(path), metadata=meta)
    elif kind == "adapted_portrait":  # the output of `tkh finetune` is not a base model
        shutil.copy(adapted_file, path)
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize("kind", ["truncated", "other_config", "adapted_portrait", "garbage", "missing"])
def test_bad_checkpoints(kind, tmp_path, capsys, tiny_ckpt, adapted_file, hopper_png):
    ckpt = _bad_checkpoint(kind, tmp_path, tiny_ckpt, adapted_file)
    out = tmp_path / "a.safetensors"
    rc, err = cli(capsys, "finetune", "--model", ckpt, "--images", hopper_png, "--steps", "0", "--out", out)
    assert_one_line_error(rc, err, ckpt.name)
    assert not out.exists()


def test_pickle_checkpoint_is_never_unpickled(tmp_path, capsys, hopper_png):
    """A `.pt` pickle that would run code when unpickled: refused without running it."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(pickle.dumps({"state_dict": Payload()}))
    rc, err = cli(capsys, "finetune", "--model", ckpt, "--images", hopper_png, "--steps", "0",
                  "--out", tmp_path / "a.safetensors")
    assert_one_line_error(rc, err, "model.pt")
    assert not marker.exists()


def test_portrait_smaller_than_the_model_is_upscaled_with_a_warning(tmp_path, capsys, grace_hopper):
    """A 40-px face for the 128-px model: adapted (the crop is upscaled), with a warning saying so."""
    from tkh.config import load_config
    from tkh.landmarks import detect
    from tkh.models import TalkingHeadModel

    ckpt = TalkingHeadModel(load_config("small")).save(tmp_path / "small.safetensors")
    face_px = np.ptp(detect(grace_hopper, backend="dlib")[:, 0])
    scale = 40 / face_px
    img = Image.fromarray(grace_hopper).resize((round(grace_hopper.shape[1] * scale),
                                                round(grace_hopper.shape[0] * scale)), Image.LANCZOS)
    path = tmp_path / "tiny_face.png"
    img.save(path)
    with pytest.warns(UserWarning, match="upscal"):
        rc, err = cli(capsys, "finetune", "--model", ckpt, "--images", path, "--steps", "0",
                      "--out", tmp_path / "a.safetensors")
    assert rc == 0, err
    assert (tmp_path / "a.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# missing files, full disks, read-only folders
# ---------------------------------------------------------------------------------------------
def test_missing_files_in_every_command(tmp_path, capsys, tiny_ckpt, adapted_file, hopper_png):
    missing = tmp_path / "nowhere" / "missing.mp4"
    cases = [
        ["preprocess", missing, "--out", tmp_path / "cache"],
        ["train", "--config", "tiny", "--data", tmp_path / "no_cache", "--out", tmp_path / "run"],
        ["train", "--config", tmp_path / "no_config.yaml", "--data", tmp_path, "--out", tmp_path / "run"],
        ["finetune", "--model", tiny_ckpt, "--images", tmp_path / "missing.jpg", "--out", tmp_path / "a.safetensors"],
        ["animate", "--model", tmp_path / "missing.safetensors", "--script", "smile", "--out", tmp_path / "o.mp4"],
        ["animate", "--model", adapted_file, "--driver", missing, "--out", tmp_path / "o.mp4"],
    ]
    for args in cases:
        rc, err = cli(capsys, *args)
        name = next(Path(str(a)).name for a in args if "missing" in str(a) or "no_" in str(a))
        assert_one_line_error(rc, err, name)


def _no_partial_files(folder: Path) -> None:
    left = leftovers(folder)
    assert not left, f"partial files left on the full disk: {left}"


def test_disk_full(tmp_path, capsys, full_dir, hopper_png, tiny_ckpt, adapted_file):
    for args in (
        ["landmarks", hopper_png, "--out", full_dir / "lms.npz", "--backend", "dlib"],
        ["landmarks", hopper_png, "--out", tmp_path / "lms.npz", "--plot", full_dir / "plot.png", "--backend", "dlib"],
        ["finetune", "--model", tiny_ckpt, "--images", hopper_png, "--steps", "0", "--out", full_dir / "a.safetensors"],
        ["animate", "--model", adapted_file, "--script", "smile", "--out", full_dir / "smile.gif"],
        ["animate", "--model", adapted_file, "--script", "smile,blink", "--out", full_dir / "x.mp4"],
        ["animate", "--model", adapted_file, "--script", "smile", "--out", tmp_path / "ok.mp4",
         "--also", full_dir / "copy.mp4"],
    ):
        rc, err = cli(capsys, *args)
        target = next(a for a in args if str(full_dir) in str(a))
        assert_one_line_error(rc, err, f"disk full writing {target}")
        _no_partial_files(full_dir)


def test_animate_on_a_nearly_full_disk_says_so_and_keeps_nothing(tmp_path, capsys, monkeypatch, adapted_file):
    """The issue's case: ffmpeg fails writing the trailer of an mp4 that partly fitted; tkh used to report success."""
    with full_disk(tmp_path / "near", monkeypatch, free=48 * 1024) as disk:
        out = disk / "x.mp4"
        capsys.readouterr()
        rc = main(["animate", "--model", str(adapted_file), "--script", "smile,blink,open_mouth", "--out", str(out)])
        captured = capsys.readouterr()
        assert_one_line_error(rc, captured.err.strip(), f"disk full writing {out}")
        assert "->" not in captured.out and leftovers(disk) == []


def test_non_writable_output_folder(tmp_path, capsys, readonly_dir, hopper_png, tiny_ckpt):
    for args in (
        ["landmarks", hopper_png, "--out", readonly_dir / "lms.npz", "--backend", "dlib"],
        ["landmarks", hopper_png, "--out", readonly_dir / "sub" / "lms.npz", "--backend", "dlib"],
        ["finetune", "--model", tiny_ckpt, "--images", hopper_png, "--steps", "0", "--out", readonly_dir / "a.safetensors"],
    ):
        rc, err = cli(capsys, *args)
        assert_one_line_error(rc, err, str(readonly_dir))


def test_output_path_under_a_file(tmp_path, capsys, hopper_png):
    rc, err = cli(capsys, "landmarks", hopper_png, "--out", hopper_png / "lms.npz", "--backend", "dlib")
    assert_one_line_error(rc, err, hopper_png.name)


# ---------------------------------------------------------------------------------------------
# real processes: what a user's terminal shows
# ---------------------------------------------------------------------------------------------
def _tkh(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TKH_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "tkh.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_subprocess_one_line_and_debug_traceback(tmp_path, hopper_small):
    bad = _bad_image("truncated", tmp_path, hopper_small)
    res = _tkh("landmarks", bad, "--out", tmp_path / "o.npz", "--backend", "dlib")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "truncated.jpg" in res.stderr and "Traceback" not in res.stderr
    debug = _tkh("--debug", "landmarks", bad, "--out", tmp_path / "o.npz", "--backend", "dlib")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "BadInputError" in debug.stderr


def test_subprocess_huge_image_prints_no_warning(tmp_path):
    huge = _bad_image("huge", tmp_path, np.zeros((4, 4, 3), np.uint8))
    res = _tkh("landmarks", huge, "--out", tmp_path / "o.npz", "--backend", "dlib")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "huge.png is too large" in res.stderr


# ---------------------------------------------------------------------------------------------
# hypothesis: any array shape / dtype through load_image + detect
# ---------------------------------------------------------------------------------------------
DTYPES = [np.uint8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_, np.int8,
          np.complex64]


@st.composite
def arrays(draw):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 96), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    size = int(np.prod(shape)) if shape else 1
    fill = draw(st.sampled_from(["noise", "zeros", "nan", "huge"]))
    if fill == "noise":
        a = rng.normal(0, 300, size)
    elif fill == "zeros":
        a = np.zeros(size)
    elif fill == "nan":
        a = np.full(size, np.nan)
    else:
        a = np.full(size, 1e300)
    with np.errstate(all="ignore"):
        return a.astype(dtype).reshape(shape)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays())
def test_any_array_gives_an_image_or_a_clear_error(a):
    from tkh.landmarks import detect
    from tkh.media import load_image

    try:
        img = load_image(a, name="generated")
    except BadInputError as exc:
        assert "generated" in str(exc) and "\n" not in str(exc)
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    try:
        detect(img, backend="dlib", name="generated")
    except NoFaceError as exc:
        assert "generated" in str(exc)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a",
                                                  b"II*\x00", b"BM", b"RIFF"]))
def test_any_bytes_give_an_image_or_a_clear_error(data, magic):
    from tkh.media import load_image

    try:
        img = load_image(magic + data, name="bytes")
    except BadInputError as exc:
        assert "bytes" in str(exc) and "\n" not in str(exc)
        return
    assert img.dtype == np.uint8 and img.ndim == 3
