"""Puppeteer frame latency: landmarks -> rendered frame (batch 1), eager float32 vs the fast path (issue 9).

One frame = edit the portrait's landmarks (`tkh.landmarks.edit`, jaw opening varies every frame) ->
rasterize y -> G(y; ψ) -> uint8 (S, S, 3) on the host: exactly what a slider move in `tkh.puppet` costs.

Variants (same adapted portrait, same frames):
- eager-fp32: the meta-trained G as it is (spectral norm re-normalises its weights on every call),
  `torch.no_grad`, float32, default memory format. The baseline.
- engine: `tkh.puppet.Puppet` (spectral norm folded into plain weights once, `torch.inference_mode`;
  on CUDA also bf16 autocast + channels_last).
- engine+channels_last (CPU), engine+compile (`torch.compile`), engine+cudagraphs (CUDA:
  `torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs).

Targets: small config (128 px) <= 500 ms on 2 CPU cores; paper-256 (256 px) <= 5 ms on an H100.
Weights are random (speed does not depend on their values); the portrait is adapted FF with dlib landmarks.

    python benchmarks/puppet_frame.py [--quick] [--configs tiny small paper-256] [--compile]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import _common as C

TARGET_MS = {("cpu", "small"): 500.0, ("cuda", "paper-256"): 5.0}


def build(config: str, device: torch.device):
    from tkh.adapt import adapt
    from tkh.puppet import Puppet

    model = C.random_model(config, torch.device("cpu"))
    adapted = adapt(model, [C.grace_hopper()], mode="ff", progress=False, backend="dlib",
                    landmarks=C.portrait_landmarks())
    return adapted, Puppet(adapted, device=device, warmup=False)


def frame_fn(G, psi: torch.Tensor, neutral: np.ndarray, size: int, device: torch.device, bf16: bool,
             channels_last: bool, no_grad_only: bool = False):
    """fn(i) -> uint8 frame: edit -> rasterize -> G.render(y, ψ) -> host uint8."""
    from tkh.landmarks import edit, rasterize

    psi = psi.detach().to(device, torch.float32).reshape(1, -1)
    grad_ctx = torch.no_grad if no_grad_only else torch.inference_mode

    def fn(i: int) -> np.ndarray:
        lms = edit(neutral, jaw_open=(i % 10) / 10)
        y = torch.from_numpy(rasterize(lms, size)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1
        with grad_ctx(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if channels_last:
                y = y.contiguous(memory_format=torch.channels_last)
            x = G(y, psi)
            img = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
        return img.cpu().numpy()

    return fn


def variants(adapted, puppet, device: torch.device, want_compile: bool) -> list[tuple[str, Any, str]]:
    """(name, fn, note) for each variant that applies to this device."""
    import copy

    cuda = device.type == "cuda"
    size, neutral = puppet.size, puppet.neutral
    base_G = copy.deepcopy(adapted.G).to(device).eval()
    out = [("eager-fp32", frame_fn(base_G.render, adapted.psi, neutral, size, device, False, False, True),
            "G as trained (spectral norm live), no_grad, fp32")]
    G = puppet.G  # SN folded, eval, no grad state
    if cuda:
        out.append(("engine (bf16+channels_last)", frame_fn(G.render, puppet.psi, neutral, size, device, True, True),
                    "tkh.puppet defaults on CUDA"))
        if want_compile:
            cg = torch.compile(G.render, dynamic=False)
            out.append(("engine+compile", frame_fn(cg, puppet.psi, neutral, size, device, True, True), "inductor"))
            rg = torch.compile(G.render, mode="reduce-overhead", dynamic=False)
            out.append(("engine+cudagraphs", frame_fn(rg, puppet.psi, neutral, size, device, True, True),
                        "torch.compile mode=reduce-overhead"))
        return out
    out.append(("engine (fp32)", frame_fn(G.render, puppet.psi, neutral, size, device, False, False),
                "tkh.puppet on CPU: SN folded, inference_mode"))
    G_cl = copy.deepcopy(G).to(memory_format=torch.channels_last)
    out.append(("engine+channels_last", frame_fn(G_cl.render, puppet.psi, neutral, size, device, False, True), ""))
    out.append(("engine+bf16", frame_fn(G.render, puppet.psi, neutral, size, device, True, False),
                "bf16 autocast on CPU"))
    if want_compile:
        cg = torch.compile(G.render, dynamic=False)
        out.append(("engine+compile", frame_fn(cg, puppet.psi, neutral, size, device, False, False), "inductor"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None, help="default: tiny small (+ paper-256 on CUDA)")
    p.add_argument("--compile", action="store_true", help="also torch.compile (CUDA: always; CPU: slow to compile)")
    p.add_argument("--iters", type=int, default=None)
    args = p.parse_args(argv)
    device = C.setup(args)
    cuda = device.type == "cuda"
    configs = args.configs or (["tiny"] if args.dry_run else ["tiny", "small"] + (["paper-256"] if cuda else []))
    iters = args.iters or (2 if args.dry_run else 5 if args.quick and not cuda else 10 if args.quick or not cuda else 30)
    warmup = 1 if args.dry_run else 3 if not cuda else 10
    rows: list[dict[str, Any]] = []
    for config in configs:
        adapted, puppet = build(config, device)
        for name, fn, note in variants(adapted, puppet, device, args.compile or (cuda and not args.dry_run)):
            # bf16 autocast on a CPU without bf16 units is ~20x slower than fp32 (why the engine stays fp32
            # there): a few frames prove it, more would only burn the time budget.
            slow = not cuda and "bf16" in name
            t = C.timeit(fn, device, warmup=1 if slow else warmup + (2 if "compile" in name or "cudagraph" in name
                                                                     else 0),
                         iters=iters, max_seconds=10 if slow else 60 if cuda else 20)
            target = TARGET_MS.get((device.type, config))
            rows.append({"config": config, "px": puppet.size, "device": device.type, "variant": name, **t,
                         "fps": 1000 / t["median_ms"], "target_ms": target,
                         "meets_target": None if target is None else t["median_ms"] <= target, "note": note})
            print(f"  {config} {name}: median {t['median_ms']:.1f} ms over {t['n']} frames", flush=True)
        base = next(r for r in rows if r["config"] == config and r["variant"] == "eager-fp32")
        for r in rows:
            if r["config"] == config:
                r["speedup"] = base["median_ms"] / r["median_ms"]
    if not cuda:
        rows.append({"config": "paper-256", "px": 256, "device": "cuda", "variant": "engine (bf16+cudagraphs)",
                     "note": C.NO_GPU, "target_ms": 5.0})
    C.print_table(f"Puppeteer frame, batch 1 ({device}; median/p90 ms after warm-up)", rows,
                  ["config", "px", "device", "variant", "median_ms", "p90_ms", "cpu_median_ms", "fps", "speedup", "target_ms",
                   "meets_target", "note"])
    C.write_json("puppet_frame", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
