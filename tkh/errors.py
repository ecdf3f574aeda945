"""Errors a user can cause. Each message is one line: what is wrong, which file, what to do.

The command line prints `str(error)` alone for these (no traceback unless `--debug`); anything else
that escapes is a bug in tkh and is shown with its traceback.
"""

from __future__ import annotations

import errno
import os
import re


class TkhError(Exception):
    """Base class of every error a user can cause (bad input, missing weights, ...)."""


class ConfigError(TkhError, ValueError):
    """A config file or value that tkh cannot use."""


class BadInputError(TkhError, ValueError):
    """An image, video or landmark file that cannot be read or has the wrong shape."""


class NoFaceError(BadInputError):
    """No face was found in an image (the message names the file)."""


class WriteError(TkhError, OSError):
    """An output file (image, video) failed its check after writing; nothing is left under its name."""


class DownloadError(TkhError, OSError):
    """A download failed or its checksum did not match; nothing partial is kept."""


class ChecksumError(DownloadError):
    """A file's sha256 differs from the one it is registered with."""


class CheckpointError(TkhError, ValueError):
    """A checkpoint that is truncated, corrupt or from another config."""


class WeightsUnavailableError(TkhError, FileNotFoundError):
    """Real weights for a network are neither cached nor downloadable."""


class NonFiniteLossError(TkhError, FloatingPointError):
    """A loss became NaN or inf; the last good checkpoint is kept."""


def describe_os_error(exc: BaseException, where: object = "the output") -> str | None:
    """One line for a full disk or an unwritable path, naming the file and what to do; None for other errors.

    Shared by the command line (which adds nothing) and the puppeteer app's status line, so a user reads the
    same words wherever a write fails. Recognises errno values from Python and from safetensors (Rust)."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        match = re.search(r"os error (\d+)", str(exc))  # how safetensors (Rust) reports an errno
        code = int(match.group(1)) if match else None
    where = getattr(exc, "filename", None) or where
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (f"disk full writing {where}; free space (or choose another --out) and run the same command "
                "again (finished work is kept)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where} ({os.strerror(code)}); choose a writable --out folder or fix its permissions"
    if code in (errno.ENOTDIR, errno.EEXIST) and isinstance(exc, OSError):
        return f"{where}: part of this path is a file, not a folder; choose another --out path"
    return None
