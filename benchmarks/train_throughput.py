"""Meta-training throughput (sec. 3.2): images/s of full steps, float32 vs bf16 autocast / channels_last side by side.

One step is what `tkh.train.train` runs: `tkh.train.step.run_step` with the `MetaStep` objective (x̂ rendered
once, `d_steps_per_g` discriminator phases, one E/G phase), the same optimisers and losses, L_CNT with
whichever real perceptual networks load offline. Batches are random tensors of the episode shapes (B
episodes of K frames + a target): speed does not depend on the pixel values. images/s = B / step time
(one generated target image per episode per step); frames/s = B (K + 1) / step time.

Variants (`tkh.precision` policies): "fp32" (amp off, default layout: the float32 path), "bf16",
"bf16+channels_last", and "auto" (what `train.amp=auto`, `train.channels_last=auto` pick on this machine,
the probe's verdict recorded in the row); on CUDA also "bf16+channels_last+compile". Every variant runs in
the same process, interleaved step by step, so a busy machine slows them alike; `cpu_median_ms` is this
process's CPU time per step.

Peak memory during the timed steps: torch.cuda.max_memory_allocated on CUDA, the process's peak RSS
(VmHWM, reset after the model is built) on the CPU; step_mem_mib = that peak minus the memory in use
before the first step (what training adds: activations, gradients, Adam states).
`--find-max-batch` (CUDA) doubles B until out of memory, then bisects.

    python benchmarks/train_throughput.py [--quick] [--configs small] [--batch 2] [--k 4] [--variants fp32 auto]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import _common as C

POLICIES = {"fp32 before": ("off", "off"), "fp32": ("off", "off"), "bf16": ("bf16", "off"),
            "bf16+channels_last": ("bf16", "on"), "auto": ("auto", "auto"), "bf16+channels_last+compile": ("bf16", "on")}
# "fp32 before": the float32 step as issue 12 found it (torch's default Adam, not tkh.train.step.adam's fused
# kernel): the baseline of its speed targets. Every other variant steps with the fused Adam tkh trains with.
BEFORE = "fp32 before"


def make_step(config: str, device: torch.device, batch: int, variant: str = "fp32", k: int | None = None,
              image_size: int | None = None):
    """fn(i) running one training step on a random batch; returns (fn, info dict)."""
    from tkh import precision
    from tkh.config import load_config
    from tkh.losses import PerceptualLoss
    from tkh.train.objectives import MetaStep
    from tkh.train.setup import compile_networks, meta_optimizers
    from tkh.train.step import StepContext, make_phases, run_step

    cfg = load_config(config)
    if image_size:
        cfg = cfg.replace(model={"image_size": image_size})
    loss_cfg = dataclasses.replace(cfg.loss, allow_no_perceptual=True)
    k = k or cfg.train.k_shots
    num_videos = max(batch, 8)
    model = C.random_model(cfg, device, num_videos=num_videos)
    policy = precision.resolve(*POLICIES[variant], device, cfg.model)
    policy.prepare(model)
    if variant.endswith("compile"):
        compile_networks(model)
    perceptual = policy.prepare_frozen(PerceptualLoss(loss_cfg, device=device))
    optimizers = meta_optimizers(model, cfg.train)
    if variant == BEFORE:
        optimizers = {n: torch.optim.Adam([{**g, "fused": None} for g in o.param_groups]) for n, o in optimizers.items()}
    objective = MetaStep(model, perceptual, loss_cfg)
    ctx = StepContext(policy, [p for n, p in model.D.named_parameters() if n != "W"], objective, device=device)
    phases = make_phases(cfg.train.d_steps_per_g)
    s = cfg.model.image_size
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return policy.tensor((torch.rand(*shape, generator=g) * 2 - 1).to(device))

    b = {"frames": rnd(batch, k, 3, s, s), "landmarks": rnd(batch, k, 3, s, s), "target": rnd(batch, 3, s, s),
         "target_landmarks": rnd(batch, 3, s, s), "video_index": torch.arange(batch, device=device) % num_videos}
    model.train()

    def step(_: int) -> None:
        run_step(phases, objective, optimizers, b, ctx)

    info = {"k": k, "px": s, "perceptual": perceptual.describe(), "d_steps_per_g": cfg.train.d_steps_per_g,
            "bf16": policy.bf16, "channels_last": policy.channels_last, "precision": policy.describe()}
    return step, info


def measure(config: str, device: torch.device, batch: int, variants: list[str], warmup: int, iters: int,
            k: int | None = None, image_size: int | None = None) -> list[dict[str, Any]]:
    """Every variant's step, built first, then timed in turns (one step of each per round)."""
    steps = {v: make_step(config, device, batch, v, k=k, image_size=image_size) for v in variants}
    # Peak from here on: the steps (weights, activations, gradients, Adam states), not the one-off
    # transients of building the models and loading the perceptual networks (all variants together).
    C.reset_peak_memory(device)
    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else C.rss_mib()
    times = C.timeit_interleaved({v: fn for v, (fn, _) in steps.items()}, device, warmup=warmup, iters=iters,
                                 max_seconds=240)
    peak = C.peak_memory_mib(device)
    rows = []
    for v, (_, info) in steps.items():
        t = times[v]
        sec = t["median_ms"] / 1000
        rows.append({"config": config, "batch": batch, "variant": v, **info, **t, "images_per_s": batch / sec,
                     "frames_per_s": batch * (info["k"] + 1) / sec, "peak_mem_mib": peak, "step_mem_mib": peak - before})
    return rows


