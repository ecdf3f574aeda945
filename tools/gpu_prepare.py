"""Build, on a CPU machine, everything tools/gpu_session.py needs on a GPU machine without dlib or a network.

    python tools/gpu_prepare.py --cache /work/tkh-runs/cache128            # -> .carry/ (git-ignored), sizes

What goes into `.carry/` (tools/_carry.py describes the layout), in this order, within what the working tree
leaves of the 64 MiB a device call may send (the tree's size is measured here, `--margin-mib` kept free):

1. the held-out clips of the config's `train.holdout` (their sources, from the cache's index): dlib's landmark
   tracks and the crop windows of the frames pretrained/make.py's protocol uses (JPEG q95 by default: the
   windows at the clips' own resolution take 3 MiB for the 8 clips of ../shared, PNG 8.5 MiB);
2. dlib's landmarks of the benchmarks' portrait (Grace Hopper);
3. the perceptual networks (`--nets`, in priority order) as fp16 safetensors, byte-shuffled and deflated:
   VGG16 + LPIPS heads 24 MiB, dlib's face ResNet 8.5 MiB; a network is left out when, with it, the cache
   could not keep `--min-frames` frames per video (the summary says which and what that defers);
4. wheels of what the machine lacks, for the networks kept: dlib-bin (4 MiB) goes with dlib's face network
   (CSIM on the GPU needs both); `pip download` for Python 3.12, manylinux x86-64;
5. the training cache without the held-out people, as JPEG (`--quality`), with as many frames per video as
   fit, at most `--frames-per-video`.

carry.json records the settings, every folder's size, the tree's size and what is left.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _carry as C  # noqa: E402

NETS = ("vgg16", "dlib")
WHEELS_FOR = {"dlib": ["dlib-bin"]}  # with dlib's face network, CSIM can run on the GPU machine
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
OWNED = ("cache", "nets", "heldout", "portrait", "wheels", "carry.json")


def net_source(name: str) -> Path:
    """The float32 safetensors file of a perceptual network in tkh's cache (made now when missing)."""
    if name == "vgg16":
        from tkh.nets.vgg16 import ensure_vgg16

        return Path(ensure_vgg16())
    if name == "dlib":
        from tkh.nets.dlib_resnet import converted_path, load_dlib_face_resnet

        load_dlib_face_resnet()  # writes the conversion into tkh's cache on first use
        path = converted_path()
        if path is None:
            raise SystemExit("gpu_prepare: dlib's face network has no converted copy in tkh's cache (read-only?)")
        return path
    raise SystemExit(f"gpu_prepare: unknown network {name!r}; choose from {', '.join(NETS)}")


def download_wheels(names: list[str], dest: Path) -> list[str]:
    """`pip download` of each installed package's own version, for the GPU machine's Python 3.12."""
    from importlib.metadata import PackageNotFoundError, version

    dest.mkdir(parents=True, exist_ok=True)
    specs = []
    for n in names:
        try:
            specs.append(f"{n}=={version(n)}")
        except PackageNotFoundError:
            specs.append(n)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *specs]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"gpu_prepare: pip download {' '.join(specs)} failed: {r.stderr.strip().splitlines()[-1:]}")
    return sorted(p.name for p in dest.glob("*.whl"))


