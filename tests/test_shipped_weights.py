"""The weights in pretrained/ are what the manifest claims: re-measure them on a held-out clip (issue 8).

`pretrained/make.py` measured every held-out clip with dlib landmarks; feed-forward adaptation (FF) is
deterministic, so the 1-shot FF numbers of one clip must come out the same here, up to float rounding
across machines and BLAS builds (tolerances below). FT is not re-run: it is covered by tests/test_adapt.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_path

from tkh import pretrained

ROOT = Path(__file__).resolve().parents[1]
TOL = {"ssim": 0.01, "psnr": 0.3, "csim": 0.01}  # absolute; SSIM and CSIM lie in [-1, 1], PSNR in dB


def _shipped() -> dict:
    if not (ROOT / "pretrained" / "manifest.json").is_file():
        pytest.skip("no shipped weights in pretrained/")
    entry = pretrained.info(folder=ROOT / "pretrained")
    if not entry.get("metrics", {}).get("per_clip"):
        pytest.skip("the shipped model's manifest has no per-clip metrics")
    return entry


@pytest.mark.slow
def test_shipped_weights_reproduce_their_heldout_metrics():
    from tkh.evaluate import evaluate_self

    entry = _shipped()
    clip = "grid_swiz3n"
    claimed = entry["metrics"]["per_clip"][clip]["ff-1"]
    video = shared_path("talking-heads", f"{clip}.mpg")
    model = pretrained.load(ROOT / "pretrained")
    assert clip not in model.meta.get("video_ids", []), "the evaluation clip must be held out of training"
    got = evaluate_self(model, video, shots=1, mode="ff", n_eval=8, device="cpu", backend="dlib")
    for key, tol in TOL.items():
        assert got[key] == pytest.approx(claimed[key], abs=tol), f"{key}: measured {got[key]}, manifest {claimed[key]}"


def test_manifest_reports_what_issue_8_asks():
    entry = _shipped()
    metrics, training = entry["metrics"], entry["training"]
    for cell in ("ff-1", "ft-1", "ff-8", "ft-8"):
        assert set(metrics["mean"][cell]) >= {"ssim", "psnr", "csim", "landmark_error"}
    assert metrics["heldout"] and "painting" in metrics
    assert {"data", "steps", "compute", "command"} <= set(training)
    assert set(entry["param_counts"]) >= {"E", "G", "D", "total"}
    assert entry["description"] and str(training["steps"]) in entry["description"]  # says what it is
    # issue 8's first target, as the manifest records it: FT beats FF in CSIM and SSIM on average
    for shots in ("1", "8"):
        ff, ft = metrics["mean"][f"ff-{shots}"], metrics["mean"][f"ft-{shots}"]
        assert ft["ssim"] > ff["ssim"] and ft["csim"] > ff["csim"], shots
