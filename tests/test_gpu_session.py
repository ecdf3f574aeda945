"""tools/gpu_prepare.py, gpu_session.py and gpu_finish.py: what travels to a lent GPU and what comes back.

The session itself runs here as a `--dry-run` (tiny config on the CPU, a few steps per stage, the output
layout and the limits of what comes back checked), end to end from a tiny cache made of the carphone clip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import standin_clips

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import _carry as C  # noqa: E402
import gpu_session as S  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "TKH_OFFLINE": "1"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory, carphone_path) -> list[Path]:
    """The carphone clip and three stand-ins (distinct identities) made from it."""
    return [carphone_path, *standin_clips(carphone_path, tmp_path_factory.mktemp("clips"))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, clips) -> Path:
    """A real 64-px cache of the four clips, 10 frames each (dlib landmarks)."""
    from tkh.data import preprocess

    out = tmp_path_factory.mktemp("gpu") / "cache64"
    preprocess(clips, out, size=64, frames_per_video=10, backend="dlib", progress=False)
    return out


# --- tkh.data.pack --------------------------------------------------------------------------------
def test_pack_cache_keeps_spread_frames_as_jpeg_and_unpacks_to_a_cache_that_trains(cache, tmp_path):
    from tkh.data import EpisodeDataset
    from tkh.data.cache import load_cache_index
    from tkh.data.pack import pack_cache, unpack_cache

    meta = pack_cache(cache, tmp_path / "pack", frames_per_video=6, quality=95, exclude=["standin_reversed"])
    assert meta["removed"] == ["standin_reversed"] and meta["bytes"] == C.folder_bytes(tmp_path / "pack")
    info = load_cache_index(unpack_cache(tmp_path / "pack", tmp_path / "cache"))
    assert len(info.videos) == 3 and all(v.n_frames == 6 for v in info.videos)
    orig = load_cache_index(cache)
    v = info.videos[0]
    src = next(e for e in orig.videos if e.id == v.id)
    keep = np.unique(np.linspace(0, src.n_frames - 1, 6).round().astype(int))
    frames = np.load(info.root / v.dir / "frames.npy")
    want = np.load(orig.root / src.dir / "frames.npy")[keep]
    assert frames.shape == want.shape and np.abs(frames.astype(int) - want).mean() < 4  # JPEG q95
    with np.load(info.root / v.dir / "landmarks.npz") as a, np.load(orig.root / src.dir / "landmarks.npz") as b:
        np.testing.assert_array_equal(a["landmarks"], b["landmarks"][keep])
        np.testing.assert_array_equal(a["source_size"], b["source_size"])
    ds = EpisodeDataset(info.root, k=2, image_size=64)
    assert ds[(0, 0)]["frames"].shape[:2] == (2, 3)


def test_pack_cache_refuses_a_holdout_that_matches_nothing(cache, tmp_path):
    from tkh.data.pack import pack_cache
    from tkh.errors import BadInputError

    with pytest.raises(BadInputError, match="matches no identity"):
        pack_cache(cache, tmp_path / "pack", exclude=["nobody"])


# --- carried networks ----------------------------------------------------------------------------------
def test_weights_travel_as_fp16_losslessly_compressed(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    t = {"a.weight": torch.randn(64, 33), "b.bias": torch.randn(7), "steps": torch.arange(5)}
    save_file(t, str(tmp_path / "net.safetensors"), metadata={"kind": "test"})
    size = C.pack_weights(tmp_path / "net.safetensors", tmp_path / "carry" / "net.safetensors.fp16z")
    assert size == (tmp_path / "carry" / "net.safetensors.fp16z").stat().st_size
    out = C.unpack_weights(tmp_path / "carry" / "net.safetensors.fp16z", tmp_path / "cache")
    assert out.name == "net.safetensors"
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["kind"] == "test" and f.metadata()["tkh_carried_as"] == "float16"
        assert torch.equal(f.get_tensor("a.weight"), t["a.weight"].half())
        assert torch.equal(f.get_tensor("steps"), t["steps"])


def test_dlib_network_loads_from_its_carried_fp16_copy_without_face_recognition_models(tmp_path, monkeypatch,
                                                                                       grace_hopper):
    pytest.importorskip("face_recognition_models")
    import tkh.nets.dlib_resnet as dr
    from tkh.errors import WeightsUnavailableError
    from tkh.metrics import face_chips

    full = dr.load_dlib_face_resnet()
    packed = tmp_path / f"{dr.converted_path().name}.fp16z"
    C.pack_weights(dr.converted_path(), packed)
    monkeypatch.setenv("TKH_CACHE", str(tmp_path / "cache"))
    C.unpack_weights(packed, tmp_path / "cache")

    def no_package():
        raise WeightsUnavailableError("no face_recognition_models")

    monkeypatch.setattr(dr, "default_dat_path", no_package)
    carried = dr.load_dlib_face_resnet()
    from tkh.nets import available_perceptual

    assert "dlib" in available_perceptual()
    chips = face_chips([grace_hopper])
    a, b = full.embed_chips(chips)[0], carried.embed_chips(chips)[0]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9999
    monkeypatch.setenv("TKH_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsUnavailableError):
        dr.load_dlib_face_resnet()


# --- held-out clips ----------------------------------------------------------------------------------
def test_a_window_of_the_frame_crops_exactly_like_the_frame(clips):
    from tkh.landmarks import crop, detect
    from tkh.landmarks.crop import face_box, transform_for_box
    from tkh.media import read_video

    frame = read_video(clips[0], max_frames=1)[0][0]
    lm = detect(frame, backend="dlib")
    t = transform_for_box(face_box(lm), 64, frame.shape[:2])
    window = C._window(frame, t.x0 - 4, t.y0 - 4, t.side + 8)
    for size in (64, 128):
        a, la, _ = crop(frame, lm, size)
        b, lb, _ = crop(window, lm - np.array([t.x0 - 4, t.y0 - 4], np.float32), size)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(la, lb, atol=1e-3)


def test_evaluation_from_the_carried_frames_equals_evaluation_from_the_video(clips, tmp_path):
    from tkh.config import load_config
    from tkh.evaluate import evaluate_self
    from tkh.models import TalkingHeadModel

    torch.manual_seed(0)
    model = TalkingHeadModel(load_config("tiny"), num_videos=0).eval()
    index = C.make_heldout_pack([clips[1]], tmp_path / "heldout", fmt="png")
    assert index["clips"][0]["carried"] == 16  # 8 adaptation frames (the 1-shot one among them) + 8 held out
    names, inputs, _ = C.load_heldout_pack(tmp_path / "heldout")
    skip = ("identity", "landmarks", "lpips")
    kw = dict(shots=8, mode="ff", n_eval=8, device="cpu", backend="dlib", skip=skip)
    here = evaluate_self(model, clips[1], **kw)
    carried = evaluate_self(model, names[0], **kw, **inputs[clips[1].stem])
    for key in ("ssim", "psnr", "palette_fraction", "palette_fraction_real", "adapt_frames", "eval_frames"):
        assert carried[key] == pytest.approx(here[key], rel=1e-6), key
    assert carried["skipped_metrics"] == sorted(skip)
    assert all(carried[k] is None for k in ("lpips", "csim", "identity_distance", "same_person_fraction",
                                            "landmark_error", "detected_fraction"))


# --- what comes back ---------------------------------------------------------------------------------
def test_check_out_names_every_limit(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b" / "c").mkdir(parents=True)
    for i in range(8):
        (out / f"f{i}.json").write_text("{}")
    assert C.check_out(out)[1] == []
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    with open(out / "big.bin", "wb") as f:
        f.truncate(C.OUT_MAX_FILE + 1)  # sparse: no disk used
    (out / "bad name!.txt").write_text("x")
    files, problems = C.check_out(out)
    assert len(files) == 11
    text = " | ".join(problems)
    assert "more than 2 folders down" in text and "over 16 MiB" in text and "11 files, over 8" in text
    assert "bad name!.txt: a name" in text


# --- the session's plan --------------------------------------------------------------------------------
def _session(tmp_path, *extra: str) -> S.Session:
    args = S.build_parser().parse_args(["--out", str(tmp_path / "out"), "--carry", str(tmp_path / "none"), *extra])
    args.config = args.config or str(ROOT / "configs" / "small-cpu.yaml")
    return S.Session(args)


def test_training_gets_what_the_deadline_leaves_after_the_later_stages(tmp_path):
    s = _session(tmp_path, "--minutes", "9.5", "--train-minutes", "6")
    train = next(st for st in s.enabled if st.name == "train")
    later = sum(st.plan_s for st in s.enabled[s.enabled.index(train) + 1:])
    cap, why = s.cap_for(train)
    assert why == "" and cap == pytest.approx(9.5 * 60 - S.END_RESERVE_S - later, abs=2)
    s = _session(tmp_path, "--minutes", "30", "--train-minutes", "2")
    assert s.cap_for(train)[0] == pytest.approx(120 + S.TRAIN_OVERHEAD_S, abs=1)
    s = _session(tmp_path, "--minutes", "9.5", "--cap", "evaluate=50")
    ev = next(st for st in s.enabled if st.name == "evaluate")
    assert s.cap_for(ev) == (50.0, "")
    s = _session(tmp_path, "--minutes", "1")
    cap, why = s.cap_for(next(st for st in s.enabled if st.name == "evaluate"))
    assert why.startswith("no time left")


def test_gpu_training_config_from_the_cpu_recipe(tmp_path):
    args = S.build_parser().parse_args(["--out", "x", "--set", "train.lr_eg=2e-4"])
    args.config = str(ROOT / "configs" / "small-cpu.yaml")
    plan = {"args": vars(args), "results": {"unpack": {"carried_nets": ["vgg16-lpips"], "cache_removed": ["lp_d5"]}}}
    cfg = S.train_config(plan)
    t = cfg.train
    assert (t.batch_size, t.k_shots, t.d_steps_per_g, t.device, t.init, t.w_rows) == (16, 8, 2, "cuda", "small",
                                                                                      "identity")
    assert t.holdout == () and t.lr_eg == 2e-4 and cfg.loss.perceptual == "vgg16" and t.tensorboard is False
    plan["args"]["from_scratch"] = True
    plan["results"]["unpack"]["carried_nets"] = ["vgg16-lpips", "dlib_face_resnet_v1-55533b28a95800a5"]
    cfg = S.train_config(plan)
    assert cfg.train.init == "" and cfg.loss.perceptual == "vgg16+face"


# --- the session, run -----------------------------------------------------------------------------------
def run_session(out: Path, carry: Path, *extra: str, timeout: int = 900) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_session.py"), "--dry-run", "--out", str(out),
                        "--carry", str(carry), *extra], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"] and summary["limits_problems"] == []
    return summary


def _status(summary: dict) -> dict[str, tuple[str, str]]:
    return {r["stage"]: (r["status"], r.get("note", "")) for r in summary["stages"]}


def test_a_stage_over_its_cap_is_cut_off_and_the_rest_still_run(tmp_path):
    summary = run_session(tmp_path / "out", tmp_path / "no-carry", "--only", "check,install,bench_ft",
                          "--slow", "bench_ft=120", "--cap", "bench_ft=3")
    st = _status(summary)
    assert st["check"][0] == "ok" and st["bench_ft"][0] == "cut off"
    assert "cut off at its cap of 3 s" in st["bench_ft"][1]
    # no carried wheel folder: reported, not fatal
    assert st["install"][0] == "skipped" and "no carried wheel folder" in st["install"][1]
    assert summary["results"]["check"]["carried_bytes"]["wheels"] is None
    assert {f["path"] for f in summary["files"]} == {"summary.json", "session.log", "benchmarks-cpu.json"}


def test_past_the_deadline_every_stage_is_skipped_with_the_reason(tmp_path):
    summary = run_session(tmp_path / "out", tmp_path / "no-carry", "--minutes", "0.01")
    st = _status(summary)
    assert {s for s, _ in st.values()} == {"skipped"}
    assert all("no time left" in st[s][1] for s in ("check", "install", "unpack"))
    assert st["evaluate"][1].startswith("no new weights")  # what is missing, when that comes first


@pytest.mark.slow
def test_dry_run_prepares_trains_evaluates_benchmarks_and_finishes(cache, tmp_path):
    """gpu_prepare -> gpu_session --dry-run -> gpu_finish, from the tiny cache, one clip held out."""
    carry = tmp_path / "carry"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_prepare.py"), "--cache", str(cache),
                        "--holdout", "standin_reversed", "--carry", str(carry), "--frames-per-video", "8",
                        "--min-frames", "4", "--nets", "dlib", "--wheels", "none"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    made = json.loads((carry / "carry.json").read_text())
    assert made["plan"]["removed"] == ["standin_reversed"] and made["plan"]["nets"] == ["dlib"]
    assert made["plan"]["frames_per_video"] == 8 and made["total_bytes"] <= C.TREE_LIMIT
    assert set(made["sizes"]) == {"heldout", "portrait", "nets/dlib", "cache"}

    out = tmp_path / "out"
    summary = run_session(out, carry, "--skip", "bench_train,bench_ft", "--defer", "landmarks")
    st = _status(summary)
    assert [st[s][0] for s in ("check", "unpack", "train", "evaluate", "bench_puppet", "bench_maxbatch")] == [
        "ok"] * 6, st
    assert st["install"][0] == "skipped" and "no carried wheel folder" in st["install"][1]
    names = {f["path"] for f in summary["files"]}
    assert {"summary.json", "session.log", "manifest.json", "heldout.png", "heldout-frames.npz",
            "benchmarks-cpu.json", "tiny-gpu-00001-of-00001.safetensors"} == names
    assert len(names) <= C.OUT_MAX_FILES
    train = summary["results"]["train"]
    assert train["steps"] == 4 and train["config"]["train"]["holdout"] == [] and train["holdout"] == [
        "standin_reversed"]
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = manifest["models"]["tiny-gpu"]["metrics"]
    assert metrics["heldout"] == ["standin_reversed"] and metrics["mean"]["ft-8"]["ssim"] is not None
    assert metrics["mean"]["ft-8"]["landmark_error"] is None and "landmarks" in metrics["deferred"]
    base = summary["results"]["evaluate"]["baseline"]
    assert base["name"] == "small" and base["mean"]["ff-1"]["psnr"] > 0
    bench = json.loads((out / "benchmarks-cpu.json").read_text())
    assert bench["puppet_frame"]["rows"] and bench["device"] == "cpu"
    assert bench["train_throughput_max_batch"]["max_batch"] == 4  # the dry run's limit: the search runs

    fin = tmp_path / "fin"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_finish.py"), str(out), "--out", str(fin)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    done = json.loads((fin / "manifest.json").read_text())["models"]["tiny-gpu"]["metrics"]
    assert "landmarks" in done["deferred_done"]
    assert all("detected_fraction" in cell for cells in done["per_clip"].values() for cell in cells.values())
    record = json.loads((fin / "finish.json").read_text())
    assert "new_beats_shipped_on_every_metric" in record and (fin / "comparison.md").is_file()
