"""Shipped weights: `load(name)` verifies every file against `pretrained/manifest.json` and builds the model.

Users expect to animate a portrait without days of meta-training (sec. 3.2), so tkh ships a small
meta-trained model in `pretrained/` (≤ 32 MiB: fp16, D's per-video rows W dropped, since few-shot
adaptation uses w0 + ê_NEW instead, sec. 3.3).

Where `pretrained/` is looked for, first match wins:

1. `$TKH_PRETRAINED` (a folder holding a manifest.json), e.g. weights kept outside a clone;
2. `<source checkout>/pretrained/` (the repository's folder, next to `tkh/`);
3. `tkh/_pretrained/` inside the installed package (package data of a wheel).

manifest.json (format "tkh.pretrained/1")::

    {"format": "tkh.pretrained/1",
     "default": "small",
     "models": {
       "small": {
         "description": "...",
         "config": {... Config.to_dict() ...},
         "param_counts": {"E": ..., "G": ..., "G.P": ..., "D": ..., "D.W": 0, "total": ...},
         "dtype": "float16",
         "files": [{"path": "small-00001-of-00002.safetensors", "sha256": "...", "bytes": 123}, ...],
         "training": {"data": "...", "steps": 12000, "compute": "...", "command": "..."},
         "metrics": {...}                       # written by tkh.evaluate, see pretrained/README.md
       }}}

Each file is a safetensors shard (< 16 MiB, so no host needs Git LFS) with a subset of the model's
tensors and the same header as `TalkingHeadModel.save` (format, config JSON, meta). `load` checks the
sha256 of every shard before reading any (a mismatch raises CheckpointError naming the file and what
to do), never unpickles anything, and returns a float32 `TalkingHeadModel` in eval mode with
`.weights_name` and `.weights_sha256` set (the fingerprint `tkh.adapt.AdaptedPortrait` refers to).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tkh.atomic import save_safetensors, write_json
from tkh.config import Config
from tkh.errors import CheckpointError, WeightsUnavailableError
from tkh.hub import sha256_of
from tkh.models import FORMAT, TalkingHeadModel

__all__ = ["MANIFEST_FORMAT", "MAX_SHARD_BYTES", "available", "fingerprint", "info", "load", "pretrained_dir",
           "read_manifest", "verify_model", "write_manifest"]

MANIFEST_FORMAT = "tkh.pretrained/1"
ENV = "TKH_PRETRAINED"
MAX_SHARD_BYTES = 15 * 2**20  # shards stay under 16 MiB (GitHub's soft limit warns at 50 MiB; LFS not needed)
_GET_WEIGHTS = ("get the repository's pretrained/ folder (`git pull` in a clone), set TKH_PRETRAINED to a folder "
                "with a manifest.json, or pass your own weights: a checkpoint .safetensors or a `tkh train` run folder")
_FIX = ("re-download the repository's pretrained/ folder (in a git clone: `git checkout -- pretrained` "
        "or `git lfs pull` if your clone uses LFS), or point TKH_PRETRAINED at a good copy")


def pretrained_dir() -> Path | None:
    """The folder holding manifest.json: $TKH_PRETRAINED, the checkout's pretrained/, or package data."""
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "pretrained", here / "_pretrained"):
        if (cand / "manifest.json").is_file():
            return cand
    return None


