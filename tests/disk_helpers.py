"""Folders where writing fails the way a full disk fails, for the tests of what tkh then does (issues 6, 19).

`nearly_full(folder, free)` mounts a small tmpfs there with `free` bytes left, when this process may mount
one (root with mount(8), as in CI); elsewhere (a user's machine) `inject_disk_full(monkeypatch, folder)`
makes each writer fail there as it does on a full disk:

- ffmpeg is replaced by a stand-in that writes part of the file, prints "Error writing trailer: No space
  left on device" and exits 0 (what some ffmpeg versions do, and what imageio's writer took for success);
- PIL's `Image.save` writes part of the file, then raises ENOSPC;
- `os.replace` into the folder (the last step of every atomic write: safetensors, npz, JSON) raises ENOSPC.

TKH_TEST_NO_MOUNT=1 takes the second way where a mount would work (to test it as a user's machine runs it).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILLER = "filler"


def try_mount(path: Path, options: str) -> bool:
    """Mount a tmpfs at `path` with mount(8) options; False where this process may not."""
    if os.environ.get("TKH_TEST_NO_MOUNT") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def nearly_full(path: Path, free: int = 0, size_kib: int = 256) -> Iterator[bool]:
    """A tmpfs of `size_kib` KiB at `path` filled (file FILLER) until about `free` bytes are left.
    Yields False (and mounts nothing) where no tmpfs can be mounted."""
    if not try_mount(path, f"size={size_kib}k"):
        path.mkdir(parents=True, exist_ok=True)
        yield False
        return
    try:
        fd = os.open(path / FILLER, os.O_WRONLY | os.O_CREAT)
        try:
            left = shutil.disk_usage(path).free - free
            while left > 0:
                left -= os.write(fd, b"\0" * min(4096, left))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield True
    finally:
        umount(path)


FAKE_FFMPEG = '''#!{python}
import os, sys
real, folder = {real!r}, {folder!r}
out = sys.argv[-1]
if not out.startswith(folder):  # reading, or writing elsewhere: the real ffmpeg
    os.execv(real, [real] + sys.argv[1:])
sys.stdin.buffer.read(1 << 16)
with open(out, "wb") as f:
    f.write(b"\\0" * 1000)  # a truncated file
sys.stderr.write("[out#0/mp4] Error writing trailer: No space left on device\\n")
sys.exit(0)
'''


def fake_ffmpeg(monkeypatch, folder: Path, script: str = FAKE_FFMPEG) -> Path:
    """Make tkh.media run `script` (formatted with python, real, folder) instead of ffmpeg.

    Patched in `tkh.media.writers`, the module whose functions look `_ffmpeg_exe` up when they run."""
    import imageio_ffmpeg

    import tkh.media.writers

    exe = folder.parent / f"fake_ffmpeg_{folder.name}"
    exe.write_text(script.format(python=sys.executable, real=imageio_ffmpeg.get_ffmpeg_exe(), folder=str(folder)))
    exe.chmod(0o755)
    monkeypatch.setattr(tkh.media.writers, "_ffmpeg_exe", lambda: str(exe))
    return exe


def inject_disk_full(monkeypatch, folder: Path) -> None:
    """Every writer fails in `folder` as on a full disk (see the module docstring)."""
    from PIL import Image

    fake_ffmpeg(monkeypatch, folder)
    real_save, real_replace = Image.Image.save, os.replace

    def save(self, fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)) and str(fp).startswith(str(folder)):
            Path(fp).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write() names no file
        return real_save(self, fp, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(folder)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    monkeypatch.setattr(os, "replace", replace)


@contextmanager
def full_disk(path: Path, monkeypatch, free: int = 0) -> Iterator[Path]:
    """`nearly_full` where a tmpfs can be mounted, else `inject_disk_full`: a folder where writes fail."""
    with nearly_full(path, free) as mounted:
        if not mounted:
            inject_disk_full(monkeypatch, path)
        yield path


def leftovers(folder: Path) -> list[str]:
    """Files in `folder` other than the filler (what a failed write must not leave)."""
    return sorted(p.name for p in folder.iterdir() if p.name != FILLER)
