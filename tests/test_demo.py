"""The main job (`tkh demo`) end to end on CPU, and the named portraits (Mona Lisa download + fallback)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from tkh.errors import DownloadError
from tkh.media import read_label

from adapt_helpers import make_tiny_pretrained
from localserver import serve_directory

ROOT = Path(__file__).resolve().parents[1]


def test_grace_hopper_is_offline():
    from tkh.portraits import load_portrait

    p = load_portrait("grace-hopper")
    assert p.image.shape == (600, 512, 3) and not p.fallback_reason


def test_mona_lisa_download_verified_and_cached(tmp_path):
    from conftest import shared_path

    from tkh.portraits import load_portrait

    src = shared_path("portraits", "mona_lisa.jpg")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(src, served / "mona.jpg")
    cache = tmp_path / "cache"
    with serve_directory(served) as url:
        p = load_portrait("mona-lisa", url=f"{url}/mona.jpg", cache=cache)
    assert p.name == "mona-lisa" and not p.fallback_reason and (cache / "mona_lisa.jpg").is_file()
    again = load_portrait("mona-lisa", url="http://127.0.0.1:9/none.jpg", cache=cache)  # cached: no download
    assert again.name == "mona-lisa"


def test_mona_lisa_wrong_checksum_and_failed_download_fall_back(tmp_path, grace_hopper):
    from conftest import shared_path

    from tkh.portraits import load_portrait

    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(shared_path("portraits", "sargent_portrait.jpg"), served / "mona.jpg")  # other bytes
    cache = tmp_path / "cache"
    with serve_directory(served) as url:
        with pytest.warns(UserWarning, match="checksum"):
            p = load_portrait("mona-lisa", url=f"{url}/mona.jpg", cache=cache)
        assert p.name == "grace-hopper" and "checksum" in p.fallback_reason
        assert not list(cache.glob("*"))  # nothing partial or wrong is kept
        with pytest.warns(UserWarning, match="could not"):
            p = load_portrait("mona-lisa", url=f"{url}/missing.jpg", cache=cache)  # HTTP 404
        assert p.name == "grace-hopper" and "--portrait PATH" in p.fallback_reason
        with pytest.raises(DownloadError, match="could not get the Mona Lisa"):
            load_portrait("mona-lisa", url=f"{url}/missing.jpg", cache=cache, fallback=None)
        painting = shared_path("portraits", "renaissance_portrait.jpg")
        with pytest.warns(UserWarning):
            p = load_portrait("mona-lisa", url=f"{url}/missing.jpg", cache=cache, fallback=painting)
        assert p.name == "renaissance_portrait.jpg"


def test_run_demo_tiny_model_outputs_labelled(tmp_path, monkeypatch, capsys):
    from tkh.demo import run_demo

    monkeypatch.setenv("TKH_PRETRAINED", str(make_tiny_pretrained(tmp_path / "pretrained")))
    t = time.perf_counter()
    s = run_demo(out_dir=tmp_path / "out", steps=3, frames_per_edit=4, device="cpu", progress=False)
    first = capsys.readouterr().out.splitlines()[0]
    print(f"demo (tiny, 3 FT steps, 20 frames): {time.perf_counter() - t:.1f}s")
    # the precision verdict FT ran under is in the first line, as the README says, with the planned steps
    assert first.startswith("tkh demo: portrait grace-hopper; weights tiny-test") and s["precision"] in first
    assert first.endswith("; 3 fine-tuning steps") and s["precision"].startswith(("float32", "bf16 autocast"))
    for name in ("animation.mp4", "animation.gif", "contact_sheet.png"):
        path = tmp_path / "out" / name
        assert path.is_file() and "tkh" in (read_label(path) or ""), name
    assert s["ft_steps"] == 3 and s["frames"] == 20
    assert json.loads((tmp_path / "out" / "demo.json").read_text())["model"] == "tiny-test"


def test_demo_without_weights_is_one_actionable_line(tmp_path, monkeypatch, capsys):
    """What a user gets while pretrained/ is empty: exit 2, one line naming the ways out, no traceback, no files."""
    from tkh.cli import main

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("TKH_PRETRAINED", str(tmp_path / "empty"))
    rc = main(["demo", "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("tkh demo: error: the demo needs meta-trained weights")
    for hint in ("TKH_PRETRAINED", "pretrained/", "tkh train --config configs/small.yaml", "tkh demo --model"):
        assert hint in err[0], hint
    assert not list((tmp_path / "out").glob("*"))


def assert_budget_kept(summary: dict) -> None:
    """Fine-tuning never runs more steps than the demo's setting, its budget (the time cap, which only stops a
    far too slow machine and warns, is tested with an injected clock in
    test_ft_time_budget_stops_on_the_clock_not_the_machine: no wall-clock asserts)."""
    from tkh.demo import demo_settings

    settings = demo_settings(torch.device("cpu"))
    assert 0 < summary["ft_steps"] <= settings["steps"]


def test_ft_time_budget_stops_on_the_clock_not_the_machine(monkeypatch, grace_hopper, tmp_path):
    """adapt's max_seconds reads the clock once per step: with a fake clock that advances 10 s per reading,
    a 35 s budget stops after the same number of steps on any machine, loaded or idle."""
    import types

    import tkh.adapt
    from tkh import pretrained
    from tkh.adapt import adapt
    from tkh.config import AdaptConfig

    net = pretrained.load(str(make_tiny_pretrained(tmp_path / "pretrained")), map_location="cpu")
    readings = iter(range(0, 10_000, 10))
    monkeypatch.setattr(tkh.adapt, "time", types.SimpleNamespace(perf_counter=lambda: float(next(readings))))
    cfg = AdaptConfig(**{**vars(net.cfg.adapt), "mode": "ft", "steps": 50, "max_seconds": 35.0})
    with pytest.warns(RuntimeWarning, match=r"time cap \(adapt.max_seconds=35\) after \d+ of 50 steps"):
        out = adapt(net, [grace_hopper], cfg=cfg, device="cpu", progress=False)
    assert 0 < len(out.history) < 50  # stopped by the cap (which says so), not by the step count
    with pytest.warns(RuntimeWarning, match="time cap"):
        again = adapt(net, [grace_hopper], cfg=cfg, device="cpu", progress=False)
    assert len(again.history) == len(out.history)


def test_demo_help_quotes_the_step_budget_of_demo_settings(capsys):
    from tkh.cli import build_parser
    from tkh.demo import demo_settings

    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cpu, gpu = (demo_settings(torch.device(d))["steps"] for d in ("cpu", "cuda"))
    assert f"--steps STEPS fine-tuning steps (default: {cpu} on a CPU, {gpu} on a GPU)" in text


def run_demo_cli(out: Path, **env_vars: str | None) -> dict:
    """`tkh demo --out OUT --device cpu` in a fresh process, offline, 2 threads (env_vars: None unsets);
    asserts it exits 0 without a traceback and returns its demo.json."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "2", "TKH_OFFLINE": "1"}
    for k, v in env_vars.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tkh.cli", "demo", "--out", str(out), "--device", "cpu"],
                       env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    print(r.stdout, f"\ntkh demo took {time.perf_counter() - t:.0f}s")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return json.loads((out / "demo.json").read_text())


