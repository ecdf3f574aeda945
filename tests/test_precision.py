"""tkh.precision: the amp / channels_last policy, its CPU probe (decision, cache, overrides, a CPU without bf16
units), and the FT step and a puppeteer frame under CPU bf16 autocast against float32 (the training step's
comparison is tests/test_train.py::test_train_under_cpu_bf16_autocast_with_the_real_perceptual_loss).

The probe itself is replaced by fixed timings here (a verdict is a function of them, tested without a
clock); one test runs the real probe for its keys and types only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tkh import precision
from tkh.config import AdaptConfig, TrainConfig, load_config
from tkh.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from adapt_helpers import make_tiny_pretrained  # noqa: E402

FAST_BF16 = {"fp32": 10.0, "fp32+cl": 9.8, "bf16": 4.5, "bf16+cl": 4.0}  # a CPU with bf16 units
SLOW_BF16 = {"fp32": 10.0, "fp32+cl": 8.0, "bf16": 250.0, "bf16+cl": 240.0}  # bf16 emulated


@pytest.fixture
def probing(tmp_path, monkeypatch):
    """An empty cache folder, "auto" not pinned by the suite's TKH_PRECISION=off, and a fake probe that
    counts its calls: returns set_timings(dict) -> calls list."""
    monkeypatch.setenv("TKH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TKH_PRECISION", raising=False)
    monkeypatch.setattr(precision, "_MEMO", {})
    calls: list[bool] = []
    timings: dict[str, float] = {}

    def fake_probe(model_cfg, bf16=True):
        calls.append(bf16)
        return {k: v for k, v in timings.items() if bf16 or k.startswith("fp32")}

    monkeypatch.setattr(precision, "probe", fake_probe)

    def set_timings(t: dict[str, float]) -> list[bool]:
        timings.clear()
        timings.update(t)
        return calls

    return set_timings


def test_auto_picks_the_fastest_and_caches_the_verdict(probing, monkeypatch):
    monkeypatch.setattr(precision, "bf16_units", lambda: True)
    calls = probing(FAST_BF16)
    cfg = load_config("tiny").model
    p = precision.resolve("auto", "auto", "cpu", cfg)
    assert (p.bf16, p.channels_last) == (True, True) and calls == [True]
    assert "probe" in p.describe() and p.dtype is torch.bfloat16
    monkeypatch.setattr(precision, "_MEMO", {})  # a new process: the file cache answers, no second probe
    again = precision.resolve("auto", "auto", "cpu", cfg)
    assert (again.bf16, again.channels_last) == (True, True) and calls == [True] and "cached probe" in again.reason
    from tkh.hub import cache_dir

    assert (cache_dir() / "precision.json").is_file()
    # overrides: explicit settings win over the verdict; a 2 % channels_last gain is below the margin
    assert (precision.resolve("off", "auto", "cpu", cfg).bf16, precision.resolve("off", "auto", "cpu", cfg).channels_last) \
        == (False, False)
    assert precision.resolve("auto", "off", "cpu", cfg).channels_last is False
    assert precision.resolve("auto", "off", "cpu", cfg).bf16 is True
    forced = precision.resolve("bf16", "on", "cpu", cfg)
    assert (forced.bf16, forced.channels_last) == (True, True)
    # another model size is another verdict (probed once more)
    precision.resolve("auto", "auto", "cpu", load_config("small").model)
    assert calls == [True, True]


def test_a_cpu_without_bf16_units_stays_float32(probing, monkeypatch):
    """No bf16 flag in /proc/cpuinfo: bf16 is not even probed (it would be 25-100x slower), float32 runs; a
    CPU that lists the flag but measures bf16 slower also stays float32 (auto is never slower than fp32)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    calls = probing(SLOW_BF16)
    p = precision.resolve("auto", "auto", "cpu", load_config("tiny").model)
    assert calls == [False] and p.bf16 is False and p.channels_last is True  # fp32+cl 8 ms < 0.9 x 10 ms
    assert "no bf16 units" in p.reason
    monkeypatch.setattr(precision, "_MEMO", {})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    probing(SLOW_BF16)
    p = precision.resolve("auto", "off", "cpu", load_config("small").model)
    assert p.bf16 is False and p.channels_last is False


