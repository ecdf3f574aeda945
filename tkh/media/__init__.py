"""Reading and writing images and videos, and the "synthetic" label on everything tkh writes.

Everything that enters tkh goes through `load_image` / `iter_video` and comes out as RGB uint8
(H, W, 3), whatever the file held: grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated. Everything
tkh writes goes through `write_image` / `write_video`, which tag the file as synthetic in its
metadata (PNG text chunk, JPEG comment + EXIF, GIF comment, MP4 `comment` tag) so that a reader
(`read_label`) or any metadata viewer can tell it was generated, and which write it atomically and
read it back (see `tkh.media.writers`): a full disk never leaves a truncated file under the name asked for.

The parts, each importable on its own:

- `tkh.media.constants`: the synthetic label (`SYNTHETIC_PREFIX`, `synthetic_label`), `MAX_PIXELS`,
  `VIDEO_SUFFIXES`, `MP4_CRF`, `FULL_DISK_BYTES`;
- `tkh.media.images`: images in (`load_image`, `to_rgb_uint8`, the PIL conversions);
- `tkh.media.videos`: videos in, streamed (`video_info`, `iter_video`, `read_video`, `is_video`, GIFs);
- `tkh.media.writers`: out (`write_image`, `write_video`, `copy_output`, `read_label`, `add_caption`): every
  file is labelled synthetic and appears whole or not at all (temporary file, ffmpeg's exit status and
  error lines, a read-back), see that module's docstring.
"""

from __future__ import annotations

from tkh.media.constants import (
    FULL_DISK_BYTES,
    MAX_PIXELS,
    MP4_CRF,
    SYNTHETIC_PREFIX,
    VIDEO_SUFFIXES,
    synthetic_label,
)
from tkh.media.images import load_image, to_rgb_uint8
from tkh.media.videos import is_video, iter_video, read_video, video_info
from tkh.media.writers import add_caption, copy_output, read_label, write_image, write_video

__all__ = [
    "FULL_DISK_BYTES", "MAX_PIXELS", "MP4_CRF", "SYNTHETIC_PREFIX", "VIDEO_SUFFIXES", "add_caption", "copy_output",
    "is_video", "iter_video", "load_image", "read_label", "read_video", "synthetic_label", "to_rgb_uint8",
    "video_info", "write_image", "write_video",
]
