"""Scaling: how a meta-training step's time and memory grow with resolution (64/128/256) and with K (1/8/32).

Two sweeps of the same model family (a config's widths, `model.image_size` overridden; at higher
resolution the trunks gain a downsampling block, as the config's width rule says):
- resolution 64, 128, 256 at K = 8;
- K = 1, 8, 32 frames per episode at 128 px (128 px, K = 8 is shared with the first sweep).

One step is the full `tkh.train` step of `train_throughput.py` (D phases + E/G phase, L_CNT with the
perceptual networks that load offline), eager float32 unless `--fast`, on random batches.

Memory: each point runs in its own subprocess so that one point's allocator caches and peak do not
leak into the next. CUDA: torch.cuda.max_memory_allocated during the steps. CPU: the process's peak
resident set during the steps minus the resident set before the first step (VmHWM reset through
/proc/self/clear_refs; where that is unavailable, the growth of getrusage's ru_maxrss). The CPU figure
counts what the steps add (activations, gradients, Adam states), not the weights or the libraries.

Writes benchmarks/results/scaling-<device>.json and benchmarks/scaling.png (every scaling-*.json in
results/ as its own series, so a GPU run later lands in the same figure).

    python benchmarks/scaling.py [--quick] [--config small] [--batch 1] [--fast]
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import _common as C

RES_SWEEP = (64, 128, 256)
K_SWEEP = (1, 8, 32)
K_AT_RES, RES_AT_K = 8, 128
PLOT = C.ROOT / "benchmarks" / "scaling.png"


def _ru_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def point(config: str, device: torch.device, res: int, k: int, batch: int, fast: bool, warmup: int,
          iters: int) -> dict[str, Any]:
    """One (resolution, K) point, measured in this process (called in a fresh subprocess)."""
    from train_throughput import make_step

    step, info = make_step(config, device, batch, "bf16+channels_last+compile" if fast else "fp32", k=k,
                           image_size=res)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
        method = "torch.cuda.max_memory_allocated - allocated before the first step"
    elif _reset_hwm():
        before = C.rss_mib()
        method = "peak RSS (VmHWM, reset) - RSS before the first step"
    else:
        before = _ru_maxrss_mib()
        method = "ru_maxrss growth over the steps"
    t0 = time.perf_counter()
    t = C.timeit(step, device, warmup=warmup, iters=iters, max_seconds=60)
    wall = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    elif method.startswith("peak RSS"):
        peak = C.peak_memory_mib(device)
    else:
        peak = _ru_maxrss_mib()
    return {"config": config, "px": res, "k": k, "batch": batch, "variant": "fast" if fast else "eager fp32", **t,
            "step_s": t["median_ms"] / 1000, "step_cpu_s": t["cpu_median_ms"] / 1000, "step_mem_mib": peak - before, "peak_mem_mib": peak,
            "mem_method": method, "perceptual": info["perceptual"], "wall_s": wall}


def run_point_subprocess(args, device: torch.device, res: int, k: int, warmup: int, iters: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--point", str(res), str(k), "--config", args.config,
           "--batch", str(args.batch), "--device", str(device), "--warmup", str(warmup), "--iters", str(iters)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.fast:
        cmd.append("--fast")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        oom = "out of memory" in proc.stderr.lower()
        print(f"  {res}px K={k}: failed ({err})", flush=True)
        return {"config": args.config, "px": res, "k": k, "batch": args.batch,
                "note": "out of memory" if oom else f"failed: {err[:120]}"}
    r = json.loads(lines[-1])
    print(f"  {res}px K={k}: {r['step_s']:.3g} s/step ({r['step_cpu_s']:.3g} s CPU), +{r['step_mem_mib']:.0f} MiB",
          flush=True)
    return r


def plot(path: Path = PLOT) -> Path | None:
    """Step time and step memory against resolution and K, one series per results/scaling-*.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for f in sorted(C.RESULTS.glob("scaling-*.json")):
        data = json.loads(f.read_text())
        m = data["machine"]
        where = m.get("gpu") or f"{m['cpu_cores']}-core {m['cpu']}"
        rows = [r for r in data["rows"] if "step_s" in r]
        if rows:
            label = (f"{m['device'].split(':')[0]}: {where}, {m['torch_threads']} thread(s), {rows[0]['config']}, "
                     f"B={rows[0]['batch']}")
            series.append((label, rows))
    if not series:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for label, rows in series:
        by_res = sorted((r for r in rows if r["k"] == K_AT_RES), key=lambda r: r["px"])
        by_k = sorted((r for r in rows if r["px"] == RES_AT_K), key=lambda r: r["k"])
        for col, (pts, key) in enumerate([(by_res, "px"), (by_k, "k")]):
            xs = [r[key] for r in pts]
            for row, (yk, scale) in enumerate([("step_s", 1.0), ("step_mem_mib", 1.0)]):
                ax = axes[row, col]
                (line,) = ax.plot(xs, [r[yk] * scale for r in pts], "o-", label=label + (" (wall)" if row == 0 else ""))
                if row == 0 and all(r.get("step_cpu_s") for r in pts):  # busy machines: CPU time is steadier
                    ax.plot(xs, [r["step_cpu_s"] for r in pts], "s--", color=line.get_color(), alpha=0.8,
                            label=label + " (process CPU time)")
                if len(pts) >= 1:  # reference: cost proportional to pixels (resp. to frames K + 1)
                    x0, y0 = xs[0], pts[0][yk]
                    ref = [y0 * (x / x0) ** 2 if key == "px" else y0 * (x + 1) / (x0 + 1) for x in xs]
                    ax.plot(xs, ref, ":", color=line.get_color(), alpha=0.6,
                            label="∝ pixels" if key == "px" else "∝ K + 1")
    for col, (name, ticks) in enumerate([("resolution (px), K = 8", RES_SWEEP), ("K (frames per episode), 128 px",
                                                                                 K_SWEEP)]):
        for row, ylab in enumerate(["median step time (s)", "memory added by the step (MiB)"]):
            ax = axes[row, col]
            if not ax.lines:  # e.g. a partial run: nothing to put on log axes
                continue
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(list(ticks), [str(t) for t in ticks])
            ax.set_xlabel(name)
            ax.set_ylabel(ylab)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("tkh meta-training step: scaling with resolution and K (benchmarks/scaling.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="model family (default: small on CPU, paper-256 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="episodes per step (default: 1 on CPU, 8 on CUDA)")
    p.add_argument("--fast", action="store_true", help="bf16 (+ channels_last on CUDA) + torch.compile")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--point", nargs=2, type=int, default=None, metavar=("RES", "K"), help=argparse_hidden())
    p.add_argument("--plot-only", action="store_true", help="redraw scaling.png from results/scaling-*.json")
    args = p.parse_args(argv)
    if args.plot_only:
        plot()
        return 0
    device = C.setup(args)
    cuda = device.type == "cuda"
    args.config = args.config or ("paper-256" if cuda else "small")
    args.batch = args.batch or (8 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (1 if not cuda else 3)
    iters = args.iters or (1 if args.dry_run or args.quick else 2 if not cuda else 10)
    if args.point:  # child: one point, one JSON line on stdout
        r = point(args.config, device, args.point[0], args.point[1], args.batch, args.fast, warmup, iters)
        print(json.dumps(r), flush=True)
        return 0
    pts = [(64, 1)] if args.dry_run else [(r, K_AT_RES) for r in RES_SWEEP] + [(RES_AT_K, k) for k in K_SWEEP
                                                                               if k != K_AT_RES]
    print(f"scaling: {args.config}, batch {args.batch}, {len(pts)} points on {device} (one subprocess each)",
          flush=True)
    rows = [run_point_subprocess(args, device, r, k, warmup, iters) for r, k in pts]
    C.print_table(f"Meta-training step scaling ({device}; {args.config} widths, batch {args.batch})", rows,
                  ["config", "px", "k", "batch", "variant", "step_s", "step_cpu_s", "step_mem_mib", "peak_mem_mib", "n", "note"])
    if not cuda:
        rows.append({"config": "paper-256", "device": "cuda", "batch": 8, "note": C.NO_GPU})
    C.write_json("scaling", args, device, rows)
    if not args.dry_run:
        plot()
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
