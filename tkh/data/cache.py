"""The preprocessed cache on disk: its layout, its index, and reading it back.

Layout of a cache folder (written by `tkh.data.preprocess`)::

    CACHE/
      index.json            config used + one entry per video (written atomically, sorted by id)
      .lock                 held (flock) while a `tkh preprocess` writes here
      videos/<dir>/         one folder per finished video, renamed into place when complete
        frames.npy          uint8 (F, S, S, 3): the F kept face crops, RGB, S = config size
        landmarks.npz       landmarks (F, 68, 2) float32 in crop pixels; source_landmarks (F, 68, 2)
                            in the source frame's pixels; frame_index (F,) int64 in the source;
                            boxes (F, 3) int64 (x0, y0, side) crop windows in the source; source_size (2,) (H, W)
        meta.json           the video's index entry (so a folder alone is enough to resume)
      videos/.tmp-*         a video being written (ignored by readers; removed by the next run)

Why ``.npy`` and not JPEG files: `np.load(..., mmap_mode="r")` reads one frame of an episode without
decoding anything or reading the others (random access in microseconds), the pixels are exactly the
ones `tkh.landmarks.crop` produced (no second lossy compression between the training crop and the
inference crop), and the cache holds crops of real videos, which must not carry tkh's "synthetic"
label that every image tkh writes gets. The cost is disk: S²·3·F bytes per video (128 px, 48 frames:
2.4 MB; 256 px, 32 frames: 6.3 MB), about 10x a JPEG cache — fine for the shipped clips and for a
few thousand VoxCeleb videos; for all of VoxCeleb2 use fewer frames per video or a subset.

`index.json` schema (version 1)::

    {"format": "tkh-cache", "version": 1,
     "config": {"size": 128, "frames_per_video": 48, "backend": "dlib", "margin": 0.35, "shift": 0.12,
                "min_frames": 2, "min_face_fraction": 0.25, "group_clips": true, "storage": "npy"},
     "videos": [{"id": "lp_d5", "source": "/abs/path/lp_d5.mp4", "identity": "lp_d5", "kind": "video",
                 "dir": "videos/lp_d5-1a2b3c4d", "status": "ok", "n_frames": 47, "n_sampled": 48,
                 "reason": null, "seconds": 3.1}, ...]}
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tkh.errors import BadInputError, ConfigError, TkhError

INDEX = "index.json"
VIDEOS = "videos"
TMP_PREFIX = ".tmp-"
FORMAT = "tkh-cache"
VERSION = 1
# keys of the config that must match to add videos to an existing cache (anything else would mix crops)
CONFIG_KEYS = ("size", "frames_per_video", "backend", "margin", "shift", "group_clips", "storage")
CONFIG_DEFAULTS = {"group_clips": True}  # for keys added after a cache was written


def video_dirname(video_id: str) -> str:
    """Folder name of a video in the cache: a readable part of the id + 8 hex digits of its sha1 (unique)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", video_id.replace("/", "__"))[-80:].lstrip(".") or "video"
    return f"{readable}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------
# Atomic writes and the writer lock
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold CACHE/.lock (flock) while writing: a second `tkh preprocess` into the same cache is refused.

    The kernel drops the lock when the process dies (even by SIGKILL), so a killed run never
    leaves a stale lock behind.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one writer per cache is then the user's job
        yield
        return
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TkhError(f"{root}: another `tkh preprocess` is writing into this cache; wait for it to "
                           "finish or pass another --out") from None
        yield
    finally:
        os.close(fd)


def clean_temp_dirs(root: Path) -> int:
    """Remove half-written videos left by a killed run (call only while holding the writer lock)."""
    n = 0
    vdir = root / VIDEOS
    if vdir.is_dir():
        for p in vdir.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    # index writes killed mid-way (tkh.atomic's "<name>.*.tmp"; "*.part" from caches of earlier versions)
    for p in [*root.glob(f"{INDEX}.*.tmp"), *root.glob(f"{INDEX}.*.part")]:
        p.unlink(missing_ok=True)
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------
def read_index(root: Path) -> dict[str, Any] | None:
    """The parsed index.json, or None when the folder has none."""
    path = root / INDEX
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path} is not a readable tkh cache index ({exc}); delete the cache and run "
                            "`tkh preprocess` again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadInputError(f"{path} is not a tkh cache index; pass a folder written by `tkh preprocess`")
    if data.get("version") != VERSION:
        raise BadInputError(f"{path}: cache format version {data.get('version')}, this tkh reads version "
                            f"{VERSION}; run `tkh preprocess` into a new folder")
    return data


