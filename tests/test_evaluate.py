"""Evaluation: cross-reenactment (CSIM, landmark error, time) and self-reenactment (+ SSIM, PSNR)."""

from __future__ import annotations

import json
import math

import pytest

from tkh import precision, pretrained
from tkh.evaluate import evaluate

from adapt_helpers import NAME, make_tiny_pretrained


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    return make_tiny_pretrained(tmp_path_factory.mktemp("pretrained"))


def test_cross_reenactment_metrics(shipped, grace_hopper, carphone_path):
    model = pretrained.load(shipped)
    r = evaluate(model, carphone_path, portrait=grace_hopper, mode="ff", max_frames=8, backend="dlib")
    assert r["protocol"] == "cross" and r["frames"] > 0 and r["shots"] == 1
    assert -1.0 <= r["csim"] <= 1.0
    assert 0.0 <= r["detected_fraction"] <= 1.0
    assert r["landmark_error"] is None or r["landmark_error"] >= 0
    assert r["seconds"] > 0 and r["model_sha256"] == model.weights_sha256
    assert r["identity_distance"] is None or r["identity_distance"] >= 0
    assert 0.0 <= r["same_person_fraction"] <= 1.0 and 0.0 <= r["palette_fraction"] <= 1.0
    json.dumps(r)  # JSON-ready


def test_self_reenactment_cli(shipped, carphone_path, tmp_path, monkeypatch):
    from tkh.cli import main

    monkeypatch.setenv("TKH_PRETRAINED", str(shipped))
    out = tmp_path / "m.json"
    rc = main(["evaluate", "--model", NAME, "--driver", str(carphone_path), "--self", "--shots", "2",
               "--max-frames", "16", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["protocol"] == "self" and r["shots"] == 2
    cfg = pretrained.load(shipped).cfg  # the precision verdict its times were measured under
    assert r["precision"] == precision.resolve(cfg.adapt.amp, cfg.adapt.channels_last, "cpu", cfg.model).describe()
    assert r["precision"].startswith(("float32", "bf16 autocast"))
    assert not set(r["adapt_frames"]) & set(r["eval_frames"])  # held-out frames only
    assert 0.0 <= r["ssim"] <= 1.0 and math.isfinite(r["psnr"])
    from tkh.nets import vgg16_available

    assert (r["lpips"] > 0) if vgg16_available() else r["lpips"] is None  # an untrained model is far from real
    assert 0.0 <= r["same_person_fraction"] <= 1.0
    assert 0.0 <= r["palette_fraction"] <= 1.0 and r["palette_fraction_real"] < 0.01  # real faces: ~no palette


def test_evaluate_needs_portrait_or_self(shipped, carphone_path, tmp_path, monkeypatch, capsys):
    from tkh.cli import main

    monkeypatch.setenv("TKH_PRETRAINED", str(shipped))
    rc = main(["evaluate", "--driver", str(carphone_path), "--json", str(tmp_path / "x.json")])
    assert rc == 2 and "--portrait" in capsys.readouterr().err


def test_self_reenactment_reuses_a_given_track(shipped, carphone_path):
    """One landmark detection shared by several calls (notebook 04: 1/8/32 shots, FF and FT) changes nothing."""
    from tkh.evaluate import evaluate_self
    from tkh.landmarks import detect_video

    model = pretrained.load(shipped)
    kw = {"shots": 2, "max_frames": 12, "n_eval": 2, "backend": "dlib"}
    track = detect_video(carphone_path, backend="dlib", max_frames=12, progress=False)
    a = evaluate_self(model, carphone_path, **kw)
    b = evaluate_self(model, carphone_path, track=track, **kw)
    assert a["adapt_frames"] == b["adapt_frames"] and a["eval_frames"] == b["eval_frames"]
    assert a["ssim"] == pytest.approx(b["ssim"]) and a["psnr"] == pytest.approx(b["psnr"])


def test_evaluate_shows_a_progress_bar_per_stage(shipped, grace_hopper, carphone_path, tmp_path, monkeypatch,
                                                 capsys):
    """Issue 19: minutes of fine-tuning and rendering on a CPU used to print nothing."""
    from PIL import Image

    from tkh.cli import main

    monkeypatch.setenv("TKH_PRETRAINED", str(shipped))
    monkeypatch.setenv("TKH_OFFLINE", "1")
    portrait = tmp_path / "hopper.png"
    Image.fromarray(grace_hopper).save(portrait)
    out = tmp_path / "m.json"
    rc = main(["evaluate", "--model", NAME, "--portrait", str(portrait), "--driver", str(carphone_path),
               "--mode", "ft", "--steps", "2", "--max-frames", "6", "--device", "cpu", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for stage in ("landmarks carphone", "fine-tuning", "rendering", "metrics"):
        assert stage in captured.err, f"no {stage!r} bar in:\n{captured.err}"
    assert "driver carphone_pristine.mp4: a face in 6 of 6 frames (100%)" in captured.out
    assert json.loads(out.read_text())["driver_faces"]["with_face"] == 6
