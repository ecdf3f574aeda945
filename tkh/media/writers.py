"""Out: every file tkh writes is labelled synthetic, and appears whole or not at all.

Each writer writes a temporary file beside the target (`tkh.atomic.atomic_path`), checks it (the
encoder's exit status and error lines, then a read-back: the frame count of a video or GIF, a full
decode of an image) and only then renames it. A failure raises OSError naming the target (disk full,
read-only: the command line's one-line message) or `WriteError`, and leaves nothing under the name.
`read_label` reads the label back; `add_caption` burns a visible one into a frame.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageSequence, PngImagePlugin

from tkh.atomic import atomic_path
from tkh.errors import BadInputError, WriteError
from tkh.media.constants import FULL_DISK_BYTES, MP4_CRF, SYNTHETIC_PREFIX, synthetic_label
from tkh.media.images import to_rgb_uint8
from tkh.media.videos import _short

# Errors ffmpeg prints for a file system that refuses the output -> the errno the CLI has a message for
_FFMPEG_OS_ERRORS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                     "Permission denied": errno.EACCES, "Read-only file system": errno.EROFS}


def write_image(path: str | os.PathLike, image: np.ndarray, model: str = "unknown") -> Path:
    """Write PNG or JPEG with the synthetic label in its metadata, atomically and read back; returns the path."""
    path = Path(path)
    label = synthetic_label(model)
    im = Image.fromarray(to_rgb_uint8(image))
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return write_video(path, [np.asarray(im)], fps=1, model=model)
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise BadInputError(f"{path}: unsupported image type {suffix!r}; use .png or .jpg")
    with atomic_path(path, suffix=".part" + suffix) as tmp:
        if suffix == ".png":
            info = PngImagePlugin.PngInfo()
            info.add_text("Description", label)
            info.add_text("Software", "tkh")
            im.save(tmp, format="PNG", pnginfo=info)
        else:
            exif = Image.Exif()
            exif[0x010E] = label  # ImageDescription
            exif[0x0131] = "tkh"  # Software
            im.save(tmp, format="JPEG", quality=95, exif=exif.tobytes(), comment=label.encode())
        _check_image(tmp, path, im.size)
    return path


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    model: str = "unknown",
    caption: str | None = None,
) -> Path:
    """Write mp4 (H.264) or gif, labelled synthetic, atomically and read back; `caption` also burns a visible
    label in. Raises OSError (disk full, ...) or `WriteError` naming `path`, leaving nothing under it."""
    path = Path(path)
    label = synthetic_label(model)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4", ".mov", ".mkv"):
        raise BadInputError(f"{path}: unsupported video type {suffix!r}; use .mp4 or .gif")
    frames = (add_caption(f, caption) if caption else to_rgb_uint8(f) for f in frames)
    if suffix == ".gif":
        # fast octree palette per frame: PIL's default quantizer takes ~1 s per frame on a CPU
        pil = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE) for f in frames]
        if not pil:
            raise BadInputError(f"{path}: no frames to write")
        with atomic_path(path, suffix=".part.gif") as tmp:
            pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:], duration=int(1000 / fps),
                        loop=0, comment=label.encode())
            _check_frames(tmp, path, _gif_frames_written(pil), _count_gif_frames(tmp, path))
        return path
    first = next(frames, None)
    if first is None:
        raise BadInputError(f"{path}: no frames to write")
    with atomic_path(path, suffix=".part" + suffix) as tmp:
        sent = _encode_ffmpeg(tmp, path, itertools.chain([first], frames), fps, label)
        _check_frames(tmp, path, {sent}, _count_video_frames(tmp, path))
    return path


def copy_output(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A copy of a file tkh wrote (one more output of the same animation), atomically and checked by size."""
    src, dst = Path(src), Path(dst)
    with atomic_path(dst, suffix=".part" + dst.suffix.lower()) as tmp:
        shutil.copyfile(src, tmp)
        if tmp.stat().st_size != src.stat().st_size:
            raise _write_error(dst, f"the copy of {src.name} is incomplete")
    return dst


def _write_error(path: Path, reason: str) -> WriteError:
    return WriteError(f"could not write {path} ({reason}); check that its disk has space and works, then run "
                      "the same command again (nothing was left under that name)")


def _bad_readback(tmp: Path, path: Path, reason: str) -> OSError:
    """A written file that does not read back whole: disk full when its disk is (PIL's JPEG encoder, for one,
    truncates silently on a full disk), else `WriteError`."""
    if shutil.disk_usage(tmp.parent).free < FULL_DISK_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return _write_error(path, reason)


def _check_image(tmp: Path, path: Path, size: tuple[int, int]) -> None:
    """Decode the written file whole: a truncated or unreadable image never gets the final name."""
    try:
        with Image.open(tmp) as back:
            back.load()
            got = back.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise _bad_readback(tmp, path, f"the written file does not read back: {_short(exc)}") from None
    if got != size:
        raise _bad_readback(tmp, path, f"it reads back as {got[0]}x{got[1]}, not {size[0]}x{size[1]}")