def read_manifest(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parsed manifest of `folder` (default `pretrained_dir()`); an empty one when there is none."""
    folder = Path(folder) if folder is not None else pretrained_dir()
    if folder is None or not (folder / "manifest.json").is_file():
        return {"format": MANIFEST_FORMAT, "default": None, "models": {}}
    path = folder / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); {_FIX}") from None
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("models"), dict):
        raise CheckpointError(f"{path} is not a tkh manifest (format {MANIFEST_FORMAT!r} expected); {_FIX}")
    return data


def available(folder: str | os.PathLike | None = None) -> list[str]:
    """Names of the shipped models (default first); [] when no pretrained/ folder is found."""
    m = read_manifest(folder)
    names = list(m["models"])
    if m.get("default") in names:
        names.remove(m["default"])
        names.insert(0, m["default"])
    return names


def info(name: str | None = None, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest entry of a shipped model (config, counts, files, training, metrics), plus its name."""
    m = read_manifest(folder)
    name = name or m.get("default") or next(iter(m["models"]), None)
    where = pretrained_dir() if folder is None else folder
    if name is None:  # no manifest, or one without models: nothing shipped there (yet)
        raise WeightsUnavailableError(
            f"no shipped weights in {where or 'pretrained/ (not found)'}: it has no manifest.json listing a model; "
            f"{_GET_WEIGHTS}")
    if name not in m["models"]:
        raise WeightsUnavailableError(
            f"no shipped model named {name!r} in {where or 'pretrained/ (not found)'}; available: "
            f"{available(folder) or 'none'}; set TKH_PRETRAINED to a folder with a manifest.json or pass a "
            "checkpoint path")
    return {"name": name, **m["models"][name]}


def fingerprint(shard_hashes: list[str]) -> str:
    """One sha256 for a model stored as shards: sha256 of their sha256s, in order (a single file: its own)."""
    if len(shard_hashes) == 1:
        return shard_hashes[0]
    return hashlib.sha256("\n".join(shard_hashes).encode()).hexdigest()


def verify_model(name: str | None = None, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check every file of a shipped model against the manifest; returns the entry, raises CheckpointError."""
    entry = info(name, folder)
    root = Path(folder) if folder is not None else pretrained_dir()
    for f in entry["files"]:
        path = root / f["path"]
        if not path.is_file():
            raise CheckpointError(f"{path} (listed in {root / 'manifest.json'}) is missing; {_FIX}")
        size = path.stat().st_size
        if "bytes" in f and size != f["bytes"]:
            raise CheckpointError(f"{path} has {size} bytes, the manifest says {f['bytes']} (truncated?); {_FIX}")
        digest = sha256_of(path)
        if digest != f["sha256"]:
            hint = " (a Git LFS pointer, not the weights)" if size < 1024 else ""
            raise CheckpointError(f"{path}: sha256 {digest[:12]}… differs from the manifest's {f['sha256'][:12]}…"
                                  f"{hint}; {_FIX}")
    return entry


def load(name_or_path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu"):
    """A meta-trained `TalkingHeadModel` (float32, eval mode) by shipped name or checkpoint path.

    name_or_path: a name from `available()` (None: the default), a `.safetensors` checkpoint written by
    `TalkingHeadModel.save` (e.g. a training run's), a folder holding a manifest.json (its default), or a
    `tkh train` run folder (its latest checkpoint).
    Shipped files are verified against the manifest's sha256 first: CheckpointError on any mismatch.
    """
    if name_or_path is not None:
        p = Path(name_or_path)
        if p.is_dir() and not (p / "manifest.json").is_file():
            p = _run_checkpoint(p)  # a `tkh train` run folder: its latest checkpoint
        if p.is_dir():
            return _load_shipped(None, p, map_location)
        if p.suffix == ".safetensors" or p.exists():
            model = TalkingHeadModel.load(p, map_location=map_location)
            model.weights_name = str(p.resolve())
            model.weights_sha256 = sha256_of(p)
            return model.eval()
    return _load_shipped(None if name_or_path is None else str(name_or_path), None, map_location)


def _run_checkpoint(folder: Path) -> Path:
    """The weights of the latest checkpoint of a `tkh train` run folder (or of its checkpoints/ folder)."""
    from tkh.train.checkpoint import latest_checkpoint  # lazy: tkh.train.checkpoint imports tkh.pretrained (cycle)

    for ckpts in (folder / "checkpoints", folder):
        found = latest_checkpoint(ckpts)
        if found is not None:
            return found[0]
    raise WeightsUnavailableError(f"{folder} holds neither a manifest.json (shipped weights) nor a `tkh train` "
                                  f"checkpoint (checkpoints/latest.json); {_GET_WEIGHTS}")


def _load_shipped(name: str | None, folder: Path | None, map_location: str | torch.device):
    if folder is None and pretrained_dir() is None:
        raise WeightsUnavailableError(
            f"no shipped weights: no pretrained/manifest.json next to tkh and {ENV} is not set; {_GET_WEIGHTS}")
    entry = verify_model(name, folder)
    root = folder if folder is not None else pretrained_dir()
    state: dict[str, torch.Tensor] = {}
    header: dict[str, str] = {}
    for f in entry["files"]:
        path = root / f["path"]
        try:
            with safe_open(str(path), framework="pt", device="cpu") as sf:
                header = header or (sf.metadata() or {})
                state.update({k: sf.get_tensor(k) for k in sf.keys()})
        except Exception as exc:  # noqa: BLE001 — safetensors' own error types
            raise CheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__}); {_FIX}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{root / entry['files'][0]['path']} has no '{FORMAT}' header; {_FIX}")
    cfg = Config.from_dict(json.loads(header["config"]), source=str(root / "manifest.json"))
    num_videos = int(state["D.W"].shape[0]) if "D.W" in state else 0
    # Built on the CPU, not the meta device: spectral norm's set-up takes ~20x longer there (13 s vs 0.7 s).
    model = TalkingHeadModel(cfg, num_videos)
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"shipped model {entry['name']!r} in {root} does not match its config "
                              f"({str(exc).splitlines()[-1].strip()}); {_FIX}") from None
    model.meta = json.loads(header.get("meta", "{}"))
    model.weights_name = entry["name"]
    model.weights_sha256 = fingerprint([f["sha256"] for f in entry["files"]])
    return model.to(map_location).eval()


def write_manifest(checkpoint: str | os.PathLike | Any, name: str, out_dir: str | os.PathLike,
                   metrics: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                   description: str = "", default: bool = True, max_shard_bytes: int = MAX_SHARD_BYTES,
                   dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Turn a training checkpoint into shipped weights: fp16 shards (< 16 MiB each, D.W dropped) + manifest.

    checkpoint: a `TalkingHeadModel.save` file (e.g. a run's checkpoints/…safetensors) or a model.
    Writes `<out_dir>/<name>-0000i-of-0000n.safetensors` and adds / replaces the entry `name` in
    `<out_dir>/manifest.json` (other entries are kept). Returns the entry. metrics / training are free-form
    dicts stored as given (see pretrained/README.md for the fields tkh writes).
    """
    model = checkpoint if isinstance(checkpoint, TalkingHeadModel) else TalkingHeadModel.load(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, t in model.state_dict().items():
        t = t.detach().cpu()
        if k == "D.W":
            t = t[:0]  # one row per training video: not needed for few-shot use (sec. 3.3: w' = w0 + ê)
        if t.is_floating_point():
            t = t.to(dtype)
        state[k] = t.contiguous().clone()
    # Greedy packing in state-dict order; a single tensor larger than a shard gets its own.
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    header = {"format": FORMAT, "config": json.dumps(model.cfg.to_dict()), "num_videos": "0",
              "meta": json.dumps({"name": name, **(model.meta or {})})}
    for old in out.glob(f"{name}-*-of-*.safetensors"):
        old.unlink()
    files = []
    for i, shard in enumerate(shards, 1):
        fname = f"{name}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(shard, out / fname, metadata=header)
        files.append({"path": fname, "sha256": sha256_of(out / fname), "bytes": (out / fname).stat().st_size})
    counts = model.param_counts()
    counts["D.W"] = 0
    counts["total"] = sum(v for k, v in counts.items() if k in ("E", "G", "D"))
    entry = {"description": description, "config": model.cfg.to_dict(), "param_counts": counts,
             "dtype": str(dtype).replace("torch.", ""), "files": files,
             "training": training or {}, "metrics": metrics or {}}
    manifest = read_manifest(out) if (out / "manifest.json").is_file() else {
        "format": MANIFEST_FORMAT, "default": None, "models": {}}
    manifest["models"][name] = entry
    if default or not manifest.get("default"):
        manifest["default"] = name
    write_json(out / "manifest.json", manifest, indent=2)
    return {"name": name, **entry}
