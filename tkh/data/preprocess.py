"""`tkh preprocess`: videos -> a cache of face crops + landmarks for meta-learning (paper Sec. 3.2, 4).

For every video, `frames_per_video` frames spread evenly over its length are decoded (chosen and streamed
by `tkh.data.sampling`: at most `batch_size` full frames are held at once, whatever the video's
length), the 68 landmarks of the largest face are detected in batches (`tkh.landmarks`; dlib offline,
face-alignment on a GPU), and each frame is cropped with `tkh.landmarks.crop` — the very function
adaptation and animation use, so training and inference see the same crop. Frames without a face
are dropped; a video with fewer than `min_frames` faces, or one that cannot be decoded (corrupt,
empty, truncated before its first frame), is recorded as skipped with the reason, never fatal.

Resumable and safe to kill: each video is written into ``videos/.tmp-*`` and renamed into place when
complete (a reader never sees half a video); index.json is rewritten atomically; a re-run adopts
every finished folder (even one finished after the last index write) and does only the rest.
Videos run in parallel over `workers` processes, each loading its own landmark backend.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import time
import traceback
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tkh.atomic import write_json
from tkh.data.cache import (
    INDEX,
    TMP_PREFIX,
    VIDEOS,
    check_config,
    clean_temp_dirs,
    new_index,
    read_index,
    video_dirname,
    writer_lock,
)
from tkh.data.sampling import iter_sampled_frames
from tkh.data.sources import VideoSource, apply_identities, discover_videos
from tkh.errors import BadInputError, ConfigError, TkhError
from tkh.landmarks import crop, get_backend, resolve_backend
from tkh.landmarks.crop import MARGIN, SHIFT

log = logging.getLogger(__name__)

INDEX_WRITE_INTERVAL = 1.0  # seconds between index rewrites (each finished folder also has its meta.json)


@dataclass
class PreprocessSummary:
    """What a `preprocess` call did; `str()` is the one-line summary the command line prints."""

    cache: Path  # the cache folder
    ok: int  # usable videos in the cache now (including ones finished by earlier runs)
    skipped: int  # videos skipped (corrupt, empty, no face, ...), see `skipped_reasons`
    frames: int  # frames in the usable videos
    done_now: int  # videos processed by this call
    reused: int  # videos found finished from an earlier run (not redone)
    seconds: float  # wall time of this call
    frames_now: int = 0  # frames kept by this call
    skipped_reasons: dict[str, str] = field(default_factory=dict)  # video id -> reason

    @property
    def frames_per_second(self) -> float:
        return self.frames_now / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.ok} videos ok, {self.skipped} skipped, {self.frames} frames in {self.cache} "
                f"({self.done_now} processed now, {self.reused} already done; {self.seconds:.1f} s, "
                f"{self.frames_per_second:.1f} frames/s)")


# ---------------------------------------------------------------------------------------------
# One video (runs in a worker process; never raises)
# ---------------------------------------------------------------------------------------------
_PARENT_PID: int | None = None  # set in workers: a worker orphaned by a killed parent must not write


def _worker_init(threads: int) -> None:
    global _PARENT_PID
    _PARENT_PID = os.getppid()
    torch.set_num_threads(max(1, threads))


def _orphaned() -> bool:
    return _PARENT_PID is not None and os.getppid() != _PARENT_PID


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def process_video(source: VideoSource, root: Path, config: dict[str, Any], device: str | None = None,
                  batch_size: int = 8) -> dict[str, Any]:
    """Preprocess one video into ``root/videos/<dir>``; returns its index entry (status ok or skipped).

    Never raises for a bad video: the reason goes into the entry. The folder appears atomically
    (written under a temp name, then renamed).
    """
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"id": source.id, "source": source.path, "identity": source.identity,
                             "kind": source.kind, "dir": "", "status": "skipped", "n_frames": 0,
                             "n_sampled": 0, "reason": None}
    try:
        arrays, stats = _detect_and_crop(source, config, device, batch_size)
        entry.update(stats)
        need = max(config["min_frames"], math.ceil(config.get("min_face_fraction", 0.0) * stats["n_sampled"]))
        if stats["n_frames"] < need:
            entry["reason"] = (f"a face in only {stats['n_frames']} of {stats['n_sampled']} sampled frames "
                               f"(needs {need}); not a talking-head video?")
        else:
            entry["status"] = "ok"
            entry["dir"] = f"{VIDEOS}/{video_dirname(source.id)}"
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            if not _write_video_dir(root, entry, arrays):
                entry["reason"] = "orphaned worker: the preprocess run that started it was killed"
                entry["status"] = "skipped"
    except TkhError as exc:
        entry["reason"] = str(exc)
    except MemoryError:
        entry["reason"] = "out of memory while decoding; re-encode the video at a lower resolution"
    except Exception as exc:  # a library's exception on a strange file: log it, skip the video
        log.debug("%s", traceback.format_exc())
        entry["reason"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}"
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    return entry


def _detect_and_crop(source: VideoSource, config: dict[str, Any], device: str | None, batch_size: int
                     ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    impl = get_backend(config["backend"], device)
    size, margin, shift = config["size"], config["margin"], config["shift"]
    crops, lms, src_lms, index, boxes = [], [], [], [], []
    stats = {"n_sampled": 0, "n_frames": 0, "n_no_face": 0, "n_multi_face": 0}
    src_size = (0, 0)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        # one batched call to the backend (face-alignment batches equal-sized frames on the GPU)
        for (i, frame), faces in zip(pending, impl.faces_batch([f for _, f in pending])):
            if not faces:
                stats["n_no_face"] += 1
                continue
            stats["n_multi_face"] += len(faces) > 1
            pts = max(faces, key=lambda f: f[1])[0]  # the largest face, as tkh.landmarks.detect picks
            img, cl, t = crop(frame, pts, size, margin=margin, shift=shift)
            crops.append(img)
            lms.append(cl)
            src_lms.append(pts)
            index.append(i)
            boxes.append((t.x0, t.y0, t.side))
        pending.clear()

    for i, frame in iter_sampled_frames(source, config["frames_per_video"]):
        stats["n_sampled"] += 1
        src_size = frame.shape[:2]
        pending.append((i, frame))
        if len(pending) >= batch_size:
            flush()
    flush()
    stats["n_frames"] = len(crops)
    if not crops:
        return {}, stats
    arrays = {
        "frames": np.stack(crops).astype(np.uint8),  # (F, S, S, 3)
        "landmarks": np.stack(lms).astype(np.float32),  # (F, 68, 2) crop pixels
        "source_landmarks": np.stack(src_lms).astype(np.float32),  # (F, 68, 2) source pixels
        "frame_index": np.asarray(index, np.int64),  # (F,)
        "boxes": np.asarray(boxes, np.int64),  # (F, 3) x0, y0, side in the source
        "source_size": np.asarray(src_size, np.int64),  # (2,) H, W
    }
    return arrays, stats


def _write_video_dir(root: Path, entry: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
    """Write frames.npy + landmarks.npz + meta.json under a temp name, then rename into place."""
    final = root / entry["dir"]
    tmp = root / VIDEOS / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "frames.npy", arrays["frames"])
        np.savez(tmp / "landmarks.npz", **{k: v for k, v in arrays.items() if k != "frames"})
        (tmp / "meta.json").write_text(json.dumps(entry, indent=1))
        for name in ("frames.npy", "landmarks.npz", "meta.json"):
            _fsync_file(tmp / name)
        if _orphaned():
            return False
        if final.exists():  # finished meanwhile by an orphaned worker of a killed run: keep that one
            if _read_meta(final) is not None:
                return True
            shutil.rmtree(final)
        os.rename(tmp, final)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        ok = meta.get("status") == "ok" and (folder / "frames.npy").is_file() and (folder / "landmarks.npz").is_file()
        return meta if ok else None
    except (OSError, json.JSONDecodeError):
        return None


def _run_one(args: tuple) -> dict[str, Any]:
    source, root, config, device, batch_size = args

    warnings.filterwarnings("ignore", message=r"tkh\.landmarks: backend 'auto'")
    return process_video(VideoSource(**source), Path(root), config, device, batch_size)


# ---------------------------------------------------------------------------------------------
# The whole cache
# ---------------------------------------------------------------------------------------------
def preprocess(inputs: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike, size: int = 256,
               frames_per_video: int = 32, backend: str = "auto", workers: int = 1, *, device: str | None = None,
               batch_size: int = 8, min_frames: int = 2, min_face_fraction: float = 0.25,
               group_clips: bool = True, retry_skipped: bool = False, progress: bool = True,
               identities: Mapping[str, str] | None = None) -> PreprocessSummary:
    """Preprocess videos into a cache folder for `EpisodeDataset` (resumable; see the module docstring).

    inputs: folders (VoxCeleb ``id*/video_id/*.mp4`` or frame folders, or any folder of videos,
    searched recursively), video files, or a list of them. out: the cache folder.
    size: side of the square crops in pixels (the training resolution). frames_per_video: frames
    sampled evenly per video. backend: "auto", "face_alignment" or "dlib" ("auto" continues an
    existing cache with the backend it was made with). workers: processes, each with its own backend.
    device: for face-alignment (default: CUDA when available). batch_size: frames per detector call.
    min_frames, min_face_fraction: a video is skipped when fewer than max(min_frames,
    min_face_fraction x sampled) of its sampled frames have a face (a talking-head video shows its face
    in most frames; a few hits in a video without people are detector false positives).
    group_clips: a VoxCeleb ``id*/video_id/`` folder of clips is one video (the paper's unit; one row
    of W), its frames sampled across the clips; False: one video per clip.
    retry_skipped: try again the videos an earlier run skipped (by default they stay skipped: a
    corrupt file does not heal). identities: {video file name or id: person} (`tkh.data.read_identities`)
    for clips of one person under several names; applied to finished videos too, so a re-run relabels.
    Raises ConfigError when `out` holds a cache made with another size/backend/frames_per_video.
    """
    for name, value, lo in (("size", size, 8), ("frames_per_video", frames_per_video, 1), ("workers", workers, 1),
                            ("batch_size", batch_size, 1), ("min_frames", min_frames, 1)):
        if int(value) != value or value < lo:
            raise ConfigError(f"preprocess: {name} must be an integer >= {lo}, got {value!r}")
    if not 0.0 <= min_face_fraction <= 1.0:
        raise ConfigError(f"preprocess: min_face_fraction must be in [0, 1], got {min_face_fraction!r}")

    t0 = time.perf_counter()
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise BadInputError(f"--out {root} is a file; pass a folder for the cache")
    sources = discover_videos(inputs, exclude=root, group_clips=group_clips)
    if identities:
        sources = apply_identities(sources, identities)
    root.mkdir(parents=True, exist_ok=True)
    (root / VIDEOS).mkdir(exist_ok=True)
    with writer_lock(root):
        index = read_index(root)
        if backend == "auto" and index is not None:
            backend_name = index["config"]["backend"]
        else:
            backend_name = resolve_backend(backend, device)
        config = {"size": int(size), "frames_per_video": int(frames_per_video), "backend": backend_name,
                  "margin": MARGIN, "shift": SHIFT, "min_frames": int(min_frames),
                  "min_face_fraction": float(min_face_fraction), "group_clips": bool(group_clips), "storage": "npy"}
        if index is not None:
            check_config(root, index["config"], config)
            # keep the stored config (same crops), with this run's rules for which videos are usable
            config = {**index["config"], "min_frames": config["min_frames"],
                      "min_face_fraction": config["min_face_fraction"]}
        clean_temp_dirs(root)
        entries = _existing_entries(root, index)
        for src in sources:  # the people as named now (an identities table may have come later)
            if src.id in entries:
                entries[src.id]["identity"] = src.identity
        write_json(root / INDEX, new_index(config, entries.values()), indent=1)

        def finished(s: VideoSource) -> bool:
            e = entries.get(s.id)
            return e is not None and (e["status"] == "ok" or (e["status"] == "skipped" and not retry_skipped))

        todo = [s for s in sources if not finished(s)]
        reused = len(sources) - len(todo)
        new_entries = _run(todo, root, config, device, batch_size, workers, progress, entries)
    ok = [e for e in entries.values() if e["status"] == "ok"]
    skipped = {e["id"]: e.get("reason") or "" for e in entries.values() if e["status"] != "ok"}
    return PreprocessSummary(cache=root, ok=len(ok), skipped=len(skipped), frames=sum(e["n_frames"] for e in ok),
                             done_now=len(new_entries), reused=reused, seconds=time.perf_counter() - t0,
                             frames_now=sum(e["n_frames"] for e in new_entries if e["status"] == "ok"),
                             skipped_reasons=skipped)


def _existing_entries(root: Path, index: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Index entries whose data is on disk, plus finished folders the index has not caught up with."""
    entries: dict[str, dict[str, Any]] = {}
    for e in (index or {}).get("videos", []):
        if e["status"] == "ok" and _read_meta(root / e["dir"]) is None:
            continue  # its folder was deleted: do it again
        entries[e["id"]] = e
    for folder in sorted((root / VIDEOS).iterdir()):
        if folder.name.startswith(TMP_PREFIX) or not folder.is_dir():
            continue
        meta = _read_meta(folder)
        if meta is not None and entries.get(meta["id"], {}).get("status") != "ok":
            meta["dir"] = f"{VIDEOS}/{folder.name}"
            entries[meta["id"]] = meta
    return entries


def _run(todo: list[VideoSource], root: Path, config: dict[str, Any], device: str | None, batch_size: int,
         workers: int, progress: bool, entries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Process `todo` (in this process or a pool), recording each result in the index as it lands."""
    done: list[dict[str, Any]] = []
    last_write = time.monotonic()
    bar = tqdm(total=len(todo), unit="video", desc="preprocess", disable=not progress or not todo)

    def record(entry: dict[str, Any]) -> None:
        nonlocal last_write
        entries[entry["id"]] = entry
        done.append(entry)
        if entry["status"] != "ok":
            msg = f"skipped {entry['id']}: {entry['reason']}"
            log.info(msg)
            bar.write(f"tkh preprocess: {msg}")
        bar.update(1)
        bar.set_postfix(ok=sum(e["status"] == "ok" for e in done), skipped=sum(e["status"] != "ok" for e in done),
                        frames=sum(e["n_frames"] for e in done if e["status"] == "ok"))
        if time.monotonic() - last_write >= INDEX_WRITE_INTERVAL:
            write_json(root / INDEX, new_index(config, entries.values()), indent=1)
            last_write = time.monotonic()

    jobs = [(asdict(s), str(root), config, device, batch_size) for s in todo]
    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                record(_run_one(job))
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            with cf.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                        initializer=_worker_init, initargs=(threads,)) as pool:
                futures = [pool.submit(_run_one, job) for job in jobs]
                try:
                    for fut in cf.as_completed(futures):
                        record(fut.result())
                except cf.process.BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise TkhError(f"{root}: a preprocessing worker died (out of memory? try fewer --workers); "
                                   "run the same command again to continue (finished videos are kept)") from None
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
        write_json(root / INDEX, new_index(config, entries.values()), indent=1)
    return done
