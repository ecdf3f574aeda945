"""Real `tkh train` processes: SIGKILL a run and resume it; DDP over two CPU processes (gloo, torchrun)
equals one process on the same global batch. Slow on a loaded 2-core machine (process start + steps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tkh.config import load_config
from tkh.models import TalkingHeadModel
from tkh.train import latest_checkpoint, read_log

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
ROOT = Path(__file__).resolve().parents[1]


def tiny_yaml(path: Path, **train) -> Path:
    cfg = load_config("tiny").replace(
        train={"progress": False, "tensorboard": False, "sample_every": 0, "log_every": 1, "device": "cpu",
               "num_workers": 0, **train},
        loss={"perceptual": "none", "allow_no_perceptual": True})
    cfg.to_yaml(path)
    return path


def env(threads: int = 1) -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def test_sigkill_then_resume_continues_from_last_checkpoint(tiny_cache, tmp_path):
    yaml_path = tiny_yaml(tmp_path / "tiny.yaml", steps=1000, ckpt_every=1)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tkh.cli", "train", "--config", str(yaml_path), "--data", str(tiny_cache),
           "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env(2), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = run / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)  # no handler runs: whatever was being written stays half-written
    proc.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert killed_at >= 2
    weights, _ = latest_checkpoint(run / "checkpoints")
    assert TalkingHeadModel.load(weights).meta["step"] == killed_at  # the pointer names a complete pair

    done = subprocess.run(cmd + ["--resume", "--steps", str(killed_at + 1)], env=env(2), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at step {killed_at + 1} after 1 steps" in done.stdout
    steps = [int(r["step"]) for r in read_log(run / "log.csv")]
    assert steps[-1] == killed_at + 1 and steps == sorted(set(steps))  # the redone rows replaced, none duplicated
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_ddp_two_cpu_ranks_equal_one_process(tiny_cache, tmp_path):
    """torchrun --nproc_per_node 2 (gloo) with global batch 2 == one process with batch 2, after 2 steps."""
    yaml_path = tiny_yaml(tmp_path / "tiny.yaml", steps=2, batch_size=2, ckpt_every=0)
    base = ["-m", "tkh.cli", "train", "--config", str(yaml_path), "--data", str(tiny_cache)]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *base, "--out", str(tmp_path / "ddp")], env=env(1), cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run([sys.executable, *base, "--out", str(tmp_path / "one")], env=env(2), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    a = TalkingHeadModel.load(latest_checkpoint(tmp_path / "ddp" / "checkpoints")[0]).state_dict()
    b = TalkingHeadModel.load(latest_checkpoint(tmp_path / "one" / "checkpoints")[0]).state_dict()
    # Float sums run in another order under the all-reduce, so gradients agree to ~1e-7 relative. Adam turns a
    # gradient that is ~1e-8 (its eps) into a step of up to ±lr whose sign such a difference can flip: a few
    # elements in 10^4 may then differ by up to 2·lr per step. Everything else must agree to 1e-5.
    lr_steps = 2 * 2e-4 * 2  # 2 · max(lr_d, lr_eg) · steps
    total = outliers = 0
    for k in a:
        diff = (a[k] - b[k]).abs()
        assert diff.max().item() <= lr_steps, f"{k}: max |Δ| {diff.max().item():.2e}"
        outliers += int((diff > 1e-5 + 1e-4 * b[k].abs()).sum())
        total += diff.numel()
    assert outliers <= 1e-4 * total, f"{outliers} of {total} parameters differ by more than 1e-5"
    print(f"DDP vs one process: {outliers} of {total} parameters beyond 1e-5")
    # D's per-video W: rows of videos seen on either rank were summed by DDP's all-reduce, exactly
    torch.testing.assert_close(a["D.W"], b["D.W"], rtol=1e-4, atol=1e-5)
    la, lb = read_log(tmp_path / "ddp" / "log.csv"), read_log(tmp_path / "one" / "log.csv")
    assert len(la) == len(lb) == 2
    for key in ("G_total", "D_total", "G_mch"):  # step 1 starts from identical weights: same losses
        assert float(la[0][key]) == pytest.approx(float(lb[0][key]), rel=1e-5, abs=1e-6), key