def check_config(root: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse to add videos made with another size/backend/... to a cache (ConfigError, one line)."""
    def get(cfg: dict[str, Any], k: str) -> Any:
        return cfg.get(k, CONFIG_DEFAULTS.get(k))

    diffs = [f"{k}={get(existing, k)!r} (asked {get(wanted, k)!r})" for k in CONFIG_KEYS
             if get(existing, k) != get(wanted, k)]
    if diffs:
        raise ConfigError(f"{root} was preprocessed with {', '.join(diffs)}; use the same settings to "
                          "continue it, or pass another --out for a new cache")


def new_index(config: dict[str, Any], videos: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "config": dict(config),
            "videos": sorted(videos, key=lambda v: v["id"])}


# ---------------------------------------------------------------------------------------------
# Reading a cache back
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoEntry:
    """One video of a cache (an index.json entry)."""

    id: str  # stable unique id (see tkh.data.sources)
    identity: str  # the person (VoxCeleb id*, else the id); used by holdout splits
    source: str  # where it was read from
    dir: str  # folder relative to the cache root ("" when skipped)
    status: str  # "ok" or "skipped"
    n_frames: int  # frames kept (faces found), 0 when skipped
    reason: str | None = None  # why it was skipped


@dataclass(frozen=True)
class CacheInfo:
    """What a cache holds: its config and its videos (ok ones sorted by id, then the skipped ones)."""

    root: Path  # the cache folder
    size: int  # side S of the square crops, pixels
    frames_per_video: int  # frames sampled per video (fewer are kept where no face was found)
    backend: str  # landmark backend that produced the landmarks
    config: dict[str, Any]  # the full config stored in index.json
    videos: tuple[VideoEntry, ...]  # usable videos, sorted by id
    skipped: tuple[VideoEntry, ...] = field(default=())  # videos that were skipped, with reasons

    @property
    def num_videos(self) -> int:
        return len(self.videos)

    @property
    def num_frames(self) -> int:
        return sum(v.n_frames for v in self.videos)

    @property
    def video_ids(self) -> list[str]:
        return [v.id for v in self.videos]

    @property
    def identities(self) -> list[str]:
        return sorted({v.identity for v in self.videos})

    def __str__(self) -> str:
        return (f"tkh cache {self.root}: {self.num_videos} videos ({len(self.identities)} identities), "
                f"{self.num_frames} frames of {self.size}x{self.size} px, landmarks by {self.backend}, "
                f"{len(self.skipped)} skipped")


def load_cache_index(cache: str | os.PathLike | CacheInfo) -> CacheInfo:
    """The CacheInfo of a cache folder written by `tkh preprocess` (BadInputError if it is not one)."""
    if isinstance(cache, CacheInfo):
        return cache
    root = Path(cache)
    data = read_index(root) if root.is_dir() else None
    if data is None:
        raise BadInputError(f"{root} is not a tkh cache (no {INDEX}); make one with "
                            f"`tkh preprocess VIDEOS --out {root}`")
    cfg = data["config"]
    ok, skipped = [], []
    for v in data.get("videos", []):
        entry = VideoEntry(id=v["id"], identity=v.get("identity", v["id"]), source=v.get("source", ""),
                           dir=v.get("dir", ""), status=v.get("status", "skipped"), n_frames=int(v.get("n_frames", 0)),
                           reason=v.get("reason"))
        (ok if entry.status == "ok" and entry.n_frames > 0 else skipped).append(entry)
    return CacheInfo(root=root, size=int(cfg["size"]), frames_per_video=int(cfg["frames_per_video"]),
                     backend=str(cfg["backend"]), config=dict(cfg), videos=tuple(sorted(ok, key=lambda e: e.id)),
                     skipped=tuple(sorted(skipped, key=lambda e: e.id)))


def _matches(entry: VideoEntry, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(entry.identity, p) or fnmatch.fnmatchcase(entry.id, p) for p in patterns)


def split_identities(cache: str | os.PathLike | CacheInfo, holdout: Iterable[str]) -> tuple[list[str], list[str]]:
    """(train video ids, held-out video ids): every video of a held-out identity goes to the second list.

    holdout: identities or video ids, shell patterns allowed (``"id1000*"``, ``"grid_*"``). Splitting by
    identity, not by video, keeps the people used for evaluation (paper Sec. 4: few-shot on unseen
    people) out of meta-training. A pattern that matches nothing raises BadInputError (a typo would
    otherwise silently leak the evaluation people into training).
    """
    info = load_cache_index(cache)
    patterns = [holdout] if isinstance(holdout, str) else list(holdout)
    for p in patterns:
        if not any(_matches(v, [p]) for v in info.videos):
            raise BadInputError(f"holdout {p!r} matches no identity or video id in {info.root}; "
                                f"identities are e.g. {', '.join(info.identities[:5])}")
    held = [v.id for v in info.videos if _matches(v, patterns)]
    train = [v.id for v in info.videos if not _matches(v, patterns)]
    return train, held
