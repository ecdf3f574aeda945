"""Shared helpers of the benchmark scripts: timing (warm-up, median, p90), peak memory, tables, JSON.

Every script prints a table and writes `benchmarks/results/<name>-<device>.json` (device = cpu or cuda)
with the machine it ran on (CPU model, cores, torch version and threads, GPU name, load average), so
numbers are never quoted without it, and a GPU run never overwrites the CPU numbers.
GPU rows on a machine without CUDA are written as "not measured: no GPU in this session", never invented.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NO_GPU = "not measured: no GPU in this session"
_LOAD_AT_START: list[float] | None = None
_PORTRAIT_LANDMARKS: Path | None = None

if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without installing tkh
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------
# arguments and devices
# ---------------------------------------------------------------------------------------------
def drop_forced_bf16(variants: list[str], device: torch.device, policies: Mapping[str, tuple[str, str]]) -> list[str]:
    """`variants` less those whose policy in `policies` (name -> (amp, channels_last)) forces bf16, on a CPU
    without bf16 units (`tkh.precision.bf16_units()` False, also under ONEDNN_MAX_CPU_ISA=AVX2 / AVX512_CORE):
    there bf16 is emulated, 3-200x slower, and a row would take minutes to say what the probe already knows.
    Named with --variants, they run anyway."""
    if device.type != "cpu":
        return variants
    from tkh import precision

    if precision.bf16_units() is not False:
        return variants
    forced = [v for v in variants if v in policies and policies[v][0] == "bf16"]
    if forced:
        cap = precision.isa_cap()
        print(f"no bf16 units on this CPU{f' (oneDNN ISA cap {cap})' if cap else ''}: leaving out "
              f"{', '.join(forced)} (name them with --variants to run them)")
    return [v for v in variants if v not in forced]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:i]")
    p.add_argument("--quick", action="store_true", help="fewer iterations and the smallest settings (CPU: <~2 min)")
    p.add_argument("--dry-run", action="store_true", help="one iteration of the smallest case: proves the script runs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--json", type=Path, default=None,
                   help="output JSON (default benchmarks/results/<name>-<device>.json)")
    p.add_argument("--portrait-landmarks", type=Path, default=None,
                   help="the portrait's 68 landmarks (.npy), found beforehand where dlib's landmark model is "
                        "(a GPU machine without it: tools/gpu_prepare.py)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Pick the device and CPU threads; returns the device. Notes the load average at the start."""
    global _LOAD_AT_START, _PORTRAIT_LANDMARKS
    _LOAD_AT_START = _loadavg()
    _PORTRAIT_LANDMARKS = getattr(args, "portrait_landmarks", None)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def timeit(fn: Callable[[int], Any], device: torch.device, warmup: int = 3, iters: int = 10,
           max_seconds: float | None = None) -> dict[str, float]:
    """Call fn(i) `warmup` times untimed, then `iters` times timed (synchronising CUDA around each call).

    Returns median / p90 / mean / min wall time in milliseconds, the median CPU time of this process per
    call (`cpu_median_ms`: all its threads; on a busy machine, with one thread, it estimates the wall time
    on an idle core) and the number of timed calls (fewer than `iters` when `max_seconds` ran out; >= 1).
    """
    for i in range(warmup):
        fn(i)
    sync(device)
    times: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    for i in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(warmup + i)
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return {**summarize(times), "cpu_median_ms": statistics.median(cpu)}


def timeit_interleaved(fns: dict[str, Callable[[int], Any]], device: torch.device, warmup: int = 3, iters: int = 10,
                       max_seconds: float | None = None) -> dict[str, dict[str, float]]:
    """`timeit` for several variants side by side: each round calls every variant once, so a machine that
    gets busier or quieter during the run affects them alike. Returns {name: timeit's dict}."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for i in range(iters):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn(warmup + i)
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1000)
            cpu[name].append((time.process_time() - c0) * 1000)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return {k: {**summarize(times[k]), "cpu_median_ms": statistics.median(cpu[k]), "cpu_min_ms": min(cpu[k])}
            for k in fns}


def add_speedup(rows: list[dict[str, Any]], config: str, base_variant: str, key: str) -> None:
    """rows of `config` get "speedup" = their `key` over the `base_variant` row's (for a rate, like images/s;
    a key ending in _ms is a time, so the ratio is inverted), and "cpu_speedup" from cpu_min_ms (with one
    thread, the CPU time of the least-disturbed call estimates the time on an idle core)."""
    mine = [r for r in rows if r.get("config") == config and key in r]
    base = next((r for r in mine if r.get("variant") == base_variant), None)
    if base is None:
        return
    for r in mine:
        r["speedup"] = base[key] / r[key] if key.endswith("_ms") else r[key] / base[key]
        if r.get("cpu_min_ms") and base.get("cpu_min_ms"):  # the least-disturbed call of each: a busy machine
            r["cpu_speedup"] = base["cpu_min_ms"] / r["cpu_min_ms"]


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    t = sorted(times_ms)
    p90 = t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]
    return {"median_ms": statistics.median(t), "p90_ms": p90, "mean_ms": statistics.fmean(t), "min_ms": t[0],
            "n": len(t)}


# ---------------------------------------------------------------------------------------------
# memory: CUDA's allocator peak, or the process's peak RSS (VmHWM, resettable on Linux)
# ---------------------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets the peak RSS (VmHWM) of this process (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _proc_status_mib(key: str) -> float | None:
    """A kB field of /proc/self/status (e.g. VmRSS, VmHWM) in MiB; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """The process's current resident set size in MiB (Linux; 0 elsewhere)."""
    return _proc_status_mib("VmRSS") or 0.0


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch (CUDA), else the process's peak resident set size, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# machine and output
# ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on (and how busy it was)."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    if device.type == "cpu":  # what bf16 / channels_last speed depends on (tkh.precision decides from it)
        from tkh import precision

        info["cpu_precision"] = precision.env_summary()
    # Other processes on the machine make CPU numbers noisy: the load at the start and end says how much.
    info["load_average_1_5_15_at_start"] = _LOAD_AT_START
    info["load_average_1_5_15"] = _loadavg()
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def print_table(title: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table (also valid Markdown) of `columns` for each row; printed and returned."""
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    text = "\n".join([f"\n{title}", line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in cells)])
    print(text, flush=True)
    return text


def write_json(name: str, args: argparse.Namespace, device: torch.device, rows: list[dict[str, Any]],
               **extra: Any) -> Path:
    """benchmarks/results/<name>-<device>.json (or --json): machine, arguments, rows, extras."""
    path = args.json or RESULTS / f"{name}-{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(device),
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "rows": rows, **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}", flush=True)
    return path


def grace_hopper() -> Any:
    """The portrait every benchmark adapts (matplotlib's sample photograph), RGB uint8."""
    import matplotlib.cbook

    from tkh.media import load_image

    return load_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))


def portrait_landmarks() -> list[Any] | None:
    """`adapt(..., landmarks=)` for the portrait: --portrait-landmarks when given, else None (detected)."""
    import numpy as np

    return None if _PORTRAIT_LANDMARKS is None else [np.load(_PORTRAIT_LANDMARKS)]


def random_model(config: str, device: torch.device, num_videos: int = 0, seed: int = 0):
    """A TalkingHeadModel of a shipped config with random weights: speed does not depend on the values."""
    from tkh.config import load_config
    from tkh.models import TalkingHeadModel

    torch.manual_seed(seed)
    cfg = config if not isinstance(config, str) else load_config(config)
    return TalkingHeadModel(cfg, num_videos=num_videos).to(device)