def test_tkh_demo_command_end_to_end_on_cpu(tmp_path):
    """`tkh demo` exactly as the README runs it (a fresh process, offline, 2 threads, default settings: 150 FT
    steps, a 900 s cap, 60 frames), on the tiny fixture model in a temporary pretrained/ (TKH_PRETRAINED)."""
    summary = run_demo_cli(tmp_path / "out", TKH_PRETRAINED=str(make_tiny_pretrained(tmp_path / "pretrained")))
    assert summary["model"] == "tiny-test" and summary["portrait"] == "grace-hopper" and summary["device"] == "cpu"
    assert 0 < summary["ft_steps"] <= 150 and summary["frames"] == 5 * 12
    for name in ("animation.mp4", "animation.gif", "contact_sheet.png"):
        assert "tkh" in (read_label(tmp_path / "out" / name) or ""), name
    assert_budget_kept(summary)


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "pretrained" / "manifest.json").is_file(), reason="no shipped weights yet")
def test_tkh_demo_cli_with_shipped_weights(tmp_path):
    """`tkh demo` as a user runs it: the shipped weights, 2 threads; fine-tuning keeps its time budget (the
    whole demo's time on 2 cores is measured in the README: about 3 minutes)."""
    summary = run_demo_cli(tmp_path / "out", TKH_PRETRAINED=None)  # the repository's pretrained/
    assert summary["model"] == "small" and summary["ft_steps"] > 0
    for name in ("animation.mp4", "animation.gif", "contact_sheet.png"):
        assert read_label(tmp_path / "out" / name)
    assert_budget_kept(summary)
