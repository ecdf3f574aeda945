"""Downloads and the cache: every remote file has a registered sha256, is written atomically, and a
partial or mismatching download is never used.

The cache is `$TKH_CACHE` or `~/.cache/tkh`. A registry entry is `name -> RemoteFile(url, sha256)`;
`fetch(name)` returns a verified local path, downloading only when the cached copy is missing.
Downloads to other caches (torch hub's, for face-alignment and VGG19) use `download(url, dest, sha256)`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from tkh.errors import ChecksumError, DownloadError

CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    url: str            # where users online get it
    sha256: str | None  # full hex digest, or None where only a prefix is published (see `sha256_prefix`)
    filename: str       # name in the cache
    sha256_prefix: str = ""  # torch hub style: the first hex digits of the sha256, embedded in the file name
    licence: str = ""   # where the file comes from and under what terms


# Files tkh knows how to fetch. Checksums are of the exact bytes served at the URL.
REGISTRY: dict[str, RemoteFile] = {
    # torchvision's ImageNet VGG19 (the paper's L_CNT network); torch hub verifies the 8-digit prefix.
    "vgg19": RemoteFile(
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        sha256=None,
        sha256_prefix="dcbb9e9d",
        filename="vgg19-dcbb9e9d.pth",
        licence="torchvision model zoo (BSD-3-Clause); ImageNet-trained",
    ),
    # face-alignment's weights, downloaded into torch hub's cache by face-alignment itself.
    "s3fd": RemoteFile(
        url="https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
        sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
        filename="s3fd-619a316812.pth",
        licence="face-alignment (BSD-3-Clause)",
    ),
    "2dfan4": RemoteFile(
        url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip",
        sha256="cd938726adb1f15f361263cce2db9cb820c42585fa8796ec72ce19107f369a46",
        filename="2DFAN4-cd938726ad.zip",
        licence="face-alignment (BSD-3-Clause)",
    ),
    # The Mona Lisa for `tkh demo --portrait mona-lisa` (tkh.portraits). Wikimedia Commons,
    # "File:Mona_Lisa,_by_Leonardo_da_Vinci,_from_C2RMF_retouched.jpg" (public domain). The sha256 is that
    # of the 720x1280 copy the developers used offline (../shared/portraits/mona_lisa.jpg); it could not be
    # checked against the bytes this URL serves, so a mismatch fails verification and tkh falls back.
    "mona-lisa": RemoteFile(
        url="https://upload.wikimedia.org/wikipedia/commons/thumb/e/ec/"
            "Mona_Lisa%2C_by_Leonardo_da_Vinci%2C_from_C2RMF_retouched.jpg/"
            "720px-Mona_Lisa%2C_by_Leonardo_da_Vinci%2C_from_C2RMF_retouched.jpg",
        sha256="84a6bfcb3346951cef85c0b0bb07856794e0b04d5b65322c18d77198fbf43f2a",
        filename="mona_lisa.jpg",
        licence="public domain (Leonardo da Vinci, c. 1503-1519; C2RMF scan), Wikimedia Commons",
    ),
}


OFFLINE_ENV = "TKH_OFFLINE"  # set (to anything) to make every `auto` choice skip downloads that could only time out


def offline() -> bool:
    """True when $TKH_OFFLINE is set: callers that would try a download choose an offline path instead."""
    return bool(os.environ.get(OFFLINE_ENV))


def cache_dir() -> Path:
    """tkh's cache folder: `$TKH_CACHE`, else `~/.cache/tkh`."""
    path = Path(os.environ.get("TKH_CACHE") or Path.home() / ".cache" / "tkh")
    path.mkdir(parents=True, exist_ok=True)
    return path


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder (`$TORCH_HOME/hub/checkpoints`), where face-alignment and VGG19 live."""
    import torch.hub  # lazy: torch costs ~1.2 s to import (python -X importtime) and tkh.hub is torch-free

    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, sha256: str | None = None, prefix: str = "") -> None:
    """Raise ChecksumError unless the file's sha256 matches (in full, or its first digits)."""
    digest = sha256_of(path)
    if (sha256 and digest != sha256.lower()) or (prefix and not digest.startswith(prefix.lower())):
        expected = sha256 or f"{prefix}…"
        raise ChecksumError(
            f"{path}: sha256 {digest[:16]}… does not match the expected {expected[:16]}…; "
            "delete the file and download it again"
        )


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, prefix: str = "",
             timeout: float = 30.0, progress: bool = True) -> Path:
    """Download `url` to `dest` atomically: to a temporary file beside it, verified, then renamed.

    A failed or mismatching download leaves nothing at `dest` (and removes the temporary file).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "tkh (https://github.com/tkh)"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                          disable=not progress, leave=False) as bar:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise DownloadError(f"download of {url} stopped after {out.tell()} of {total} bytes; try again")
        verify(tmp, sha256, prefix)
        os.replace(tmp, dest)
        return dest
    except ChecksumError as exc:
        raise ChecksumError(f"download of {url} failed its checksum ({exc}); the file was not kept") from None
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
        # http.client.HTTPException covers a connection dropped mid-body (IncompleteRead of a chunked
        # response), which is not an OSError and would otherwise escape as a traceback.
        if isinstance(exc, DownloadError):
            raise
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        raise DownloadError(f"could not download {url} ({reason}); check the network or place the file at {dest}") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, url: str | None = None, dest_dir: str | os.PathLike | None = None) -> Path:
    """A registered file as a verified local path; downloads only when it is not cached yet.

    `url` overrides the registered address (a mirror, or a local server in tests); the checksum
    stays the registered one, so a mirror cannot substitute other bytes.
    """
    entry = REGISTRY[name]
    dest = Path(dest_dir) if dest_dir else cache_dir()
    path = dest / entry.filename
    if path.exists():
        verify(path, entry.sha256, entry.sha256_prefix)
        return path
    return download(url or entry.url, path, entry.sha256, entry.sha256_prefix)


def copy_into_cache(src: str | os.PathLike, name: str, dest_dir: str | os.PathLike | None = None) -> Path:
    """Install a file the user downloaded by hand, after checking it is the registered one."""
    entry = REGISTRY[name]
    verify(src, entry.sha256, entry.sha256_prefix)
    dest = Path(dest_dir) if dest_dir else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / (entry.filename + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest / entry.filename)
    return dest / entry.filename
