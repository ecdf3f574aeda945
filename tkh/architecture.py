"""Looking inside E, G and D: the output shape of every block, what the paper says of it, and a drawing.

`trace(net, *inputs)` runs one forward pass with hooks on the networks' building blocks (tkh.models.blocks)
and lists each block's output shape beside the paper's description of that block (sec. 3.4);
`draw(traces)` draws the three networks as boxes whose height follows the resolution and whose width
follows the channels. Any net built from those blocks works, at any size: the `paper-256` networks can be
traced on the meta device (no memory, no weights) to compare a small config with the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode  # not the meta device: it cannot run autocast

from tkh.config import Config, ModelConfig
from tkh.models import TalkingHeadModel
from tkh.models.blocks import AdaIN, ResBlock, ResBlockDown, ResBlockUp, SelfAttention

__all__ = ["Block", "draw", "format_trace", "paper_description", "trace", "trace_config"]

BLOCKS = (ResBlockDown, ResBlock, ResBlockUp, SelfAttention, AdaIN)


@dataclass
class Block:
    """One block of a traced network: its module path, kind and output shape (batch dimension dropped)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    note: str


def paper_description(net: str, name: str, module: nn.Module) -> str:
    """What sec. 3.4 of the paper says about this block of E, G or D (at 256 px)."""
    if isinstance(module, SelfAttention):
        where = {"E": "at 32×32", "D": "at 32×32", "G": "at 32×32 (down) and 64×64 (up)"}[net]
        return f"self-attention (SAGAN), {where}"
    if isinstance(module, ResBlockDown):
        if net == "G":
            return "downsampling residual block with instance norm"
        if name.endswith("last"):
            return "one more residual block at 4×4 (D only)"
        return "downsampling residual block, no normalisation; 64 → 512 channels, down to 4×4"
    if isinstance(module, ResBlock):
        return "residual block with AdaIN (paper: 5 at 512×16×16)"
    if isinstance(module, ResBlockUp):
        return "upsampling residual block with AdaIN"
    if isinstance(module, AdaIN):
        return "AdaIN, ReLU, conv to RGB, tanh"
    return ""


def trace(net: nn.Module, *inputs: torch.Tensor, name: str | None = None) -> list[Block]:
    """Every building block's output shape in one forward pass of `net` (E, G or D) on `inputs`.

    name: "E", "G" or "D" for the paper's descriptions (default: from the class name). Nested blocks
    (the AdaIN layers inside a residual block) are left out: one row per block of the paper's diagram."""
    kind = name or {"Embedder": "E", "Generator": "G", "Discriminator": "D"}.get(type(net).__name__, "?")
    rows: list[Block] = []
    hooks = []
    nested = {id(sub) for m in net.modules() if isinstance(m, BLOCKS) for sub in m.modules() if sub is not m}
    for path, module in net.named_modules():
        if isinstance(module, BLOCKS) and id(module) not in nested:
            def hook(mod, args, out, path=path):
                out = out[0] if isinstance(out, (tuple, list)) else out
                rows.append(Block(path, type(mod).__name__, tuple(out.shape[1:]), paper_description(kind, path, mod)))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return rows


def trace_config(cfg: Config | ModelConfig, num_videos: int = 1) -> dict[str, list[Block]]:
    """{"E": ..., "G": ..., "D": ...} traces of the networks a config builds, for any size (`paper-256` too).

    Built and run on fake tensors (torch's FakeTensorMode: shapes only, no memory, no weights, no compute);
    spectral norm is left out, as it changes no shape."""
    model_cfg = cfg if isinstance(cfg, ModelConfig) else cfg.model
    model_cfg = ModelConfig(**{**vars(model_cfg), "spectral_norm": False})
    s = model_cfg.image_size
    with FakeTensorMode():
        model = TalkingHeadModel(Config(model=model_cfg), max(num_videos, 1))
        x, y = torch.zeros(1, 3, s, s), torch.zeros(1, model_cfg.landmark_channels, s, s)
        return {"E": trace(model.E, x[:, None], y[:, None]), "G": trace(model.G, y, torch.zeros(1, model_cfg.embed_dim)),
                "D": trace(model.D, x, y, torch.zeros(1, dtype=torch.long))}


