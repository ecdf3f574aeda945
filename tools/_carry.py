"""What travels to a lent GPU machine and what comes back: shared by gpu_prepare.py, gpu_session.py, gpu_finish.py.

The machine (see README "Training and benchmarking on a lent GPU") receives the working tree plus the
git-ignored folders named in the call's `carry`, 64 MiB in all, and returns at most 8 files of at most
16 MiB each (64 MiB together, no deeper than two folders under $OUT). It has torch, numpy, safetensors,
pyyaml, imageio, OpenCV, scikit-image, matplotlib and tqdm, but no dlib, no face_recognition_models (dlib's
100 MB landmark model) and no network. So everything that needs those is done here beforehand:

    .carry/                          (git-ignored; one `carry` entry)
      carry.json                     what gpu_prepare.py made: settings, sizes, the tree's size, the budget
      cache/                         the training cache as JPEG (tkh.data.pack)
      nets/NAME.safetensors.fp16z    perceptual networks: fp16 safetensors, byte-shuffled + zlib (lossless)
      heldout/                       held-out clips: the frames evaluation needs + dlib landmarks (below)
      portrait/grace_hopper_landmarks.npy   dlib's landmarks of the benchmarks' portrait
      wheels/*.whl                   packages the machine lacks (pip download, Python 3.12, manylinux x86-64)

Held-out clips: `tkh.evaluate.evaluate_self` adapts on K frames of a clip and reconstructs 8 held-out
ones (the protocol of pretrained/make.py). The pack keeps, for each frame it needs, the square window that
`tkh.landmarks.crop` cuts from the frame (plus a few pixels), at the frame's own resolution, shifted
landmarks with it: cropping the window gives the crop the full frame gives (a translation by whole pixels),
so the evaluation on the GPU sees the pixels it would see here, up to the JPEG/PNG storage of the window.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/x.py` from a checkout without installing tkh
    sys.path.insert(0, str(ROOT))

MiB = 2 ** 20
CARRY = ROOT / ".carry"                  # .gitignore has /.carry/
TREE_LIMIT = 64 * MiB                    # working tree + carried folders, per call
OUT_MAX_FILES, OUT_MAX_FILE, OUT_MAX_TOTAL, OUT_MAX_DEPTH = 8, 16 * MiB, 64 * MiB, 2
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")
WEIGHTS_MAGIC = b"TKH-FP16Z-1\n"
HELDOUT_INDEX = "heldout.json"
PORTRAIT_LANDMARKS = "portrait/grace_hopper_landmarks.npy"


# ---------------------------------------------------------------------------------------------
# sizes and limits
# ---------------------------------------------------------------------------------------------
def tree_bytes(root: Path = ROOT) -> int | None:
    """Bytes of what travels without `carry`: tracked files and untracked files git does not ignore."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def check_out(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(the files under `folder` with their sizes, the problems that would keep any from coming back)."""
    folder = Path(folder)
    files, problems = [], []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_symlink() or (not p.is_file() and not p.is_dir()):
            problems.append(f"{rel}: not a plain file")
            continue
        if any(not NAME_OK.match(part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
        if p.is_dir():
            continue
        size = p.stat().st_size
        files.append({"path": str(rel), "bytes": size})
        if len(rel.parts) - 1 > OUT_MAX_DEPTH:
            problems.append(f"{rel}: more than {OUT_MAX_DEPTH} folders down")
        if size > OUT_MAX_FILE:
            problems.append(f"{rel}: {size / MiB:.1f} MiB, over {OUT_MAX_FILE // MiB} MiB")
    if len(files) > OUT_MAX_FILES:
        problems.append(f"{len(files)} files, over {OUT_MAX_FILES}")
    total = sum(f["bytes"] for f in files)
    if total > OUT_MAX_TOTAL:
        problems.append(f"{total / MiB:.1f} MiB in all, over {OUT_MAX_TOTAL // MiB} MiB")
    return files, problems


# ---------------------------------------------------------------------------------------------
# perceptual networks: fp16 safetensors, byte-shuffled and deflated (lossless; ~15 % smaller than fp16)
# ---------------------------------------------------------------------------------------------
def pack_weights(src: Path, dst: Path) -> int:
    """`src` (safetensors) as fp16 with its metadata, compressed into `dst`; returns dst's bytes. fp16's high
    bytes (sign, exponent) repeat a lot, its low bytes hardly: deflating them apart is what saves space."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    data = save(tensors, metadata={**meta, "tkh_carried_as": "float16"})
    raw = np.frombuffer(data + b"\0" * (len(data) % 2), np.uint8)
    shuffled = np.concatenate([raw[0::2], raw[1::2]]).tobytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(WEIGHTS_MAGIC + struct.pack("<Q", len(data)) + zlib.compress(shuffled, 9))
    return dst.stat().st_size


def unpack_weights(src: Path, dst_dir: Path) -> Path:
    """The safetensors file packed by `pack_weights`, written into `dst_dir` under its original name."""
    blob = src.read_bytes()
    if not blob.startswith(WEIGHTS_MAGIC):
        raise ValueError(f"{src} is not a packed weights file (tools/gpu_prepare.py writes them)")
    n = struct.unpack("<Q", blob[len(WEIGHTS_MAGIC):len(WEIGHTS_MAGIC) + 8])[0]
    shuffled = np.frombuffer(zlib.decompress(blob[len(WEIGHTS_MAGIC) + 8:]), np.uint8)
    half = len(shuffled) // 2
    raw = np.empty(len(shuffled), np.uint8)
    raw[0::2], raw[1::2] = shuffled[:half], shuffled[half:]
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = dst_dir / src.name.removesuffix(".fp16z")
    out.write_bytes(raw[:n].tobytes())
    return out


# ---------------------------------------------------------------------------------------------
# held-out clips
# ---------------------------------------------------------------------------------------------
def _window(frame: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """frame[y0:y0+side, x0:x0+side] with black where it leaves the frame (as tkh.landmarks.crop fills)."""
    h, w = frame.shape[:2]
    out = np.zeros((side, side, 3), np.uint8)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if xb > xa and yb > ya:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = frame[ya:yb, xa:xb]
    return out


def _encode(image: np.ndarray, fmt: str) -> np.ndarray:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} window as {fmt}")
    return buf.reshape(-1)


def _decode(buf: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def make_heldout_pack(clips: list[Path], out: Path, shots: tuple[int, ...] = (1, 8), n_eval: int = 8,
                      max_frames: int = 120, backend: str = "dlib", fmt: str = "png", pad: int = 4) -> dict[str, Any]:
    """For each clip: dlib's landmark track of its first `max_frames` frames (as `evaluate_self` detects it) and
    the crop windows of the frames `evaluate_self` picks for `shots` and `n_eval`. Returns the index written."""
    from tkh.evaluate import _pick
    from tkh.landmarks import detect_video
    from tkh.landmarks.coverage import face_coverage, require_faces
    from tkh.landmarks.crop import face_box, transform_for_box
    from tkh.media import iter_video

    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for clip in clips:
        vl = detect_video(clip, backend=backend, max_frames=max_frames, progress=False, require_face=False)
        cov = require_faces(face_coverage(vl.landmarks, vl.valid, source=str(clip)), what="a held-out clip")
        valid = np.flatnonzero(cov.detected)
        need = sorted({int(i) for k in shots for part in _pick(valid, k, n_eval) for i in part})
        track = np.asarray(vl.landmarks, np.float32)
        offsets, images = [], []
        frames = {i: f for i, f in enumerate(iter_video(clip, max_frames=need[-1] + 1)) if i in set(need)}
        for i in need:
            t = transform_for_box(face_box(track[i]), 8, frames[i].shape[:2])  # window in pixels; size unused
            x0, y0 = t.x0 - pad, t.y0 - pad
            images.append(_encode(_window(frames[i], x0, y0, t.side + 2 * pad), fmt))
            offsets.append((x0, y0))
        lengths = np.cumsum([0] + [len(b) for b in images]).astype(np.int64)
        np.savez(out / f"{clip.stem}.npz", track=track, valid=np.asarray(vl.valid, bool),
                 frame_size=np.asarray(vl.frame_size, np.int64), indices=np.asarray(need, np.int64),
                 offsets=np.asarray(offsets, np.int64), images=np.concatenate(images), lengths=lengths)
        entries.append({"clip": clip.name, "frames": len(track), "with_face": int(len(valid)), "carried": len(need)})
    index = {"format": "tkh-heldout-pack", "version": 1, "clips": entries, "shots": list(shots), "n_eval": n_eval,
             "max_frames": max_frames, "backend": backend, "image_format": fmt, "pad": pad}
    (out / HELDOUT_INDEX).write_text(json.dumps(index, indent=1))
    return index


def load_heldout_pack(folder: Path) -> tuple[list[Path], dict[str, dict[str, Any]], dict[str, Any]]:
    """(clip paths (names only), per clip stem the `frames` and `track` evaluate_self takes, the index)."""
    from tkh.landmarks.coverage import face_coverage

    index = json.loads((folder / HELDOUT_INDEX).read_text())
    clips, inputs = [], {}
    for entry in index["clips"]:
        clip = Path(entry["clip"])
        with np.load(folder / f"{clip.stem}.npz") as z:
            track, valid = z["track"], z["valid"]
            shifted = track.copy()
            frames = {}
            for j, i in enumerate(z["indices"]):
                a, b = z["lengths"][j], z["lengths"][j + 1]
                frames[int(i)] = _decode(z["images"][a:b])
                shifted[i] = track[i] - z["offsets"][j].astype(np.float32)
        # the coverage (which frames count) from the unshifted track: what evaluate_self would compute here
        vetted = SimpleNamespace(landmarks=shifted, valid=valid, coverage=face_coverage(track, valid, source=str(clip)))
        clips.append(clip)
        inputs[clip.stem] = {"frames": frames, "track": vetted}
    return clips, inputs, index


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> Path:
    """Atomic JSON write (a reader never sees half a file, even when the writer is killed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def make_module():
    """pretrained/make.py (not a package module) imported: its held-out protocol, mean table and figure."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tkh_pretrained_make", ROOT / "pretrained" / "make.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    return make


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return default
