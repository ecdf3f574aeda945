"""One-shot fine-tuning time (sec. 3.3): seconds for the paper's number of FT steps on one portrait.

`tkh.adapt.adapt(model, [portrait], mode="ft")` with the config's `adapt` section (steps = the paper's
schedule as tkh reads it: `AdaptConfig.steps`, 40 by default; L_CNT with the perceptual networks that
load offline, L_ADV; bf16 autocast on CUDA). Reported: landmarks + crop + ê (the FF part), seconds per
FT step (median), and the total. With `--quick` only a few steps run and the total is extrapolated
(marked so) from the median step time.

    python benchmarks/finetune_time.py [--quick] [--configs paper-256] [--steps 40]
"""

from __future__ import annotations

import time
from typing import Any

import _common as C
import torch


def run(config: str, device: torch.device, steps: int, portrait) -> dict[str, Any]:
    from tkh.adapt import adapt

    model = C.random_model(config, device)
    t0 = time.perf_counter()
    adapt(model, [portrait], mode="ff", progress=False, device=device, backend="dlib")
    C.sync(device)
    ff_s = time.perf_counter() - t0
    C.reset_peak_memory(device)
    t0 = time.perf_counter()
    ad = adapt(model, [portrait], mode="ft", steps=steps, progress=False, device=device, backend="dlib")
    C.sync(device)
    total = time.perf_counter() - t0
    ft_s = max(total - ff_s, 1e-9)
    per_step = ft_s / max(1, len(ad.history) or steps)
    return {"config": config, "px": model.cfg.model.image_size, "ff_s": ff_s, "steps_run": steps,
            "s_per_step": per_step, "peak_mem_mib": C.peak_memory_mib(device), "amp": ad.cfg.amp,
            "perceptual": ad.cfg.perceptual}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None, help="default: paper-256 on CUDA, tiny small on CPU")
    p.add_argument("--steps", type=int, default=None, help="FT steps (default: the config's adapt.steps)")
    args = p.parse_args(argv)
    device = C.setup(args)
    cuda = device.type == "cuda"
    from tkh.config import load_config

    configs = args.configs or (["tiny"] if args.dry_run or (args.quick and not cuda) else
                               ["paper-256"] if cuda else ["tiny", "small"])
    portrait = C.grace_hopper()
    rows = []
    for config in configs:
        paper_steps = load_config(config).adapt.steps
        steps = args.steps or (1 if args.dry_run else 3 if args.quick else paper_steps)
        r = run(config, device, steps, portrait)
        r["paper_steps"] = paper_steps
        r["ft_total_s"] = r["s_per_step"] * paper_steps
        r["total_is"] = "measured" if steps == paper_steps else f"extrapolated from {steps} steps"
        rows.append({"device": device.type, **r})
    if not cuda:
        rows.append({"config": "paper-256", "device": "cuda", "note": C.NO_GPU})
    C.print_table(f"One-shot fine-tuning ({device})", rows,
                  ["config", "px", "device", "ff_s", "steps_run", "s_per_step", "paper_steps", "ft_total_s", "total_is",
                   "peak_mem_mib", "note"])
    C.write_json("finetune_time", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