def heldout_sources(cache: Path, holdout: list[str]) -> list[Path]:
    """The source clips of the cache's held-out videos (those that still exist here)."""
    from tkh.data.cache import load_cache_index, split_identities

    info = load_cache_index(cache)
    held = set(split_identities(info, holdout)[1])
    clips = [Path(v.source) for v in info.videos if v.id in held]
    missing = [c for c in clips if not c.is_file()]
    if missing:
        print(f"gpu_prepare: {len(missing)} held-out sources are not here (left out): "
              f"{', '.join(c.name for c in missing)}", flush=True)
    return [c for c in clips if c.is_file()]


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from tkh.config import load_config
    from tkh.data.pack import pack_cache

    t0 = time.time()
    carry = Path(args.carry)
    carry.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        target = carry / name
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    tree = C.tree_bytes() or 0
    budget = C.TREE_LIMIT - int(args.margin_mib * C.MiB) - tree
    holdout = list(args.holdout or load_config(args.config).train.holdout)
    sizes: dict[str, int] = {}
    log: list[str] = []

    clips = [Path(c) for c in args.heldout_clips] if args.heldout_clips else heldout_sources(Path(args.cache), holdout)
    if clips:
        index = C.make_heldout_pack(clips, carry / "heldout", fmt=args.heldout_format)
        sizes["heldout"] = C.folder_bytes(carry / "heldout")
        log.append(f"held-out: {len(clips)} clips, {sum(e['carried'] for e in index['clips'])} frames")

    from tkh.landmarks import detect

    sys.path.insert(0, str(C.ROOT / "benchmarks"))
    import _common as bench

    portrait = carry / C.PORTRAIT_LANDMARKS
    portrait.parent.mkdir(parents=True, exist_ok=True)
    np.save(portrait, detect(bench.grace_hopper(), backend="dlib"))
    sizes["portrait"] = C.folder_bytes(portrait.parent)

    # The cache at the most frames: its bytes per frame decide what else fits.
    trial = pack_cache(args.cache, carry / "cache", frames_per_video=args.frames_per_video, quality=args.quality,
                       exclude=holdout)
    n_videos = len(trial["index"]["videos"])
    per_frame = trial["bytes"] / sum(v["n_frames"] for v in trial["index"]["videos"])

    def cache_bytes(frames: int) -> float:
        return per_frame * n_videos * frames * 1.02

    kept, dropped, wheels = [], {}, []
    nets = [n for n in args.nets.split(",") if n]
    for name in nets:
        src = net_source(name)
        dst = carry / "nets" / f"{src.name}.fp16z"
        size = C.pack_weights(src, dst)
        extra = sum(_wheel_estimate(w) for w in WHEELS_FOR.get(name, [])) if args.wheels == "auto" else 0
        used = sum(sizes.values())
        if used + size + extra + cache_bytes(args.min_frames) <= budget:
            kept.append(name)
            sizes[f"nets/{name}"] = size
        else:
            dst.unlink()
            dropped[name] = (f"{size / C.MiB:.1f} MiB: with it the cache could not keep {args.min_frames} frames per "
                             f"video within {budget / C.MiB:.1f} MiB")
    if args.wheels == "auto":
        wheels = [w for n in kept for w in WHEELS_FOR.get(n, [])]
    elif args.wheels != "none":
        wheels = args.wheels.split(",")
    if wheels:
        found = download_wheels(wheels, carry / "wheels")
        sizes["wheels"] = C.folder_bytes(carry / "wheels")
        log.append(f"wheels: {', '.join(found)}")

    left = budget - sum(sizes.values())
    frames = min(args.frames_per_video, int(left // (per_frame * n_videos * 1.02)))
    if frames < args.min_frames:
        raise SystemExit(f"gpu_prepare: only {frames} frames per video fit ({left / C.MiB:.1f} MiB left after "
                         f"{', '.join(f'{k} {v / C.MiB:.1f} MiB' for k, v in sizes.items())}); lower --min-frames "
                         f"or --quality, or carry fewer networks (--nets)")
    while True:
        packed = trial if frames == args.frames_per_video else pack_cache(
            args.cache, carry / "cache", frames_per_video=frames, quality=args.quality, exclude=holdout)
        if packed["bytes"] <= left or frames <= args.min_frames:
            break
        frames -= 1
    sizes["cache"] = packed["bytes"]
    log.append(f"cache: {n_videos} videos x {frames} frames, JPEG q{args.quality}; left out (held out): "
               f"{', '.join(packed['removed'])}")
    total = sum(sizes.values())
    deferred = []
    if "dlib" not in kept:
        deferred.append("CSIM and identity metrics (no dlib face network on the GPU): tools/gpu_finish.py")
    if "vgg16" not in kept:
        deferred.append("LPIPS (no VGG16 on the GPU): tools/gpu_finish.py")
    deferred.append("landmark error (dlib's 68-point model cannot travel): tools/gpu_finish.py")
    record = {"format": "tkh-gpu-carry", "version": 1, "made_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "tree_bytes": tree, "limit_bytes": C.TREE_LIMIT, "margin_bytes": int(args.margin_mib * C.MiB),
              "sizes": sizes, "carry_bytes": total, "total_bytes": tree + total,
              "left_bytes": C.TREE_LIMIT - tree - total,
              "plan": {"cache": str(Path(args.cache).resolve()), "videos": n_videos, "frames_per_video": frames,
                       "quality": args.quality, "holdout": holdout, "removed": packed["removed"],
                       "heldout_clips": [c.name for c in clips], "heldout_format": args.heldout_format,
                       "nets": kept, "nets_dropped": dropped, "wheels": sorted(p.name for p in (carry / "wheels").glob("*.whl")),
                       "deferred": deferred},
              "seconds": round(time.time() - t0, 1)}
    C.write_json(carry / "carry.json", record)
    print("\n".join(log), flush=True)
    print(f"{'what':22s} {'MiB':>7s}")
    print(f"{'working tree':22s} {tree / C.MiB:7.2f}")
    for k, v in sizes.items():
        print(f"{'.carry/' + k:22s} {v / C.MiB:7.2f}")
    print(f"{'total':22s} {(tree + total) / C.MiB:7.2f}  of {C.TREE_LIMIT // C.MiB} MiB "
          f"({record['left_bytes'] / C.MiB:.2f} MiB left)")
    for n, why in dropped.items():
        print(f"network {n} not carried: {why}")
    for d in deferred:
        print(f"deferred: {d}")
    return record


def _wheel_estimate(name: str) -> int:
    return {"dlib-bin": 4_200_000}.get(name, 1_000_000)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, help="the preprocessed training cache (tkh preprocess), read only")
    p.add_argument("--config", default=str(C.ROOT / "configs" / "small-cpu.yaml"), help="its train.holdout is held out")
    p.add_argument("--holdout", nargs="*", default=None, help="identities / ids held out (default: the config's)")
    p.add_argument("--heldout-clips", nargs="*", default=None, help="held-out clips (default: the held-out videos' "
                   "sources in the cache's index)")
    p.add_argument("--heldout-format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--carry", type=Path, default=C.CARRY)
    p.add_argument("--frames-per-video", type=int, default=24, help="at most this many frames per training video")
    p.add_argument("--min-frames", type=int, default=16, help="fewer than this: a network is left out instead")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the training frames")
    p.add_argument("--nets", default="vgg16,dlib", help="perceptual networks in priority order (vgg16, dlib)")
    p.add_argument("--wheels", default="auto", help="auto (what the kept networks need), none, or NAME,NAME")
    p.add_argument("--margin-mib", type=float, default=1.0, help="kept free for the tree to grow before the call")
    return p


def main(argv: list[str] | None = None) -> int:
    prepare(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
