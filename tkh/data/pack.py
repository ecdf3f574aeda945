"""A compact, portable copy of a preprocessed cache (JPEG frames), and back to a cache that trains.

A `tkh preprocess` cache keeps raw ``frames.npy`` crops (random access without decoding; see
`tkh.data.cache`): about 10x the bytes of JPEG. When a cache has to travel — to a rented GPU whose upload is
limited, or to Colab — `pack_cache` keeps `frames_per_video` evenly spaced frames of each video as JPEG
(quality `quality`) with their landmarks, one ``.npz`` per video, and `unpack_cache` writes an ordinary
cache folder from it on the other side (decoding ~100 small JPEGs per second per video is nothing next to
training). The landmarks are the cache's own (dlib's 68 points, found once on the machine that had the
landmark model); nothing is detected again.

Layout::

    PACK/pack.json              {"format": "tkh-cache-pack", "version": 1, "quality", "frames_per_video",
                                 "source", "removed": [ids left out], "index": the cache's index.json}
    PACK/videos/<dir>.npz       jpeg (uint8, all frames' JPEG bytes), offsets (F + 1), and the cache's
                                landmarks.npz arrays for the kept frames

The JPEG bytes are written with OpenCV directly, not with `tkh.media`'s writers: these are crops of real
videos, which must not carry the label tkh puts on every image it generates.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tkh.data.cache import INDEX, VIDEOS, load_cache_index, read_index, split_identities
from tkh.errors import BadInputError

__all__ = ["PACK_FORMAT", "pack_cache", "pack_size", "unpack_cache"]

PACK_FORMAT = "tkh-cache-pack"
PACK_VERSION = 1
PACK_INDEX = "pack.json"
LANDMARK_KEYS = ("landmarks", "source_landmarks", "frame_index", "boxes")  # per-frame arrays of landmarks.npz


def _keep(n: int, frames_per_video: int) -> np.ndarray:
    """Indices of `frames_per_video` frames spread evenly over n (all of them when n is smaller)."""
    return np.unique(np.linspace(0, n - 1, min(n, frames_per_video)).round().astype(int))


def _encode(frames: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise BadInputError(f"JPEG encoding failed for a {f.shape} frame")
        parts.append(buf.reshape(-1))
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    return np.concatenate(parts).astype(np.uint8), offsets


def pack_cache(cache: str | os.PathLike, out: str | os.PathLike, frames_per_video: int = 24, quality: int = 90,
               exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Write a pack of `cache` into the folder `out` (replaced). exclude: identities or video ids (shell
    patterns, as train.holdout) left out, e.g. the held-out people, who need no training frames.
    Returns pack.json's content plus "bytes" (the pack's size on disk)."""
    info = load_cache_index(cache)
    if frames_per_video < 2 or not 1 <= quality <= 100:
        raise BadInputError(f"pack_cache: frames_per_video must be >= 2 and quality 1..100, got "
                            f"{frames_per_video} and {quality}")
    index = read_index(info.root)
    patterns = list(exclude)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / VIDEOS).mkdir(parents=True)
    removed = split_identities(info, patterns)[1] if patterns else []  # a pattern matching nothing: BadInputError
    kept_entries = []
    by_id = {v["id"]: v for v in index["videos"]}
    for entry in info.videos:
        if entry.id in removed:
            continue
        folder = info.root / entry.dir
        frames = np.load(folder / "frames.npy", mmap_mode="r")
        keep = _keep(len(frames), frames_per_video)
        jpeg, offsets = _encode(frames[keep], quality)
        with np.load(folder / "landmarks.npz") as z:
            arrays = {k: np.asarray(z[k])[keep] for k in LANDMARK_KEYS if k in z}
            arrays.update({k: np.asarray(z[k]) for k in z.files if k not in LANDMARK_KEYS})
        name = Path(entry.dir).name
        np.savez(out / VIDEOS / f"{name}.npz", jpeg=jpeg, offsets=offsets, **arrays)
        kept_entries.append({**by_id[entry.id], "n_frames": int(len(keep))})
    if not kept_entries:
        raise BadInputError(f"pack_cache: every video of {info.root} matched {patterns}; nothing to pack")
    config = {**index["config"], "frames_per_video": int(frames_per_video),
              "pack": {"quality": int(quality), "from_frames_per_video": info.frames_per_video}}
    meta = {"format": PACK_FORMAT, "version": PACK_VERSION, "quality": int(quality),
            "frames_per_video": int(frames_per_video), "source": str(info.root), "removed": removed,
            "exclude": patterns, "index": {**index, "config": config, "videos": kept_entries}}
    (out / PACK_INDEX).write_text(json.dumps(meta, indent=1))
    return {**meta, "bytes": pack_size(out)}


def pack_size(folder: str | os.PathLike) -> int:
    """Bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def unpack_cache(pack: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the ordinary cache folder `out` (frames.npy, landmarks.npz, meta.json per video, index.json) from a
    pack made by `pack_cache`; `tkh.train.train` reads it like any cache. Returns `out`."""
    pack = Path(pack)
    try:
        meta = json.loads((pack / PACK_INDEX).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{pack} is not a tkh cache pack ({type(exc).__name__}: {exc}); make one with "
                            "tkh.data.pack.pack_cache (tools/gpu_prepare.py)") from None
    if meta.get("format") != PACK_FORMAT or meta.get("version") != PACK_VERSION:
        raise BadInputError(f"{pack / PACK_INDEX}: not a version-{PACK_VERSION} {PACK_FORMAT}")
    out = Path(out)
    index = meta["index"]
    for v in index["videos"]:
        name = Path(v["dir"]).name
        with np.load(pack / VIDEOS / f"{name}.npz") as z:
            jpeg, offsets = z["jpeg"], z["offsets"]
            frames = np.stack([cv2.cvtColor(cv2.imdecode(jpeg[a:b], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                               for a, b in zip(offsets[:-1], offsets[1:])])
            arrays = {k: z[k] for k in z.files if k not in ("jpeg", "offsets")}
        folder = out / v["dir"]
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "frames.npy", frames)
        np.savez(folder / "landmarks.npz", **arrays)
        (folder / "meta.json").write_text(json.dumps(v, indent=1))
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return out
