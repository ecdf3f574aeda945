"""`tkh demo`: the main job. One portrait, the shipped weights, a few minutes on a CPU, an animation.

    tkh demo [--portrait grace-hopper|mona-lisa|PATH] [--out out]

1. the portrait (`tkh.portraits`: Grace Hopper offline by default; the Mona Lisa downloaded and verified,
   falling back to Grace Hopper with a clear message when that fails);
2. the shipped meta-trained weights from `pretrained/` (`tkh.pretrained.load`, checksums verified);
3. one-shot fine-tuning (sec. 3.3; `adapt(mode="ft")`) for a fixed number of steps (`demo_settings`:
   `CPU_STEPS` on a CPU, `GPU_STEPS` on a GPU), so a busy machine gives the same result later, under a time
   cap that only stops a far too slow machine, and says so;
4. a scripted performance (smile, blink, open mouth, turn head; `tkh.animate`), written as
   out/animation.mp4 and out/animation.gif (portrait | landmarks | generated) and out/contact_sheet.png
   (the portrait, the landmark images and generated frames at each edit's peak).

Every file is labelled synthetic in its metadata and carries a visible caption.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from tkh import precision, pretrained
from tkh.adapt import adapt, default_device
from tkh.animate import animate, script_controls
from tkh.atomic import write_json
from tkh.config import AdaptConfig
from tkh.errors import WeightsUnavailableError
from tkh.landmarks import rasterize
from tkh.media import add_caption, write_image
from tkh.portraits import load_portrait

__all__ = ["DEMO_SCRIPT", "contact_sheet", "demo_settings", "run_demo"]

DEMO_SCRIPT = "smile,blink,open_mouth,turn_left,turn_right"
CAPTION = "SYNTHETIC - tkh"
# FT steps (`demo_settings`; `tkh demo --help` quotes them). 40 steps (the adapt default) leave the shipped
# CPU-trained weights far from the portrait (mean |x - x̂| 0.17 on grace-hopper); 150 reach ~0.12 and look like her.
CPU_STEPS = 150
GPU_STEPS = 200


def demo_settings(device: torch.device) -> dict[str, Any]:
    """FT steps, time cap and frames per edit. The budget is the step count, so a busy machine gives the same
    result, later; the time cap (which warns when it cuts FT short) only keeps a very slow machine from
    running for ever."""
    if device.type == "cuda":
        return {"steps": GPU_STEPS, "max_seconds": 120.0, "frames_per_edit": 16}
    # With L_CNT = VGG16 + dlib: ~1.1 s a step on 2 busy cores with bf16 units (~3.7 s on average when other
    # jobs shared them); the cap allows ~6 s a step.
    return {"steps": CPU_STEPS, "max_seconds": 900.0, "frames_per_edit": 12}


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    scale = max(0.35, img.shape[1] / 400)
    cv2.putText(out, text, (4, int(14 * scale / 0.5) if scale > 0.5 else 14), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 0), 1, cv2.LINE_AA)
    return out


def contact_sheet(portrait_crop: np.ndarray, landmark_images: list[np.ndarray], frames: list[np.ndarray],
                  names: list[str], panel: int = 160) -> np.ndarray:
    """Two rows: [portrait | landmark image per edit] over [label | generated frame per edit], RGB uint8."""
    def fit(im: np.ndarray) -> np.ndarray:
        return cv2.resize(im, (panel, panel), interpolation=cv2.INTER_CUBIC if im.shape[0] < panel else cv2.INTER_AREA)

    top = [_label(fit(portrait_crop), "portrait")] + [_label(fit(y), n) for y, n in zip(landmark_images, names)]
    blank = np.full((panel, panel, 3), 32, np.uint8)
    bottom = [_label(blank, "generated:")] + [fit(f) for f in frames]
    sheet = np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)
    band = np.full((max(24, panel // 4), sheet.shape[1], 3), 16, np.uint8)  # room for the visible caption
    return np.concatenate([sheet, band], axis=0)


def _peaks(script: str, frames_per_edit: int) -> list[int]:
    """Index of the strongest frame of each edit of the script."""
    peaks = []
    names = script.split(",")
    for k in range(len(names)):
        ctrl = script_controls(names[k], frames_per_edit)
        strength = [sum(abs(v) for v in c.values()) for c in ctrl]
        peaks.append(k * frames_per_edit + int(np.argmax(strength)))
    return peaks


def _load_weights(model: str | None, device: torch.device):
    """`tkh.pretrained.load`, with what a demo user can do when there are no weights (one line, no traceback)."""
    try:
        return pretrained.load(model, map_location=device)
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(
            f"the demo needs meta-trained weights. {str(exc).rstrip('.')}. To train your own: `tkh preprocess VIDEOS "
            "--out CACHE --size 128`, `tkh train --config configs/small.yaml --data CACHE --out runs/mine`, then "
            "`tkh demo --model runs/mine`") from None


def run_demo(portrait: str = "grace-hopper", out_dir: str | Path = "out", model: str | None = None,
             device: str | torch.device | None = None, steps: int | None = None, frames_per_edit: int | None = None,
             script: str = DEMO_SCRIPT, progress: bool = True, verbose: bool = True, box: Any = None,
             face: int | None = None) -> dict[str, Any]:
    """Adapt the shipped weights to `portrait` and animate it; returns paths and timings (see module doc).

    model: a shipped name or checkpoint path (default: the manifest's default). steps / frames_per_edit:
    override `demo_settings`. box: the face's (x, y, w, h) given by hand, face=N the N-th largest of
    several (`tkh.landmarks.detect`). Writes out_dir/animation.mp4, animation.gif, contact_sheet.png, demo.json.
    """
    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    device = torch.device(device) if device is not None else default_device()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(device)
    if steps is not None:
        settings["steps"] = steps
    if frames_per_edit is not None:
        settings["frames_per_edit"] = frames_per_edit

    net = _load_weights(model, device)  # first: without weights there is nothing to do (and no download)
    p = load_portrait(portrait)
    cfg = AdaptConfig(**{**vars(net.cfg.adapt), "mode": "ft", "steps": settings["steps"],
                         "max_seconds": settings["max_seconds"]})
    # The precision verdict in the first line, before the minutes it decides (adapt resolves the same policy,
    # memoised: the CPU probe runs once)
    policy = precision.resolve(cfg.amp, cfg.channels_last, device, net.cfg.model)
    label = f"{net.weights_name} ({net.cfg.model.name}, {net.cfg.model.image_size}px)"
    say(f"tkh demo: portrait {p.name}; weights {label}; device {device}, {policy.describe()}; "
        f"{settings['steps']} fine-tuning steps")
    if p.fallback_reason:
        say(f"tkh demo: {p.fallback_reason}")
    t_load = time.perf_counter() - t0

    adapted = adapt(net, [p.image], cfg=cfg, device=device, progress=progress, box=box, face=face)
    steps_done = len(adapted.history)
    say(f"tkh demo: fine-tuned {steps_done} steps in {adapted.seconds:.1f}s")

    t1 = time.perf_counter()
    paths = [out / "animation.mp4", out / "animation.gif"]
    res = animate(adapted, script, paths, side_by_side=True, caption=CAPTION,
                  frames_per_edit=settings["frames_per_edit"], fps=12.0)
    track = res["track"]
    names = script.split(",")
    peaks = _peaks(script, settings["frames_per_edit"])
    size = adapted.image_size
    sheet = contact_sheet(adapted.crops[0], [rasterize(track[i], size) for i in peaks],
                          list(adapted.render(track[peaks])), names)
    sheet_path = write_image(out / "contact_sheet.png", add_caption(sheet, f"{CAPTION} ({net.weights_name})"),
                             model=f"{net.weights_name} (FT)")
    t_anim = time.perf_counter() - t1
    total = time.perf_counter() - t0
    summary = {"portrait": p.name, "portrait_source": p.source, "credit": p.credit, "fallback": p.fallback_reason,
               "model": net.weights_name, "model_sha256": net.weights_sha256, "device": str(device),
               "torch_threads": torch.get_num_threads(), "ft_steps": steps_done, "precision": adapted.precision,
               "reconstruction_error": adapted.reconstruction_error(),
               "frames": res["frames"], "seconds": {"load": round(t_load, 2), "adapt": round(adapted.seconds, 2),
                                                    "animate": round(t_anim, 2), "total": round(total, 2)},
               "files": [str(x) for x in [*paths, sheet_path]]}
    write_json(out / "demo.json", summary, indent=2)  # atomic, as every file tkh writes
    say(f"tkh demo: {res['frames']} frames in {total:.0f}s total. Wrote (labelled synthetic):")
    for f in summary["files"]:
        say(f"  {f}")
    return summary
