"""Precision and memory format, decided in one place for training, fine-tuning, the puppeteer, evaluation
and the benchmarks.

Two settings, in the config sections that run networks (`train`, `adapt`) and as arguments elsewhere:

    amp            "auto" | "bf16" | "off"   bf16 autocast, or float32
    channels_last  "auto" | "on" | "off"     memory format of the networks and their 4-D inputs

"auto" on CUDA: bf16 (where the GPU has it) and channels_last, as before. "auto" on a CPU: measured,
never assumed. bf16 autocast is ~2x faster than float32 on processors with bf16 units (AVX512_BF16,
AMX, Arm BF16) and 25-100x *slower* on those without; channels_last helps convolutions on some CPUs and
not on others. The first `resolve` for a model size runs `probe` (under a second: the model's own
convolutions and instance norm at three of its widths and attention-sized matrix products, in each of
the four combinations)
and caches the verdict in `tkh.hub.cache_dir() / "precision.json"`, keyed by CPU model, bf16 units,
torch version and the probed sizes; a combination is chosen only when it is >= 10 % faster
than float32 in the default format (and under bf16 channels_last is kept unless clearly slower: see
`resolve`). A CPU without bf16 units never probes bf16.

`TKH_PRECISION=off` in the environment turns every "auto" into float32 / default layout (reproducible
numbers on any machine: the test suite sets it; tests of the bf16 paths say bf16 explicitly).

What stays float32 under autocast (where precision needs it): instance-norm / AdaIN statistics
(`tkh.models.blocks.instance_normalize`), spectral norm's power iteration, D's score, every loss and
the optimisers' state (parameters are float32; autocast only casts the inputs of matmuls/convolutions).

    policy = resolve(cfg.train.amp, cfg.train.channels_last, device, cfg.model)
    model = policy.prepare(model); x = policy.tensor(x)
    with policy.autocast():
        ...
    print(policy.describe())    # "bf16 autocast, channels_last (auto: probe 2.3x ...)"
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkh.atomic import write_json
from tkh.config import ModelConfig
from tkh.errors import ConfigError
from tkh.hub import cache_dir
from tkh.models.blocks import conv, instance_normalize, width

__all__ = ["AMP_CHOICES", "CHANNELS_LAST_CHOICES", "Policy", "bf16_units", "cpu_model", "isa_cap", "probe", "resolve"]

AMP_CHOICES = ("auto", "bf16", "off")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
MARGIN = 0.9          # a non-default choice must take <= 90 % of float32's time to be picked
CACHE_FILE = "precision.json"
ENV = "TKH_PRECISION"  # "off": every "auto" is float32 in the default layout (explicit settings still apply)
_MEMO: dict[tuple, Policy] = {}


@dataclass(frozen=True)
class Policy:
    """The precision and memory format one run uses, and why."""

    device: str                    # device type: "cpu" or "cuda"
    bf16: bool                     # bf16 autocast around forward passes
    channels_last: bool            # networks and 4-D inputs in channels_last
    reason: str = ""               # how it was decided (the config, the probe, a cached probe)
    probe_ms: dict[str, float] = field(default_factory=dict)  # the probe's timings, when one decided

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for float32."""
        return torch.bfloat16 if self.bf16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the policy's device, or nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=torch.bfloat16)

    def prepare(self, module: nn.Module) -> nn.Module:
        """The module in the policy's memory format (in place, as `Module.to`); returned for chaining."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def prepare_frozen(self, module: nn.Module) -> nn.Module:
        """A frozen network (the perceptual ones) in the policy's format, and under bf16 also in bf16: autocast
        casts a weight that needs no gradient again at every call (it caches only trainable leaves), which
        was 6 % of a bf16 training step. In place; returned for chaining."""
        self.prepare(module)
        return module.to(torch.bfloat16) if self.bf16 and self.device == "cpu" else module

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A 4-D input in the policy's memory format (other tensors unchanged)."""
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last and t.ndim == 4 else t

    def describe(self) -> str:
        """One line for a run's first output: what runs and why."""
        what = ("bf16 autocast" if self.bf16 else "float32") + (", channels_last" if self.channels_last else "")
        return f"{what} ({self.reason})" if self.reason else what

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: for log files and benchmark results."""
        return {**asdict(self), "cpu": cpu_model() if self.device == "cpu" else None,
                "bf16_units": bf16_units() if self.device == "cpu" else None, "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------------------
# What the processor has
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    # read once per process: resolve() runs per puppeteer frame, and the processor does not change under us
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo `flags`, or `Features` on Arm); empty where unknown."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


# oneDNN instruction-set caps (`ONEDNN_MAX_CPU_ISA`) below which it has no bf16 arithmetic: with one of these
# set, a CPU that has bf16 units runs bf16 convolutions/matmuls as slowly as one without (3x slower than
# float32 under AVX512_CORE, ~200x under AVX2, measured on an EPYC with avx512_bf16): the benchmarks use it
# to measure "a CPU without bf16 units" on a machine that has them.
NO_BF16_ISA = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def isa_cap() -> str | None:
    """oneDNN's instruction-set cap from the environment (ONEDNN_MAX_CPU_ISA or the older DNNL_ name), upper
    case; None when not capped."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap if cap and cap not in ("ALL", "DEFAULT") else None


