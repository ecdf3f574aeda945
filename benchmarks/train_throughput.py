"""Meta-training throughput (sec. 3.2): images/s of full steps, eager fp32 vs bf16 + channels_last + compile.

One step is what `tkh.train.train` runs: `d_steps_per_g` discriminator phases then one E/G phase
(`tkh.train.MetaStep` + the same optimisers and losses, L_CNT with whichever real perceptual networks
load offline). Batches are random tensors of the episode shapes (B episodes of K frames + a target):
speed does not depend on the pixel values. images/s = B / step time (one generated target image per
episode per step); frames/s = B (K + 1) / step time (every frame E and D see).

Peak memory during the timed steps: torch.cuda.max_memory_allocated on CUDA, the process's peak RSS
(VmHWM, reset after the model is built) on the CPU; step_mem_mib = that peak minus the memory in use
before the first step (what training adds: activations, gradients, Adam states).
`--find-max-batch` (CUDA) doubles B until out of memory, then bisects.

On the CPU the defaults are the CPU recipe of the shipped run (batch 2 episodes, K <= 4) and eager
float32 only: this CPU has no bf16 units (bf16 autocast is ~20x slower than fp32 there) and
`torch.compile` of the three networks takes minutes on 2 cores; `--fast` adds that variant anyway.

    python benchmarks/train_throughput.py [--quick] [--configs paper-256] [--batch 8] [--find-max-batch]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import _common as C


def make_step(config: str, device: torch.device, batch: int, fast: bool, k: int | None = None,
              image_size: int | None = None):
    """fn(i) running one training step on a random batch; returns (fn, info dict)."""
    from tkh.config import load_config
    from tkh.losses import PerceptualLoss
    from tkh.train.distributed import DistInfo
    from tkh.train.loop import MetaStep, _compile, _Ctx, make_phases, run_phase

    cfg = load_config(config)
    if image_size:
        cfg = cfg.replace(model={"image_size": image_size})
    loss_cfg = dataclasses.replace(cfg.loss, allow_no_perceptual=True)
    k = k or cfg.train.k_shots
    num_videos = max(batch, 8)
    model = C.random_model(cfg, device, num_videos=num_videos)
    cuda = device.type == "cuda"
    channels_last = fast and cuda
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if fast:
        _compile(model)
    perceptual = PerceptualLoss(loss_cfg, device=device)
    tc = cfg.train
    optimizers = {
        "D": torch.optim.Adam(model.D.parameters(), lr=tc.lr_d, betas=tc.betas),
        "G": torch.optim.Adam([{"params": [*model.E.parameters(), *model.G.parameters()], "lr": tc.lr_eg},
                               {"params": [model.D.W], "lr": tc.lr_d}], betas=tc.betas),
    }
    runner = MetaStep(model, perceptual, loss_cfg)
    frozen = [p for n, p in model.D.named_parameters() if n != "W"]
    ctx = _Ctx(device, DistInfo(), torch.bfloat16 if fast else None, False, frozen, model)
    phases = make_phases(tc.d_steps_per_g)
    s = cfg.model.image_size
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        t = (torch.rand(*shape, generator=g) * 2 - 1).to(device)
        return t.contiguous(memory_format=torch.channels_last) if channels_last and t.ndim == 4 else t

    b = {"frames": rnd(batch, k, 3, s, s), "landmarks": rnd(batch, k, 3, s, s), "target": rnd(batch, 3, s, s),
         "target_landmarks": rnd(batch, 3, s, s), "video_index": torch.arange(batch, device=device) % num_videos}
    model.train()

    def step(_: int) -> None:
        fake = None
        for phase in phases:
            _, _, fake = run_phase(phase, runner, optimizers, b, fake, ctx)

    info = {"k": k, "px": s, "perceptual": perceptual.describe(), "d_steps_per_g": tc.d_steps_per_g}
    return step, info


def measure(config: str, device: torch.device, batch: int, fast: bool, warmup: int, iters: int,
            k: int | None = None, image_size: int | None = None) -> dict[str, Any]:
    step, info = make_step(config, device, batch, fast, k=k, image_size=image_size)
    # Peak from here on: the steps (weights, activations, gradients, Adam states), not the one-off
    # transients of building the model and loading the perceptual networks.
    C.reset_peak_memory(device)
    before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else C.rss_mib()
    t = C.timeit(step, device, warmup=warmup, iters=iters, max_seconds=90)
    sec = t["median_ms"] / 1000
    peak = C.peak_memory_mib(device)
    return {"config": config, "batch": batch, **info, **t, "images_per_s": batch / sec,
            "frames_per_s": batch * (info["k"] + 1) / sec, "peak_mem_mib": peak, "step_mem_mib": peak - before}


def find_max_batch(config: str, device: torch.device, start: int = 8, limit: int = 1024) -> int:
    """Largest B whose fast step fits in GPU memory (doubling, then bisection)."""
    def fits(b: int) -> bool:
        try:
            measure(config, device, b, True, warmup=1, iters=1)
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
    p.add_argument("--fast", action="store_true", help="CPU: also the bf16 + compile variant (slow on CPUs)")
    args = p.parse_args(argv)
    device = C.setup(args)
    cuda = device.type == "cuda"
    configs = args.configs or (["tiny"] if args.dry_run or args.quick and not cuda else
                               ["paper-256"] if cuda else ["tiny", "small"])
    iters = args.iters or (1 if args.dry_run else 3 if args.quick else 5 if not cuda else 20)
    warmup = 1 if args.dry_run or not cuda else 5
    rows: list[dict[str, Any]] = []
    for config in configs:
        from tkh.config import load_config

        cfg_k = load_config(config).train.k_shots
        batch = args.batch or (8 if cuda else 2)
        k = args.k or (cfg_k if cuda else min(cfg_k, 4))
        variants = [("eager fp32", False)]
        if cuda or (args.fast and not args.dry_run):
            variants.append(("bf16+channels_last+compile" if cuda else "bf16+compile", True))
        for name, fast in variants:
            r = measure(config, device, batch, fast, warmup + (2 if fast else 0), iters, k=k)
            rows.append({"variant": name, "device": device.type, **r})
        base = next(r for r in rows if r["config"] == config and r["variant"] == "eager fp32")
        for r in rows:
            if r["config"] == config:
                r["speedup"] = r["images_per_s"] / base["images_per_s"]
    extra: dict[str, Any] = {}
    if cuda and args.find_max_batch:
        extra["max_batch"] = {c: find_max_batch(c, device) for c in configs}
        print(f"largest batch that fits: {extra['max_batch']}")
    if not cuda:
        rows.append({"config": "paper-256", "variant": "bf16+channels_last+compile", "device": "cuda", "batch": 8,
                     "note": C.NO_GPU + " (target: >= 2.5x eager fp32; peak memory at batch 8; max batch in 80 GB)"})
    C.print_table(f"Meta-training throughput ({device}; median step after warm-up)", rows,
                  ["config", "px", "batch", "k", "variant", "device", "median_ms", "p90_ms", "cpu_median_ms", "images_per_s",
                   "frames_per_s", "speedup", "peak_mem_mib", "step_mem_mib", "perceptual", "note"])
    C.write_json("train_throughput", args, device, rows, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
