"""One-shot fine-tuning time (sec. 3.3): seconds for the paper's number of FT steps on one portrait.

`tkh.adapt.adapt(model, [portrait], mode="ft")` with the config's `adapt` section (steps =
`AdaptConfig.steps`, 40 by default; L_CNT with the perceptual networks that load offline, L_ADV; bf16
autocast on CUDA), random weights (speed does not depend on them). Reported: the FF part (landmarks +
crop + ê), one FT call with 1 step (FF + FT set-up + perceptual networks + 1 step), the marginal seconds
per FT step ((N steps - 1 step) / (N - 1)), and the total of an FT call with the config's steps:
measured, or with `--quick`/`--steps` extrapolated from the marginal step time (marked so).

    python benchmarks/finetune_time.py [--quick] [--configs paper-256] [--steps 40]
"""

from __future__ import annotations

import time
from typing import Any

import torch

import _common as C


def run(config: str, device: torch.device, steps: int, portrait) -> dict[str, Any]:
    """FF once, FT with 1 step, FT with `steps` steps: the marginal cost of a step is their difference."""
    from tkh.adapt import adapt

    model = C.random_model(config, device)

    def timed(mode: str, n: int):
        C.sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        ad = adapt(model, [portrait], mode=mode, steps=n, progress=False, device=device, backend="dlib",
                   landmarks=C.portrait_landmarks())
        C.sync(device)
        return time.perf_counter() - t0, time.process_time() - c0, ad

    ff_s, _, _ = timed("ff", 0)      # landmarks + crop + ê + ψ̂ (also warms dlib and the allocator)
    one_s, one_cpu, _ = timed("ft", 1)  # FF + FT state + loading the perceptual networks + one step
    C.reset_peak_memory(device)
    wall_s, cpu_s, ad = timed("ft", steps) if steps > 1 else (one_s, one_cpu, None)
    # Per step: the difference between N steps and 1 step, so set-up costs are not spread over the steps.
    per_step = (wall_s - one_s) / (steps - 1) if steps > 1 else max(one_s - ff_s, 1e-9)
    cpu_per_step = (cpu_s - one_cpu) / (steps - 1) if steps > 1 else None
    return {"config": config, "px": model.cfg.model.image_size, "ff_s": ff_s, "ft_1_step_s": one_s,
            "steps_run": steps, "ft_wall_s": wall_s, "s_per_step": per_step, "cpu_s_per_step": cpu_per_step,
            "peak_mem_mib": C.peak_memory_mib(device), "amp": (ad.cfg if ad else model.cfg.adapt).amp,
            "perceptual": (ad.cfg if ad else model.cfg.adapt).perceptual}


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
        # What a user waits for `tkh finetune` (model already loaded): the whole FT adapt call.
        r["ft_total_s"] = r["ft_wall_s"] if steps == paper_steps else r["ft_1_step_s"] + (paper_steps - 1) * r["s_per_step"]
        r["total_is"] = "measured" if steps == paper_steps else f"extrapolated from {steps} steps"
        rows.append({"device": device.type, **r})
    if not cuda:
        rows.append({"config": "paper-256", "device": "cuda", "note": C.NO_GPU})
    C.print_table(f"One-shot fine-tuning ({device})", rows,
                  ["config", "px", "device", "ff_s", "ft_1_step_s", "steps_run", "s_per_step", "cpu_s_per_step", "paper_steps", "ft_total_s",
                   "total_is", "peak_mem_mib", "note"])
    C.write_json("finetune_time", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
