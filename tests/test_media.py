"""tkh.media: every input layout becomes RGB uint8, every output carries the synthetic label."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tkh.errors import BadInputError
from tkh.media import (
    SYNTHETIC_PREFIX,
    add_caption,
    iter_video,
    load_image,
    read_label,
    read_video,
    to_rgb_uint8,
    write_image,
    write_video,
)


def _save(im: Image.Image, path, **kw):
    im.save(path, **kw)
    return path


def test_grace_hopper_loads_as_rgb_uint8(grace_hopper):
    assert grace_hopper.shape == (600, 512, 3) and grace_hopper.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_every_pil_mode_becomes_rgb(tmp_path, grace_hopper, mode):
    src = Image.fromarray(grace_hopper)
    if mode == "I;16":
        arr16 = (np.asarray(src.convert("L")).astype(np.uint16) * 257)
        im = Image.fromarray(arr16)
        path = _save(im, tmp_path / "x.png")
    else:
        im = src.convert(mode)
        ext = "jpg" if mode == "CMYK" else "png"
        path = _save(im, tmp_path / f"x.{ext}")
    out = load_image(path)
    assert out.shape == (600, 512, 3) and out.dtype == np.uint8
    # grey levels survive: the image is not black or saturated after conversion
    assert 40 < out.mean() < 220


def test_16bit_keeps_its_contrast(tmp_path, grace_hopper):
    grey = np.asarray(Image.fromarray(grace_hopper).convert("L")).astype(np.uint16) * 257
    out = load_image(_save(Image.fromarray(grey), tmp_path / "g16.png"))
    assert np.abs(out[..., 0].astype(int) - grey // 257).max() <= 1


# EXIF orientation tag -> how a viewer shows the stored pixels (the upright image tkh must return)
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],            # mirrored
    3: lambda a: np.rot90(a, 2),        # upside down
    6: lambda a: np.rot90(a, -1),       # rotate 90° clockwise (a phone held upright)
    8: lambda a: np.rot90(a, 1),        # rotate 90° counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied_pixel_for_pixel(tmp_path, grace_hopper, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(grace_hopper), tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    upright = ORIENTATIONS[orientation](grace_hopper)
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright).mean() < 1.5  # JPEG re-encoding only (measured 0.52)


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk_gives_the_same_colours(tmp_path, grace_hopper, ext):
    """PIL's CMYK JPEGs are Adobe-inverted and TIFFs are not: both come back as the RGB original."""
    path = _save(Image.fromarray(grace_hopper).convert("CMYK"), tmp_path / f"cmyk.{ext}",
                 **({"quality": 95} if ext == "jpg" else {}))
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    assert out.shape == grace_hopper.shape
    assert np.abs(out.astype(int) - grace_hopper).mean() < 1.5  # measured 0.34 (jpg), 0 (tif)


def test_rgba_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    assert (to_rgb_uint8(rgba) == 255).all()


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 40), w=st.integers(1, 40),
    channels=st.sampled_from([None, 1, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.bool_, np.int32]),
)
def test_any_array_layout_becomes_rgb_uint8(h, w, channels, dtype):
    shape = (h, w) if channels is None else (h, w, channels)
    rng = np.random.default_rng(0)
    if dtype == np.bool_:
        arr = rng.random(shape) > 0.5
    elif np.issubdtype(dtype, np.floating):
        arr = rng.random(shape).astype(dtype)
    else:
        arr = rng.integers(0, np.iinfo(dtype).max if dtype != np.int32 else 255, shape).astype(dtype)
    out = to_rgb_uint8(arr)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


# (dtype, channels) -> the file formats PIL writes that layout to losslessly
FILE_LAYOUTS = {
    ("uint8", None): ["png", "tif", "bmp"], ("uint8", 3): ["png", "tif", "bmp", "webp_lossless"],
    ("uint8", 4): ["png", "tif"], ("uint16", None): ["png", "tif"], ("float32", None): ["tif"],
    ("bool", None): ["png", "tif", "bmp"],
}


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 48), w=st.integers(1, 48), layout=st.sampled_from(sorted(FILE_LAYOUTS, key=str)),
       pick=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_any_shape_and_dtype_in_a_file_reads_back_as_the_array(tmp_path_factory, h, w, layout, pick, seed):
    """Hypothesis: random sizes and sample types written to real files (PNG, TIFF, BMP, lossless WebP) load as
    RGB uint8 equal to the same array converted in memory: the file path and the array path agree."""
    dtype, channels = layout
    fmt = FILE_LAYOUTS[layout][pick % len(FILE_LAYOUTS[layout])]
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    if dtype == "bool":
        arr = rng.random(shape) > 0.5
    elif dtype == "float32":
        arr = rng.random(shape).astype(np.float32)
    else:
        arr = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    if channels == 4:
        arr[..., 3] = np.where(rng.random((h, w)) > 0.5, 255, 0)  # opaque or transparent: exact compositing
    path = tmp_path_factory.mktemp("hyp") / f"x.{fmt.split('_')[0]}"
    Image.fromarray(arr).save(path, **({"lossless": True} if fmt == "webp_lossless" else {}))
    out = load_image(path)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    expected = to_rgb_uint8(arr)
    assert np.abs(out.astype(int) - expected).max() <= 1, (fmt, layout)


