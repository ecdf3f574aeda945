"""Named portraits for demos and notebooks: Grace Hopper (offline) and the Mona Lisa (downloaded, verified).

- ``"grace-hopper"``: the photograph of Grace Hopper shipped with matplotlib's sample data (public
  domain, U.S. Navy); always available offline, so it is `tkh demo`'s default.
- ``"mona-lisa"``: Leonardo's painting, the paper's famous one-shot example (Zakharov et al. 2019,
  fig. 1/8). Downloaded once from Wikimedia Commons into tkh's cache (`tkh.hub.fetch("mona-lisa")`):
  written atomically and verified against the sha256 registered in `tkh.hub.REGISTRY`. When the download
  or the checksum fails, `load_portrait` says why in one line and falls back to `fallback` (Grace Hopper,
  or a painting path you give).
- anything else: a path to an image file.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tkh.errors import DownloadError
from tkh.hub import REGISTRY, fetch
from tkh.media import load_image

__all__ = ["NAMES", "Portrait", "load_portrait"]

NAMES = ("grace-hopper", "mona-lisa")


@dataclass
class Portrait:
    """An image and where it came from."""

    image: np.ndarray          # RGB uint8 (H, W, 3)
    name: str                  # "grace-hopper", "mona-lisa" or the file name
    source: str                # a path or URL
    credit: str                # who made it, licence
    fallback_reason: str = ""  # why another portrait was used than the one asked for ("" when none)


def _grace_hopper() -> Portrait:
    import matplotlib.cbook  # lazy: 0.22 s to import (python -X importtime), only for this sample portrait

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        image = load_image(f, name="grace_hopper.jpg")
    return Portrait(image, "grace-hopper", "matplotlib sample data: grace_hopper.jpg",
                    "Grace Hopper, U.S. Navy photograph (public domain), via matplotlib's sample data")


def load_portrait(name_or_path: str | os.PathLike | np.ndarray = "grace-hopper", url: str | None = None,
                  fallback: str | os.PathLike | None = "grace-hopper", cache: str | os.PathLike | None = None
                  ) -> Portrait:
    """A portrait by name ("grace-hopper", "mona-lisa"), path or array.

    url: another address for the Mona Lisa (a mirror; the registered checksum still applies).
    fallback: what to use when the Mona Lisa cannot be downloaded or verified ("grace-hopper", a path, or
    None to raise the DownloadError). cache: folder to keep the download in (default: tkh's cache).
    """
    if isinstance(name_or_path, np.ndarray):
        return Portrait(load_image(name_or_path), "array", "array", "user-supplied image")
    key = str(name_or_path)
    if key == "grace-hopper":
        return _grace_hopper()
    if key == "mona-lisa":
        entry = REGISTRY["mona-lisa"]
        try:
            path = fetch("mona-lisa", url=url, dest_dir=cache)
            return Portrait(load_image(path), "mona-lisa", entry.url, entry.licence)
        except DownloadError as exc:  # ChecksumError is a DownloadError
            reason = (f"could not get the Mona Lisa ({exc}); pass --portrait PATH to use your own copy"
                      + (f"; using {fallback} instead" if fallback is not None else ""))
            if fallback is None:
                raise DownloadError(reason) from None
            warnings.warn(reason, stacklevel=2)
            out = load_portrait(fallback, fallback=None)
            out.fallback_reason = reason
            return out
    path = Path(key)
    return Portrait(load_image(path), path.name, str(path), "user-supplied image")