def format_trace(blocks: list[Block]) -> str:
    """A text table of a trace: block, output shape (C×H×W), what the paper says of that block."""
    rows = [f"{'block':<16}{'output':>12}   paper (sec. 3.4)"]
    rows += [f"{b.name:<16}{'×'.join(map(str, b.shape)):>12}   {b.note}" for b in blocks]
    return "\n".join(rows)


def draw(traces: dict[str, list[Block]], inputs: dict[str, tuple[int, ...]] | None = None,
         outputs: dict[str, str] | None = None):
    """A figure: one row per network, one box per block, height ∝ resolution, width ∝ log2(channels).

    traces: {"E": trace(...), ...}; inputs: {"E": (6, 64, 64), ...} drawn as the first box of each row;
    outputs: {"E": "ê ∈ R^128", ...} written after the last box. Blocks that take ψ̂ = P·ê (AdaIN) are
    marked with ψ̂."""
    # lazy: matplotlib.pyplot costs 0.42 s to import (python -X importtime); tracing needs none of it
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    colours = {"ResBlockDown": "#4c72b0", "ResBlock": "#dd8452", "ResBlockUp": "#55a868", "SelfAttention": "#c44e52",
               "AdaIN": "#8172b2", "input": "#999999"}
    n = max(len(t) for t in traces.values()) + 1
    adain = ("ResBlock", "ResBlockUp", "AdaIN")
    ends = []
    fig, axes = plt.subplots(len(traces), 1, figsize=(max(8, 1.25 * n), 2.3 * len(traces)), squeeze=False)
    for ax, (net, blocks) in zip(axes[:, 0], traces.items()):
        items = ([("input", (inputs or {}).get(net))] if inputs and net in inputs else []) + \
            [(b.kind, b.shape) for b in blocks]
        top = max(s[-1] if s and len(s) == 3 else 1 for _, s in items)
        x = 0.0
        for j, (kind, shape) in enumerate(items):
            if shape is None:
                continue
            h = 0.25 + 0.75 * (shape[-1] / top if len(shape) == 3 else 0.05)
            w = 0.25 + 0.1 * max(torch.tensor(float(shape[0])).log2().item(), 0)
            ax.add_patch(Rectangle((x, -h / 2), w, h, color=colours.get(kind, "#cccccc"), alpha=0.85))
            label = "×".join(str(s) for s in shape)
            ax.text(x + w / 2, -h / 2 - 0.08, label, ha="center", va="top", fontsize=7)
            ax.text(x + w / 2, h / 2 + 0.05, "attn" if kind == "SelfAttention" else kind.replace("ResBlock", "Res"),
                    ha="center", va="bottom", fontsize=7, rotation=20)
            if kind in adain:
                ax.text(x + w / 2, 0, "ψ̂", ha="center", va="center", fontsize=9, color="w")
            if j:
                ax.add_patch(FancyArrowPatch((x - 0.2, 0), (x, 0), arrowstyle="->", mutation_scale=8))
            x += w + 0.2
        if outputs and net in outputs:
            ax.add_patch(FancyArrowPatch((x - 0.2, 0), (x, 0), arrowstyle="->", mutation_scale=8))
            ax.text(x + 0.05, 0, outputs[net], ha="left", va="center", fontsize=9)
            x += 0.3 + 0.09 * len(outputs[net])
        ends.append(x)
        ax.set_ylim(-0.75, 0.85), ax.axis("off")
        ax.set_title({"E": "embedder E(x, y) → ê", "G": "generator G(y, ê) → x̂",
                      "D": "discriminator D(x, y, i) → r"}.get(net, net), loc="left", fontsize=10)
    for ax in axes[:, 0]:
        ax.set_xlim(-0.1, max(ends))  # one scale for every row: equal boxes look equal
    fig.tight_layout()
    return fig