@pytest.mark.parametrize("bad", [np.zeros((5, 5, 5)), np.zeros((2, 2, 2, 2)), np.zeros((0, 4, 3))])
def test_bad_array_shapes_are_one_line_errors(bad):
    with pytest.raises(BadInputError, match="expected an image"):
        to_rgb_uint8(bad)


def test_nan_image_is_rejected():
    with pytest.raises(BadInputError, match="NaN"):
        to_rgb_uint8(np.full((4, 4, 3), np.nan, np.float32))


def test_empty_truncated_and_garbage_files(tmp_path, grace_hopper):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty.jpg is empty"):
        load_image(empty)
    buf = io.BytesIO()
    Image.fromarray(grace_hopper).save(buf, format="JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(BadInputError, match="trunc.jpg is truncated"):
        load_image(trunc)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(BadInputError, match="garbage.png is not a readable image"):
        load_image(garbage)
    with pytest.raises(BadInputError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path):
    import tkh.media as media

    path = tmp_path / "huge.png"
    Image.new("L", (12_000, 9_000)).save(path)  # 108 Mpx, a few KB on disk
    with pytest.raises(BadInputError, match="too large"):
        media.load_image(path)


def test_video_streams_and_reports_bad_files(tmp_path, carphone_path):
    frames = list(iter_video(carphone_path, every=10))
    assert len(frames) == 12 and frames[0].shape == (144, 176, 3)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty"):
        list(iter_video(empty))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(BadInputError, match="corrupt.mp4"):
        list(iter_video(corrupt))


@pytest.mark.parametrize("ext", ["png", "jpg", "gif", "mp4"])
def test_every_output_is_labelled_synthetic(tmp_path, grace_hopper, ext):
    path = tmp_path / f"out.{ext}"
    if ext in ("png", "jpg"):
        write_image(path, grace_hopper, model="unit-test")
    else:
        write_video(path, [grace_hopper] * 3, fps=5, model="unit-test", caption="SYNTHETIC")
    label = read_label(path)
    assert label is not None and label.startswith(SYNTHETIC_PREFIX) and "unit-test" in label
    assert not list(tmp_path.glob("*.part*")), "temporary files are renamed away"


def test_video_round_trip_and_unlabelled_file(tmp_path, grace_hopper, carphone_path):
    path = write_video(tmp_path / "v.mp4", [grace_hopper] * 4, fps=8)
    frames, fps = read_video(path)
    assert frames.shape == (4, 600, 512, 3) and abs(fps - 8) < 1e-6
    assert read_label(carphone_path) is None


def test_gif_reads_back_frame_by_frame(tmp_path, grace_hopper):
    """A GIF is a video for tkh (animate's output, a driver, `tkh landmarks x.gif`): frames, fps, label."""
    small = grace_hopper[:300:2, :256:2]
    frames = [np.roll(small, 5 * i, axis=1) for i in range(5)]
    path = write_video(tmp_path / "clip.gif", frames, fps=5, model="unit-test")
    back, fps = read_video(path)
    assert back.shape == (5, 150, 128, 3) and back.dtype == np.uint8 and fps == pytest.approx(5.0)
    for a, b in zip(back, frames):  # a 256-colour palette per frame: small error (measured 3.8 grey levels)
        assert np.abs(a.astype(int) - b).mean() < 8
    assert len(list(iter_video(path, every=2))) == 3 and len(list(iter_video(path, max_frames=2))) == 2
    assert "unit-test" in read_label(path)
    cut = tmp_path / "cut.gif"
    cut.write_bytes(path.read_bytes()[:3000])  # inside the first frame
    with pytest.raises(BadInputError, match="cut.gif"):
        list(iter_video(cut))
    noise = tmp_path / "noise.gif"
    noise.write_bytes(b"GIF89a" + bytes(range(256)) * 4)
    with pytest.raises(BadInputError, match="noise.gif"):
        list(iter_video(noise))


def test_caption_is_visible(grace_hopper):
    captioned = add_caption(grace_hopper, "SYNTHETIC")
    assert captioned.shape == grace_hopper.shape
    bottom = np.abs(captioned[-40:].astype(int) - grace_hopper[-40:].astype(int)).sum()
    top = np.abs(captioned[:40].astype(int) - grace_hopper[:40].astype(int)).sum()
    assert bottom > 0 and top == 0