def test_a_onednn_isa_cap_without_bf16_is_a_cpu_without_bf16_units(probing, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (or AVX512_CORE) makes oneDNN run bf16 without bf16 units (measured 3-200x slower
    than float32): bf16_units() says so, bf16 is not probed, and the verdict is cached apart from the uncapped
    one, so neither answers for the other (benchmarks/README.md measures a CPU without bf16 units this way)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert precision.isa_cap() is None and precision.bf16_units() is True
    calls = probing(FAST_BF16)
    cfg = load_config("tiny").model
    assert precision.resolve("auto", "auto", "cpu", cfg).bf16 is True and calls == [True]
    for cap in ("avx2", "AVX512_CORE"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        monkeypatch.setattr(precision, "_MEMO", {})
        assert precision.isa_cap() == cap.upper() and precision.bf16_units() is False
        p = precision.resolve("auto", "auto", "cpu", cfg)
        assert p.bf16 is False and "no bf16 units" in p.reason
        assert precision.env_summary()["onednn_isa_cap"] == cap.upper()
    assert calls == [True, False, False]  # each cap probed once, float32 layouts only
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # a cap that keeps bf16
    assert precision.bf16_units() is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "all")
    assert precision.isa_cap() is None


def test_pinned_environment_and_the_config_words(monkeypatch):
    monkeypatch.setenv("TKH_PRECISION", "off")
    p = precision.resolve("auto", "auto", "cpu", load_config("tiny").model)
    assert (p.bf16, p.channels_last) == (False, False)
    assert precision.resolve("bf16", "auto", "cpu").bf16 is True  # an explicit setting still applies
    with pytest.raises(ConfigError, match="amp must be one of"):
        precision.resolve("fp16", "auto", "cpu")
    # YAML reads off / on as booleans: a string field gets the word back; the old boolean channels_last works
    cfg = load_config("tiny").replace(train={"amp": False, "channels_last": True}, adapt={"channels_last": False})
    assert (cfg.train.amp, cfg.train.channels_last, cfg.adapt.channels_last) == ("off", "on", "off")
    assert TrainConfig(channels_last=False).channels_last == "off" and AdaptConfig().channels_last == "auto"
    with pytest.raises(ConfigError, match="train.channels_last must be"):
        TrainConfig(channels_last="sometimes")


def test_cli_set_amp_off_is_accepted(tmp_path):
    """`--set train.amp=off` (YAML reads `off` as False) gives the config the word "off", and training takes it."""
    from tkh.cli import build_parser
    from tkh.errors import TkhError
    from tkh.train import config_from_cli, train_from_cli

    args = build_parser().parse_args(["train", "--config", "tiny", "--data", str(tmp_path / "none"), "--out",
                                      str(tmp_path / "run"), "--set", "train.amp=off", "train.channels_last=on"])
    cfg = config_from_cli(args)
    assert cfg.train.amp == "off" and cfg.train.channels_last == "on"
    with pytest.raises(TkhError) as err:  # gets past the config: the cache folder does not exist
        train_from_cli(args)
    assert "train.amp" not in str(err.value) and "channels_last" not in str(err.value)


def test_the_real_probe_is_short_and_complete(monkeypatch):
    import time

    t0 = time.process_time()
    ms = precision.probe(load_config("tiny").model, bf16=precision.bf16_units() is not False)
    assert set(ms) >= {"fp32", "fp32+cl"} and all(v > 0 for v in ms.values())
    print(f"probe: {ms}, {time.process_time() - t0:.2f} s CPU")
    summary = precision.env_summary()
    assert summary["cpu"] and "bf16_units" in summary


# --- CPU bf16 autocast against float32 (needs no bf16 units: autocast runs everywhere, only slower) ----------
@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    from tkh import pretrained

    return pretrained.load(str(make_tiny_pretrained(tmp_path_factory.mktemp("pre"))), map_location="cpu")


def test_ft_step_under_cpu_bf16_is_finite_and_close_to_float32(tiny_net, grace_hopper):
    """Two FT steps (sec. 3.3) with adapt.amp=bf16 and =off from the same start: finite losses, the first
    step's within 5 % (measured ~0.5 %) of float32's, and the fitted images within 0.02 (measured ~0.004)."""
    from tkh.adapt import adapt

    runs = {amp: adapt(tiny_net, [grace_hopper], cfg=AdaptConfig(**{**vars(tiny_net.cfg.adapt), "amp": amp,
                                                                    "mode": "ft", "steps": 2}),
                       device="cpu", progress=False) for amp in ("off", "bf16")}
    ref, got = runs["off"].history, runs["bf16"].history
    assert "bf16 autocast" in runs["bf16"].precision and "float32" in runs["off"].precision
    assert all(np.isfinite(h["total"]) and np.isfinite(h["d_total"]) for h in got)
    for key in ("total", "cnt", "d_total"):
        assert got[0][key] == pytest.approx(ref[0][key], rel=0.05), key
    assert abs(runs["bf16"].reconstruction_error() - runs["off"].reconstruction_error()) < 0.02


def test_puppet_frame_under_cpu_bf16_is_close_to_float32(astronaut):
    """One puppeteer frame of the shipped weights with amp=bf16 + channels_last vs float32: the difference
    is bf16 rounding, mean < 1 of 255 levels (measured 0.24, max 6), never a broken frame."""
    from tkh import pretrained
    from tkh.adapt import adapt
    from tkh.puppet import Puppet

    root = Path(__file__).resolve().parents[1] / "pretrained"
    if not (root / "manifest.json").is_file():
        pytest.skip("no shipped weights in pretrained/")
    adapted = adapt(pretrained.load(str(root)), [astronaut], mode="ff", device="cpu", progress=False)
    frames = {amp: Puppet(adapted, device="cpu", amp=amp, channels_last=cl, warmup=False).render(jaw_open=0.4)
              for amp, cl in (("off", "off"), ("bf16", "on"))}
    diff = np.abs(frames["bf16"].astype(float) - frames["off"])
    print(f"puppet frame bf16 vs fp32: mean {diff.mean():.2f}, max {diff.max():.0f} levels")
    assert frames["bf16"].dtype == np.uint8 and diff.mean() < 1.0