def _check_frames(tmp: Path, path: Path, expected: set[int], found: int) -> None:
    if found not in expected:
        want = " or ".join(str(n) for n in sorted(expected))
        raise _bad_readback(tmp, path, f"{want} frames were written but the file holds {found}")


def _gif_frames_written(pil: list[Image.Image]) -> set[int]:
    """Frame counts a complete GIF may read back with: PIL merges runs of identical frames into one."""
    runs = 1 + sum(not np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
                   for a, b in zip(pil[:-1], pil[1:]))
    return {runs, len(pil)}


def _count_gif_frames(tmp: Path, path: Path) -> int:
    try:
        with Image.open(tmp) as im:
            n = 0
            for _ in ImageSequence.Iterator(im):  # decodes every frame: a truncated tail fails here
                n += 1
            return n
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _bad_readback(tmp, path, f"the written GIF does not read back: {_short(exc)}") from None


def _ffmpeg_exe() -> str:  # one place, called each time: tests/disk_helpers.py patches it here
    return imageio_ffmpeg.get_ffmpeg_exe()


def _encode_ffmpeg(tmp: Path, path: Path, frames: Iterator[np.ndarray], fps: float, label: str) -> int:
    """Pipe RGB frames into ffmpeg (H.264, yuv420p) writing `tmp`; returns the number of frames sent.

    Both ffmpeg's exit status and its error lines are checked: some versions exit 0 after "Error writing
    trailer: No space left on device", and imageio's writer checked neither (a truncated file was kept).
    """
    frames = (_even(f) for f in frames)
    first = next(frames)
    h, w = first.shape[:2]
    rate = str(Fraction(fps).limit_denominator(1001))
    cmd = [_ffmpeg_exe(), "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", rate, "-i", "-",
           "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(MP4_CRF), "-v", "error",
           "-metadata", f"comment={label}", "-metadata", "encoder=tkh", str(tmp)]
    sent = 0
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty ffmpeg cannot block on a full pipe
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            for f in itertools.chain([first], frames):
                if f.shape[:2] != (h, w):
                    raise BadInputError(f"{path}: frame {sent} is {f.shape[1]}x{f.shape[0]}, the first was {w}x{h}; "
                                        "every frame of a video must have the same size")
                try:
                    proc.stdin.write(np.ascontiguousarray(f).tobytes())
                except BrokenPipeError:
                    break  # ffmpeg has stopped: why is in its log, read below
                sent += 1
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            code = proc.wait()
        except BaseException:  # a failed render or Ctrl-C: stop ffmpeg; atomic_path removes its file
            proc.kill()
            proc.wait()
            raise
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    for phrase, err in _FFMPEG_OS_ERRORS.items():
        if phrase in text:
            raise OSError(err, os.strerror(err), str(path))
    if code != 0:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        raise _write_error(path, f"ffmpeg exit status {code}" + (f": {lines[-1][:160]}" if lines else ""))
    return sent


def _count_video_frames(tmp: Path, path: Path) -> int:
    """Frames in a written video, counted by remuxing it to nothing (no decoding: fast)."""
    res = subprocess.run([_ffmpeg_exe(), "-nostdin", "-i", str(tmp), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
                         capture_output=True, text=True, check=False)
    counts = re.findall(r"frame=\s*(\d+)", res.stderr)
    if res.returncode != 0 or not counts:
        lines = [line.strip() for line in res.stderr.splitlines() if line.strip()]
        raise _bad_readback(tmp, path, "the written video does not read back" +
                            (f": {lines[-1][:160]}" if lines else ""))
    return int(counts[-1])


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 with yuv420p needs even sides."""
    h, w = frame.shape[:2]
    return frame[: h - h % 2, : w - w % 2]


def read_label(path: str | os.PathLike) -> str | None:
    """The synthetic label of a file written by tkh, or None when it has none."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg", ".gif"):
        with Image.open(path) as im:
            candidates = [im.info.get("Description"), im.info.get("comment")]
            exif = im.getexif()
            candidates.append(exif.get(0x010E))
        for c in candidates:
            if isinstance(c, bytes):
                c = c.decode("utf-8", "replace")
            if c and SYNTHETIC_PREFIX in c:
                return c
        return None
    out = subprocess.run([_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                         capture_output=True, text=True, check=False).stdout
    match = re.search(r"^comment=(.*)$", out, re.M)
    value = re.sub(r"\\(.)", r"\1", match.group(1)) if match else ""  # ffmetadata escapes ;=#\
    return value if SYNTHETIC_PREFIX in value else None


def add_caption(frame: np.ndarray, text: str = "SYNTHETIC") -> np.ndarray:
    """Burn a visible label into the bottom-left corner of a frame (white on a dark band)."""
    out = to_rgb_uint8(frame).copy()
    h, w = out.shape[:2]
    scale = max(0.3, w / 640)
    thick = max(1, int(round(scale * 1.5)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(2, int(4 * scale))
    y0 = h - th - base - 2 * pad
    out[max(0, y0):, : min(w, tw + 2 * pad)] = (out[max(0, y0):, : min(w, tw + 2 * pad)] * 0.35).astype(np.uint8)
    cv2.putText(out, text, (pad, h - base - pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
