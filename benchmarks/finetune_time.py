"""One-shot fine-tuning time (sec. 3.3): seconds per FT step side by side, and the paper's number of steps.

Part 1, one FT step side by side (interleaved, same FT state, same batch): `tkh.train.step.run_step` with
`FineTuneStep` (x̂ rendered once, real and fake through D in one call, no gradient into D's parameters in
the G phase) under the `tkh.precision` policies fp32 / bf16 / bf16+channels_last / auto, and the loop
`tkh.adapt` ran before issue 17 ("legacy fp32": x̂ rendered twice, D called on real and fake separately,
the G loss back-propagated into D), kept here only to measure against.

Part 2, `tkh.adapt.adapt(model, [portrait], mode="ft")` with the config's `adapt` section (steps =
`AdaptConfig.steps`, 40 by default; amp/channels_last auto), random weights (speed does not depend on
them): the FF part (landmarks + crop + ê), one FT call with 1 step, the marginal seconds per FT step
((N steps - 1 step) / (N - 1)), and the total of an FT call with the config's steps: measured, or with
`--quick`/`--steps` extrapolated from the marginal step time (marked so).

    python benchmarks/finetune_time.py [--quick] [--configs paper-256] [--steps 40]
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

import _common as C

STEP_POLICIES = {"fp32": ("off", "off"), "bf16": ("bf16", "off"), "bf16+channels_last": ("bf16", "on"),
                 "auto": ("auto", "auto")}
LEGACY = "legacy fp32"


def legacy_step(G, D, psi, w, xb, yb, opt_g, opt_d, loss_cfg, perceptual, d_steps: int) -> None:
    """The FT step of tkh.adapt before issue 17 (float32), for comparison only."""
    from tkh.losses import discriminator_loss, generator_loss

    for _ in range(d_steps):
        with torch.no_grad():
            fake = G.render(yb, psi)
        real_score, _ = D.score_with_w(xb, yb, w)
        fake_score, _ = D.score_with_w(fake.detach(), yb, w)
        d_loss, _ = discriminator_loss(real_score, fake_score)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    fake = G.render(yb, psi)
    with torch.no_grad():
        _, real_feats = D.score_with_w(xb, yb, w)
    fake_score, fake_feats = D.score_with_w(fake, yb, w)
    g_loss, _ = generator_loss(real=xb, fake=fake, fake_score=fake_score, real_feats=real_feats,
                               fake_feats=fake_feats, loss_cfg=loss_cfg, perceptual=perceptual)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()


def step_variants(config: str, device: torch.device, portrait, warmup: int, iters: int,
                  names: list[str] | None = None) -> list[dict[str, Any]]:
    """Part 1: one FT step per variant (`names`, default all), interleaved."""
    from tkh import precision
    from tkh.adapt import _perceptual, adapt, init_finetune, landmark_images
    from tkh.tensors import to_tensor
    from tkh.train.objectives import FineTuneStep
    from tkh.train.step import StepContext, adam, make_phases, run_step

    model = C.random_model(config, device)
    ff = adapt(model, [portrait], mode="ff", progress=False, device=device, backend="dlib",
               landmarks=C.portrait_landmarks())
    cfg = model.cfg.adapt
    x = to_tensor(ff.crops[:1]).to(device)
    y = landmark_images(ff.crop_landmarks[:1], model.cfg.model.image_size).to(device)
    perceptual, loss_cfg = _perceptual(model, cfg, device)
    fns, info = {}, {}
    names = names or [*STEP_POLICIES, LEGACY]
    for name, (amp, cl) in STEP_POLICIES.items():
        if name not in names:
            continue
        G, D, psi, w, g_params, d_params = init_finetune(model, ff.e_hat, device)
        policy = precision.resolve(amp, cl, device, model.cfg.model)
        policy.prepare(G), policy.prepare(D)
        opts = {"G": adam(g_params, lr=cfg.lr_g, betas=cfg.betas), "D": adam(d_params, lr=cfg.lr_d, betas=cfg.betas)}
        objective = FineTuneStep(G, D, psi, w, policy.prepare_frozen(copy.deepcopy(perceptual)), loss_cfg)
        ctx = StepContext(policy, d_params, objective, device=device)
        batch = {"target": policy.tensor(x), "target_landmarks": policy.tensor(y), "index": torch.zeros(1, dtype=torch.long)}
        phases = make_phases(cfg.d_steps_per_g)
        fns[name] = lambda i, a=(phases, objective, opts, batch, ctx): run_step(*a)
        info[name] = {"bf16": policy.bf16, "channels_last": policy.channels_last, "note": policy.describe()}
    G, D, psi, w, g_params, d_params = init_finetune(model, ff.e_hat, device)
    opt_g = torch.optim.Adam(g_params, lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=cfg.betas)
    if LEGACY in names:
        fns[LEGACY] = lambda i: legacy_step(G, D, psi, w, x, y, opt_g, opt_d, loss_cfg, perceptual,
                                            cfg.d_steps_per_g)
        info[LEGACY] = {"bf16": False, "channels_last": False,
                        "note": "tkh.adapt's loop before issue 17: 2 renders, D twice, G loss into D"}
    times = C.timeit_interleaved(fns, device, warmup=warmup, iters=iters, max_seconds=240)
    rows = [{"config": config, "px": model.cfg.model.image_size, "variant": n, "d_steps_per_g": cfg.d_steps_per_g,
             **info[n], **times[n]} for n in fns]
    C.add_speedup(rows, config, LEGACY if LEGACY in fns else "fp32", "median_ms")
    return rows


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
            "precision": ad.precision if ad else "",
            "perceptual": (ad.cfg if ad else model.cfg.adapt).perceptual}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None, help="default: paper-256 on CUDA, tiny small on CPU")
    p.add_argument("--steps", type=int, default=None, help="FT steps (default: the config's adapt.steps)")
    p.add_argument("--variants", nargs="+", default=None, choices=[*STEP_POLICIES, LEGACY],
                   help="FT-step variants (default: all; on a CPU without bf16 units, those forcing bf16 left out)")
    args = p.parse_args(argv)
    device = C.setup(args)
    cuda = device.type == "cuda"
    from tkh.config import load_config

    names = args.variants or C.drop_forced_bf16([*STEP_POLICIES, LEGACY], device, STEP_POLICIES)

    configs = args.configs or (["tiny"] if args.dry_run or (args.quick and not cuda) else
                               ["paper-256"] if cuda else ["tiny", "small"])
    portrait = C.grace_hopper()
    step_rows: list[dict[str, Any]] = []
    for config in configs:
        step_rows += [{"device": device.type, **r} for r in step_variants(
            config, device, portrait, warmup=1, iters=1 if args.dry_run else 3 if args.quick else 6, names=names)]
    C.print_table(f"One FT step, side by side ({device}; median of interleaved steps)", step_rows,
                  ["config", "px", "variant", "bf16", "channels_last", "median_ms", "p90_ms", "cpu_median_ms",
                   "cpu_min_ms", "speedup", "cpu_speedup", "n", "note"])
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
    C.write_json("finetune_time", args, device, rows, step_rows=step_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