def find_max_batch(config: str, device: torch.device, start: int = 8, limit: int = 1024) -> int:
    """Largest B whose fast step fits in GPU memory (doubling, then bisection)."""
    def fits(b: int) -> bool:
        try:
            measure(config, device, b, ["bf16+channels_last+compile"], warmup=1, iters=1)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    lo, hi = 0, start
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None, help="default: paper-256 on CUDA, tiny small on CPU")
    p.add_argument("--batch", type=int, default=None, help="episodes per step (default: 8 on CUDA, 2 on CPU)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--find-max-batch", action="store_true", help="CUDA: the largest batch that fits")
    p.add_argument("--k", type=int, default=None, help="frames per episode (default: the config's; CPU: <= 4)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(POLICIES),
                   help="default: 'fp32 before' fp32 bf16 bf16+channels_last auto (+ compile on CUDA)")
    args = p.parse_args(argv)
    device = C.setup(args)
    cuda = device.type == "cuda"
    configs = args.configs or (["tiny"] if args.dry_run or args.quick and not cuda else
                               ["paper-256"] if cuda else ["tiny", "small"])
    iters = args.iters or (1 if args.dry_run else 3 if args.quick else 5 if not cuda else 20)
    warmup = 1 if args.dry_run or not cuda else 5
    variants = args.variants or ([BEFORE, "auto"] if args.dry_run else
                                 [BEFORE, "fp32", "bf16", "bf16+channels_last", "auto"]
                                 + (["bf16+channels_last+compile"] if cuda else []))
    if not args.variants:
        variants = C.drop_forced_bf16(variants, device, POLICIES)
    rows: list[dict[str, Any]] = []
    for config in configs:
        from tkh.config import load_config

        cfg_k = load_config(config).train.k_shots
        batch = args.batch or (8 if cuda else 2)
        k = args.k or (cfg_k if cuda else min(cfg_k, 4))
        rows += [{"device": device.type, **r} for r in measure(config, device, batch, variants, warmup, iters, k=k)]
        C.add_speedup(rows, config, BEFORE if BEFORE in variants else "fp32", "images_per_s")
    extra: dict[str, Any] = {}
    if cuda and args.find_max_batch:
        extra["max_batch"] = {c: find_max_batch(c, device) for c in configs}
        print(f"largest batch that fits: {extra['max_batch']}")
    if not cuda:
        rows.append({"config": "paper-256", "variant": "bf16+channels_last+compile", "device": "cuda", "batch": 8,
                     "note": C.NO_GPU + " (target: >= 2.5x eager fp32; peak memory at batch 8; max batch in 80 GB)"})
    C.print_table(f"Meta-training throughput ({device}; median step after warm-up, variants interleaved)", rows,
                  ["config", "px", "batch", "k", "variant", "bf16", "channels_last", "device", "median_ms", "p90_ms",
                   "cpu_median_ms", "cpu_min_ms", "images_per_s", "frames_per_s", "speedup", "cpu_speedup", "peak_mem_mib",
                   "perceptual", "note"])
    C.write_json("train_throughput", args, device, rows, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
