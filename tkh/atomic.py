"""Files that appear whole or not at all: write to a temporary name beside the target, then rename.

`os.replace` is atomic on POSIX and Windows, so a reader (or a resumed run) sees the old file or the new one,
never half of one; when writing fails (disk full, Ctrl-C) the temporary file is removed and the old file,
if any, is left as it was. An OSError raised on the way names the target, not the temporary file, so that
"disk full writing X" names the file the user asked for.

Images and videos (`tkh.media.write_image` / `write_video`) come through here too; they also read the
temporary file back (frame count, decodability) before it gets the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tkh.errors import TkhError

if TYPE_CHECKING:  # tkh.media writes through here too: importing it must not import torch
    import torch

__all__ = ["atomic_path", "named", "save_safetensors", "write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path in `path`'s folder; on normal exit it is flushed to disk (fsync, so a
    power cut after the rename cannot leave an empty file behind a valid name) and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make shared weights unreadable to others
        os.replace(tmp, path)
    except OSError as exc:
        renamed = named(exc, path, tmp)
        if renamed is exc:
            raise
        raise renamed from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def named(exc: OSError, path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> OSError:
    """`exc`, or the same error naming `path` when it names no file or only the temporary one.

    A failed write() or fsync() (disk full) names no file, PIL names the temporary one, and shutil.copyfile
    names its source (the temporary file is its second name); the command line's one-line message needs the
    file the user asked for. tkh's own errors pass unchanged.
    """
    if isinstance(exc, TkhError) or exc.errno is None:
        return exc
    if exc.filename is not None and (tmp is None or str(tmp) not in (str(exc.filename), str(exc.filename2))):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))  # OSError(errno, ...) picks the subclass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file`, atomically (see the module doc). Returns `path`."""
    from safetensors.torch import save_file  # lazy: it imports torch (~1.2 s); tkh.atomic is torch-free

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = None) -> Path:
    """`json.dump` to `path`, atomically (see the module doc). Returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n")
    return Path(path)
