"""Puppeteer frame latency: landmarks -> rendered frame (batch 1), eager float32 vs the engine's precisions.

One frame = edit the portrait's landmarks (`tkh.landmarks.edit`, jaw opening varies every frame) ->
rasterize y -> G(y; ψ) -> uint8 (S, S, 3) on the host: exactly what a slider move in `tkh.puppet` costs.

Variants (same adapted portrait, same frames, timed in turns frame by frame so a busy machine slows
them alike):
- eager-fp32: the meta-trained G as it is (spectral norm re-normalises its weights on every call),
  `torch.no_grad`, float32, default memory format. The baseline.
- engine fp32 / bf16 / bf16+channels_last / auto: `tkh.puppet.Puppet` (spectral norm folded into plain
  weights once, `torch.inference_mode`) with `tkh.precision` policies amp/channels_last = off/off,
  bf16/off, bf16/on and auto/auto (what the puppeteer picks on this machine; the verdict is in the row).
- engine+compile (`torch.compile`), engine+cudagraphs (CUDA: `torch.compile(mode="reduce-overhead")`).

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


def frame_fn(G, psi: torch.Tensor, neutral: np.ndarray, size: int, device: torch.device):
    """fn(i) -> uint8 frame: edit -> rasterize -> G.render(y, ψ) -> host uint8, eager float32 (the baseline)."""
    from tkh.landmarks import edit, rasterize
    from tkh.tensors import to_tensor, to_uint8

    psi = psi.detach().to(device, torch.float32).reshape(1, -1)

    def fn(i: int) -> np.ndarray:
        y = to_tensor(rasterize(edit(neutral, jaw_open=(i % 10) / 10), size), batch=True, device=device)
        with torch.no_grad():
            return to_uint8(G(y, psi)[0])

    return fn


ENGINE = {"engine fp32": ("off", "off"), "engine bf16": ("bf16", "off"), "engine bf16+channels_last": ("bf16", "on"),
          "engine auto": ("auto", "auto")}


def variants(adapted, puppet, device: torch.device, want_compile: bool, names: list[str] | None = None
             ) -> list[tuple[str, Any, str]]:
    """(name, fn, note) for each variant that applies to this device (and is in `names`, default all)."""
    import copy

    from tkh.puppet import Puppet

    cuda = device.type == "cuda"
    base_G = copy.deepcopy(adapted.G).to(device).eval()
    out = [("eager-fp32", frame_fn(base_G.render, adapted.psi, puppet.neutral, puppet.size, device),
            "G as trained (spectral norm live), no_grad, fp32")]
    for name, (amp, cl) in ENGINE.items():
        if names and name not in names:
            continue
        engine = Puppet(adapted, device=device, amp=amp, channels_last=cl, warmup=False)
        out.append((name, lambda i, e=engine: e.render(jaw_open=(i % 10) / 10), engine.precision.describe()))
    if want_compile:
        engine = Puppet(adapted, device=device, compile=True, warmup=False)
        if not cuda:
            engine._render_fn = torch.compile(engine.G.render, dynamic=False)
        out.append(("engine+compile", lambda i, e=engine: e.render(jaw_open=(i % 10) / 10), "inductor"))
        if cuda:
            graphs = Puppet(adapted, device=device, warmup=False)
            graphs._render_fn = torch.compile(graphs.G.render, mode="reduce-overhead", dynamic=False)
            out.append(("engine+cudagraphs", lambda i, e=graphs: e.render(jaw_open=(i % 10) / 10),
                        "torch.compile mode=reduce-overhead"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None, help="default: tiny small (+ paper-256 on CUDA)")
    p.add_argument("--compile", action="store_true", help="also torch.compile (CUDA: always; CPU: slow to compile)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--variants", nargs="+", default=None, choices=list(ENGINE),
                   help="engine variants beside eager-fp32 (default: all; on a CPU without bf16 units, those "
                        "forcing bf16 left out)")
    args = p.parse_args(argv)
    device = C.setup(args)
    cuda = device.type == "cuda"
    names = args.variants or C.drop_forced_bf16(list(ENGINE), device, ENGINE)
    configs = args.configs or (["tiny"] if args.dry_run else ["tiny", "small", "paper-256"])
    iters = args.iters or (2 if args.dry_run else 5 if args.quick and not cuda else 10 if args.quick or not cuda else 30)
    warmup = 1 if args.dry_run else 3 if not cuda else 10
    rows: list[dict[str, Any]] = []
    for config in configs:
        adapted, puppet = build(config, device)
        named = variants(adapted, puppet, device, args.compile or (cuda and not args.dry_run), names)
        w = warmup + (2 if any("compile" in n for n, _, _ in named) else 0)
        times = C.timeit_interleaved({n: fn for n, fn, _ in named}, device, warmup=w, iters=iters,
                                     max_seconds=120 if cuda else 90)
        target = TARGET_MS.get((device.type, config))
        for name, _, note in named:
            t = times[name]
            rows.append({"config": config, "px": puppet.size, "device": device.type, "variant": name, **t,
                         "fps": 1000 / t["median_ms"], "target_ms": target,
                         "meets_target": None if target is None else t["median_ms"] <= target, "note": note})
            print(f"  {config} {name}: median {t['median_ms']:.1f} ms over {t['n']} frames", flush=True)
        C.add_speedup(rows, config, "eager-fp32", "median_ms")
    if not cuda:
        rows.append({"config": "paper-256", "px": 256, "device": "cuda", "variant": "engine (bf16+cudagraphs)",
                     "note": C.NO_GPU, "target_ms": 5.0})
    C.print_table(f"Puppeteer frame, batch 1 ({device}; median/p90 ms after warm-up)", rows,
                  ["config", "px", "device", "variant", "median_ms", "p90_ms", "cpu_median_ms", "cpu_min_ms", "fps",
                   "speedup", "cpu_speedup", "target_ms", "meets_target", "note"])
    C.write_json("puppet_frame", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
