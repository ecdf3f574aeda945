"""Turn a meta-training checkpoint into the shipped weights, measured on held-out identities (issue 8).

    python pretrained/make.py runs/small-cpu/checkpoints/<last>.safetensors --name small \
        --heldout ../shared/talking-heads/{lp_d5.mp4,grid_swiz3n.mpg,vox_lia_1.mp4} \
        --painting ../shared/portraits/mona_lisa.jpg --training runs/small-cpu/training.json \
        --description "tkh small (128 px), meta-trained on ..."

1. self-reenactment on every held-out clip (`tkh.evaluate.evaluate_self`: adapt on the first half of the
   clip, reconstruct frames of the second half): 1-shot and 8-shot, FF and FT -> SSIM, PSNR, LPIPS, CSIM,
   dlib's identity distance to the source (and the fraction of frames under its 0.6 same-person threshold),
   the landmark error of the generated frames, and the fraction of face pixels in landmark colours;
2. cross-reenactment of a painting driven by the first held-out clip (CSIM to the painting, landmark error);
3. a figure `pretrained/heldout.png` (real | FF-1 | FT-1 | FF-8 | FT-8 per clip, and the painting's row);
4. fp16 shards + `pretrained/manifest.json` with the metrics (`tkh.pretrained.write_manifest`).

The landmark backend is dlib (offline, deterministic), so `tests/test_pretrained.py` can check the
manifest's FF numbers again on a held-out clip.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CELLS = [("ff", 1), ("ft", 1), ("ff", 8), ("ft", 8)]
FIG_FRAMES = 2  # held-out frames shown per clip in the figure
# what each held-out cell records (tkh.evaluate.evaluate_self); LPIPS, identity distance and the landmark-colour
# fraction were added with issue 13 (None in manifests made before)
METRICS = ("ssim", "psnr", "lpips", "csim", "identity_distance", "same_person_fraction", "landmark_error",
           "palette_fraction", "palette_fraction_real")


def evaluate_heldout(model, clips: list[Path], ft_steps: int, backend: str, device: str = "cpu",
                     inputs: dict[str, dict] | None = None, skip: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """metrics[clip][f"{mode}-{shots}"] and the frames for the figure.

    inputs: per clip stem, the `frames` and `track` that `evaluate_self` takes instead of decoding the clip (a
    machine without the clips or ffmpeg: tools/gpu_session.py); skip: metric groups to leave out (evaluate_self)."""
    from tkh.evaluate import evaluate_self

    metrics, frames = {}, {}
    for clip in clips:
        metrics[clip.stem], frames[clip.stem] = {}, {}
        for mode, shots in CELLS:
            t0 = time.perf_counter()
            res = evaluate_self(model, clip, shots=shots, mode=mode, steps=ft_steps if mode == "ft" else None,
                                n_eval=8, device=device, backend=backend, return_frames=True, skip=skip,
                                **(inputs or {}).get(clip.stem, {}))
            frames[clip.stem]["real"] = res.pop("_real")
            frames[clip.stem][f"{mode}-{shots}"] = res.pop("_frames")
            res.pop("_adapted")
            metrics[clip.stem][f"{mode}-{shots}"] = {k: res.get(k) for k in (*METRICS, "seconds")}
            print(f"{clip.stem:14s} {mode}-{shots}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in metrics[clip.stem][f"{mode}-{shots}"].items() if v is not None)
                + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return metrics, frames


def mean_table(metrics: dict) -> dict:
    """Average of each metric over the held-out clips, per mode-shots cell."""
    out = {}
    for cell in (f"{m}-{k}" for m, k in CELLS):
        out[cell] = {}
        for key in METRICS:
            vals = [metrics[c][cell].get(key) for c in metrics if metrics[c][cell].get(key) is not None]
            out[cell][key] = round(float(np.mean(vals)), 4) if vals else None
    return out


# Which way each held-out metric improves (the landmark-colour fraction of the real frames is a base rate).
HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "lpips": False, "csim": True, "identity_distance": False,
                    "same_person_fraction": True, "landmark_error": False, "palette_fraction": False}


def compare(new: dict, base: dict) -> tuple[list[str], bool]:
    """Markdown rows (cell, metric, new, shipped, better?) of two `mean_table`s, and whether the new weights win
    on every metric both have."""
    rows = ["| cell | metric | new | shipped | better |", "|---|---|---|---|---|"]
    wins = True
    for cell in new:
        for metric, higher in HIGHER_IS_BETTER.items():
            a, b = new[cell].get(metric), (base.get(cell) or {}).get(metric)
            if a is None or b is None:
                continue
            better = a > b if higher else a < b
            wins &= better
            mark = "yes" if better else "tie" if a == b else "no"
            rows.append(f"| {cell} | {metric} | {a:.4f} | {b:.4f} | {mark} |")
    return rows, wins


def figure(frames: dict, painting: dict | None, path: Path, panel: int = 96) -> Path:
    """One row per (clip, held-out frame): real | FF-1 | FT-1 | FF-8 | FT-8; then painting | its reenactment."""
    import cv2

    from tkh.media import add_caption, write_image

    def fit(im: np.ndarray) -> np.ndarray:
        return cv2.resize(im, (panel, panel), interpolation=cv2.INTER_AREA)

    def label(im: np.ndarray, text: str) -> np.ndarray:
        im = im.copy()
        cv2.putText(im, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
        return im

    cols = ["real"] + [f"{m}-{k}" for m, k in CELLS]
    rows = []
    for clip, f in frames.items():
        for j in np.linspace(0, len(f["real"]) - 1, FIG_FRAMES).round().astype(int):
            rows.append(np.concatenate([label(fit(f[c][j]), f"{clip} {c}" if c == "real" else c.upper())
                                        for c in cols], axis=1))
    if painting is not None:
        shown = [fit(painting["crop"])] + [fit(x) for x in painting["frames"][:len(cols) - 1]]
        shown[0] = label(shown[0], "painting (FT-1)")
        rows.append(np.concatenate(shown, axis=1))
    sheet = np.concatenate(rows, axis=0)
    return write_image(path, add_caption(sheet, "SYNTHETIC - tkh held-out results"), model="tkh shipped weights")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", default="small")
    ap.add_argument("--heldout", type=Path, nargs="+", required=True, help="held-out talking-head clips")
    ap.add_argument("--painting", type=Path, help="a painting for the cross-reenactment row of the figure")
    ap.add_argument("--training", type=Path, help="JSON with the training record (data, steps, compute, command)")
    ap.add_argument("--description", required=True, help="one line for the manifest: size, training time, data")
    ap.add_argument("--ft-steps", type=int, default=40)
    ap.add_argument("--backend", default="dlib")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--run", type=Path, help="the training run folder: its videos.json (train / held-out split) goes "
                    "into the manifest")
    ap.add_argument("--compare", type=Path, help="a folder whose manifest.json has the same model measured on the same "
                    "held-out clips (e.g. the shipped weights, made with --out elsewhere): writes comparison.md")
    args = ap.parse_args()
    torch.manual_seed(0)

    from tkh import pretrained
    from tkh.evaluate import evaluate_cross

    model = pretrained.load(args.checkpoint)
    # Evaluate what ships: the fp16-rounded weights, not the float32 checkpoint.
    model.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                           for k, v in model.state_dict().items()})
    per_clip, frames = evaluate_heldout(model, args.heldout, args.ft_steps, args.backend)
    metrics = {"protocol": "self-reenactment on held-out identities: adapt on K frames of the clip's first half, "
                           "reconstruct 8 frames of its second half (tkh.evaluate.evaluate_self, dlib landmarks); "
                           f"FT = {args.ft_steps} fine-tuning steps",
               "heldout": [c.stem for c in args.heldout], "mean": mean_table(per_clip), "per_clip": per_clip}
    painting = None
    if args.painting:
        res = evaluate_cross(model, [str(args.painting)], args.heldout[0], mode="ft", shots=1, steps=args.ft_steps,
                             max_frames=60, device="cpu", backend=args.backend, return_frames=True)
        adapted = res.pop("_adapted")
        gen = res.pop("_frames")
        res.pop("_landmarks")
        pick = np.linspace(0, len(gen) - 1, len(CELLS)).round().astype(int)
        painting = {"crop": adapted.crops[0], "frames": gen[pick]}
        metrics["painting"] = {"portrait": args.painting.name, "driver": args.heldout[0].stem, "mode": "ft-1",
                               **{k: res.get(k) for k in ("csim", "identity_distance", "same_person_fraction",
                                                          "palette_fraction", "landmark_error", "detected_fraction")}}
        print("painting:", metrics["painting"], flush=True)
    fig = figure(frames, painting, args.out / "heldout.png")
    training = json.loads(args.training.read_text()) if args.training else {}
    if args.run and (args.run / "videos.json").is_file():
        training["split"] = json.loads((args.run / "videos.json").read_text())
    entry = pretrained.write_manifest(model, args.name, args.out, metrics=metrics, training=training,
                                      description=args.description)
    print(json.dumps(metrics["mean"], indent=1))
    if args.compare:
        base = json.loads((args.compare / "manifest.json").read_text())["models"][args.name]["metrics"]
        if base.get("heldout") != metrics["heldout"]:
            raise SystemExit(f"--compare: {args.compare} was measured on {base.get('heldout')}, not "
                             f"{metrics['heldout']}: run make.py on those clips there first")
        rows, wins = compare(metrics["mean"], base["mean"])
        text = "\n".join([f"Held-out means over {len(metrics['heldout'])} clips, {args.checkpoint} vs {args.compare}:",
                          "", *rows, "", f"new better on every metric: {'yes' if wins else 'no'}"])
        (args.out / "comparison.md").write_text(text + "\n")
        print(text)
    print(f"wrote {fig} and {len(entry['files'])} shard(s) + manifest.json in {args.out}")


if __name__ == "__main__":
    main()
