"""tkh preprocess under stress (issue 6): kill -9 of a real run, a long video in bounded memory, real clips.

The kill and memory tests run `tkh preprocess` as a separate process, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, shared_path

from tkh.data import EpisodeDataset, load_cache_index, preprocess


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TKH_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _finished(out: Path) -> list[Path]:
    vdir = out / "videos"
    return sorted(d for d in vdir.iterdir() if not d.name.startswith(".tmp-")) if vdir.is_dir() else []


def test_kill_9_mid_run_then_resume(tmp_path, carphone_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(6):
        os.symlink(carphone_path, clips / f"speaker{i}.mp4")
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "tkh.cli", "preprocess", str(clips), "--out", str(out), "--size", "64",
           "--frames-per-video", "8", "--backend", "dlib"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not _finished(out):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no video finished in 180 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: the next video is being decoded / detected / written
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = _finished(out)
    assert 1 <= len(done) < 6
    snapshot = {f: (f.stat().st_mtime_ns, f.read_bytes()) for d in done for f in d.iterdir()}
    # what a killed run leaves is readable: a valid index (atomic) listing only complete videos
    json.loads((out / "index.json").read_text())
    for v in load_cache_index(out).videos:
        assert np.load(out / v.dir / "frames.npy", mmap_mode="r").shape[0] == v.n_frames
    half = out / "videos" / ".tmp-speaker5-1a2b3c4d-99999"  # as if killed while writing
    half.mkdir(exist_ok=True)
    (half / "frames.npy").write_bytes(b"\x93NUMPY half")

    rerun = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "6 videos ok, 0 skipped" in rerun.stdout and f"{len(done)} already done" in rerun.stdout
    for f, (mtime, data) in snapshot.items():  # finished videos kept, not redone
        assert f.stat().st_mtime_ns == mtime and f.read_bytes() == data
    assert not list((out / "videos").glob(".tmp-*"))
    info = load_cache_index(out)
    assert info.num_videos == 6 and len(_finished(out)) == 6
    assert EpisodeDataset(out, k=4)[5]["frames"].shape == (4, 3, 64, 64)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from tkh.data import preprocess

    def hwm_mb():  # peak resident set size of this process so far
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    short, long, out = sys.argv[1:4]
    preprocess([short], out + "/a", size=64, frames_per_video=4, backend="dlib", progress=False)
    before = hwm_mb()  # warmed up: imports, dlib models, decoder at this resolution
    s = preprocess([long], out + "/b", size=64, frames_per_video=4, backend="dlib", progress=False)
    print(json.dumps({"before_mb": before, "after_mb": hwm_mb(), "ok": s.ok, "frames": s.frames}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_long_video_is_streamed_in_bounded_memory(tmp_path, carphone_path):
    """3600 real frames at 352x288 (1.1 GB decoded) preprocess with < 64 MB of peak RSS growth."""
    import cv2
    import imageio_ffmpeg

    from tkh.media import read_video, video_info, write_video

    frames, fps = read_video(carphone_path)
    write_video(tmp_path / "short.mp4", [cv2.resize(f, (352, 288)) for f in frames], fps=30)
    # 30 loops of the 120 real frames, concatenated by ffmpeg without re-encoding (seconds, not minutes)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "29", "-i",
                    str(tmp_path / "short.mp4"), "-c", "copy", str(tmp_path / "long.mp4")], check=True)
    n = video_info(tmp_path / "long.mp4")["n_frames"]
    assert n >= 3000
    run = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "short.mp4"), str(tmp_path / "long.mp4"),
                          str(tmp_path)], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout.strip().splitlines()[-1])
    growth = r["after_mb"] - r["before_mb"]
    whole = n * 352 * 288 * 3 / 2**20
    print(f"peak RSS {r['before_mb']:.0f} -> {r['after_mb']:.0f} MB (+{growth:.1f} MB) for {n} frames "
          f"({whole:.0f} MB decoded)")
    assert r["ok"] == 1 and r["frames"] >= 2
    assert growth < 64, f"peak RSS grew {growth:.0f} MB on a {n}-frame video; is it loaded whole?"


def test_shared_talking_head_clips(tmp_path):
    """Real clips of three sources: GRID (mpg), a VoxCeleb-style crop (mov), a phone video (mp4)."""
    clips = [shared_path("talking-heads", name) for name in ("grid_bbaf2n.mpg", "vox_lia_3.mov", "lp_d5.mp4")]
    s = preprocess(clips, tmp_path / "c", size=64, frames_per_video=8, backend="dlib", progress=False)
    info = load_cache_index(tmp_path / "c")
    assert info.video_ids == ["grid_bbaf2n", "lp_d5", "vox_lia_3"], s.skipped_reasons
    assert all(v.n_frames >= 6 for v in info.videos)
    item = EpisodeDataset(tmp_path / "c", k=4)[0]
    assert item["frames"].shape == (4, 3, 64, 64)


@pytest.mark.slow
def test_two_worker_processes_give_the_same_cache(tmp_path, carphone_path, bikes_path):
    """workers=2 (spawned processes, each loading dlib) writes what workers=1 writes, skips included."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        os.symlink(carphone_path, clips / f"c{i}.mp4")
    os.symlink(bikes_path, clips / "bikes.mp4")
    one = preprocess(clips, tmp_path / "one", size=64, frames_per_video=4, backend="dlib", progress=False)
    two = preprocess(clips, tmp_path / "two", size=64, frames_per_video=4, backend="dlib", workers=2, progress=False)
    assert (one.ok, one.skipped, one.frames) == (two.ok, two.skipped, two.frames) == (2, 1, one.frames)
    a, b = load_cache_index(tmp_path / "one"), load_cache_index(tmp_path / "two")
    for va, vb in zip(a.videos, b.videos):
        assert va.id == vb.id
        np.testing.assert_array_equal(np.load(a.root / va.dir / "frames.npy"), np.load(b.root / vb.dir / "frames.npy"))