def bf16_units() -> bool | None:
    """True when the CPU lists bf16 arithmetic (x86 avx512_bf16 / amx_bf16, Arm bf16), False when it lists
    flags but none of those (or oneDNN is capped to an instruction set without them, `isa_cap`), None when it
    lists no flags (not Linux): then the probe decides alone."""
    if isa_cap() in NO_BF16_ISA:
        return False
    flags = cpu_flags()
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


# ---------------------------------------------------------------------------------------------------------
# Deciding
# ---------------------------------------------------------------------------------------------------------
def resolve(amp: str = "auto", channels_last: str | bool = "auto", device: str | torch.device = "cpu",
            model_cfg: Any = None, cache: bool = True,
            probe_fn: Callable[..., dict[str, float]] | None = None) -> Policy:
    """The policy for `amp` / `channels_last` (see the module doc) on `device`.

    model_cfg: the `ModelConfig` whose sizes the CPU probe uses (default: `small`'s). cache: read and
    write the verdict cache (False: probe every time). probe_fn: replaces `probe` (tests).
    """
    amp, cl = _check(amp, channels_last)
    pinned = os.environ.get(ENV, "auto").strip().lower()
    if pinned not in ("auto", "off"):
        raise ConfigError(f"{ENV} must be 'auto' or 'off', got {pinned!r}")
    if pinned == "off":  # "auto" means float32 in the default layout (reproducible numbers, the test suite)
        amp, cl = ("off" if amp == "auto" else amp), ("off" if cl == "auto" else cl)
    dev = torch.device(device).type
    if dev == "cuda":
        bf16 = amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported())
        return Policy("cuda", bf16, cl != "off", f"amp={amp}, channels_last={cl} on CUDA")
    if dev != "cpu" or (amp != "auto" and cl != "auto"):
        return Policy(dev, amp == "bf16", cl == "on", f"amp={amp}, channels_last={cl}")

    model_cfg = model_cfg if model_cfg is not None else ModelConfig()
    units = bf16_units()
    memo_key = (amp, cl, _cache_key(model_cfg, units), str(cache_dir()) if cache else None)
    if probe_fn is None and memo_key in _MEMO:  # this process decided already (renders ask every frame)
        return _MEMO[memo_key]
    verdict = _cached_probe(model_cfg, units, cache, probe_fn or probe)
    ms = verdict["ms"]
    # Candidates the settings allow; the fastest wins if it beats float32 / default layout by the margin.
    allowed = [(b, c) for b in (False, True) for c in (False, True)
               if (amp == "auto" or b == (amp == "bf16")) and (cl == "auto" or c == (cl == "on"))
               and _key(b, c) in ms]
    base = (amp == "bf16", cl == "on")
    best = min(allowed, key=lambda bc: ms[_key(*bc)]) if allowed else base
    if _key(*base) in ms and ms[_key(*best)] > MARGIN * ms[_key(*base)]:
        best = base
    # oneDNN's bf16 convolutions work in a channels-last layout, so NCHW costs a reorder around each; the
    # probe's small maps understate that (whole steps and frames measured 8-20 % faster with it), so under
    # bf16 channels_last stays unless the probe finds it clearly slower.
    if best == (True, False) and cl == "auto" and "bf16+cl" in ms and ms["bf16+cl"] * MARGIN <= ms["bf16"]:
        best = (True, True)
    why = [f"{_key(*bc)} {ms[_key(*bc)]:.1f} ms" for bc in ((False, False), (False, True), (True, False), (True, True))
           if _key(*bc) in ms]
    note = "" if units is not False else "; no bf16 units: bf16 not probed"
    src = "cached probe" if verdict.get("cached") else "probe"
    policy = Policy("cpu", best[0], best[1], f"amp={amp}, channels_last={cl}: {src} {', '.join(why)}{note}",
                    {k: round(v, 3) for k, v in ms.items()})
    if probe_fn is None:
        _MEMO[memo_key] = policy
    return policy


def _check(amp: str, channels_last: str | bool) -> tuple[str, str]:
    if isinstance(channels_last, bool):  # the old boolean setting: True was "on CUDA, never on the CPU"
        channels_last = "auto" if channels_last else "off"
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if channels_last not in CHANNELS_LAST_CHOICES:
        raise ConfigError(f"channels_last must be one of {', '.join(CHANNELS_LAST_CHOICES)}, got {channels_last!r}")
    return amp, channels_last


def _key(bf16: bool, channels_last: bool) -> str:
    return ("bf16" if bf16 else "fp32") + ("+cl" if channels_last else "")


def _cache_key(model_cfg: Any, units: bool | None) -> str:
    cap = isa_cap()
    return (f"{cpu_model()} | bf16 units {units} | torch {torch.__version__} | "
            + (f"oneDNN ISA {cap} | " if cap else "") +
            f"{model_cfg.image_size}px {model_cfg.base_channels}-{model_cfg.max_channels}ch")


def _cached_probe(model_cfg: Any, units: bool | None, cache: bool, probe_fn: Callable[..., dict[str, float]]
                  ) -> dict[str, Any]:
    key = _cache_key(model_cfg, units)
    path = cache_dir() / CACHE_FILE if cache else None
    entries: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}  # unreadable: probe again and rewrite it
        if isinstance(entries.get(key), dict) and isinstance(entries[key].get("ms"), dict):
            return {**entries[key], "cached": True}
    ms = probe_fn(model_cfg, bf16=units is not False)
    verdict = {"ms": ms, "date": time.strftime("%Y-%m-%d %H:%M")}
    if path is not None:
        try:
            write_json(path, {**entries, key: verdict}, indent=1)
        except OSError:
            pass  # a read-only cache: the verdict still holds for this run
    return verdict


def probe(model_cfg: Any, bf16: bool = True, reps: int = 3) -> dict[str, float]:
    """The fastest of `reps` forward times (ms of one thread's CPU time) of a slice of the model at hand in
    each combination of {fp32, bf16 autocast} x {default layout, channels_last} (fp32 only when `bf16` is
    False).

    The slice, at the model's widths: at image_size / 2, / 8 and / 32 (G's widest maps, the attention
    level, the bottleneck) two 3x3 convolutions with an AdaIN-style instance norm between them, on maps
    cropped to 16 x 16 (the cost per pixel is what matters); then attention-sized matrix products
    (512 positions, softmax). Batch 1, inference mode, the blocks the networks are built from. Timed on
    one thread with `time.thread_time` (CPU time: a busy machine's preemptions do not count, and the
    ratios carry over to more threads), the combinations taking turns. ~0.2-0.7 s, most of it oneDNN
    building its kernels on the first calls.
    """
    gen = torch.Generator().manual_seed(0)
    rng = torch.random.get_rng_state()
    s = model_cfg.image_size
    sizes = [(min(r, 16), width(model_cfg, r)) for r in (s // 2, s // 8, max(s // 32, 4))]
    nets = {False: [conv(c, c, 3, sn=False) for _, c in sizes]}
    torch.random.set_rng_state(rng)  # building layers must not move the caller's random stream
    nets[True] = [_copy_cl(m) for m in nets[False]]
    inputs = [torch.randn(1, c, r, r, generator=gen) for r, c in sizes]
    scale = [torch.rand(1, c, 1, 1, generator=gen) + 0.5 for _, c in sizes]
    c = width(model_cfg, s // 8)
    a, w = torch.randn(512, c, generator=gen), torch.randn(c, c, generator=gen)

    def run(b: bool, cl: bool) -> float:
        t0 = time.thread_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=b):
            for cv, x, sc in zip(nets[cl], inputs, scale):
                x = x.contiguous(memory_format=torch.channels_last) if cl else x
                cv(torch.relu(instance_normalize(cv(x), sc, sc)))
            torch.softmax((a @ w) @ a.T, dim=-1)
        return time.thread_time() - t0

    combos = [(b, c) for b in ((False, True) if bf16 else (False,)) for c in (False, True)]
    times: dict[tuple[bool, bool], list[float]] = {bc: [] for bc in combos}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for bc in combos:
                run(*bc)  # warm-up: oneDNN builds its kernels for these shapes
            for _ in range(reps):
                for bc in combos:
                    times[bc].append(run(*bc))
    finally:
        torch.set_num_threads(threads)
    return {_key(*bc): min(t) * 1000 for bc, t in times.items()}


def _copy_cl(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to(memory_format=torch.channels_last)


def env_summary() -> dict[str, Any]:
    """The CPU facts the verdict depends on, for benchmark JSON: model, bf16-related flags, threads, torch."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "bf16_units": bf16_units(),
            "cpu_flags": sorted(f for f in flags if "bf16" in f or f.startswith(("avx512", "amx")) or f in
                                ("avx2", "fma", "asimd", "sve")),
            "onednn_isa_cap": isa_cap(), "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "os_cpu_count": os.cpu_count()}
