"""The run folder: refuse a fresh run over an old one, and the files that say what a run is.

    RUN/config.json       the resolved config (rewritten on every start)
    RUN/videos.json       training and held-out video ids
    RUN/precision.jsonl   one line per (re)start: the step it started at and the precision policy used
    RUN/log.csv, samples/, checkpoints/, tb/, losses.png   (tkh.train.logging, tkh.train.checkpoint)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tkh.config import Config
from tkh.errors import ConfigError
from tkh.precision import Policy
from tkh.train.checkpoint import latest_checkpoint

__all__ = ["prepare_run_dir", "resume_note", "write_run_files"]


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create the folder; ConfigError when it holds a run and `resume` is not set."""
    ckpts = run_dir / "checkpoints"
    if not resume and ckpts.is_dir() and latest_checkpoint(ckpts) is not None:
        raise ConfigError(f"{run_dir} already holds a training run; pass --resume (resume=True) to continue it "
                          "or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)


def write_run_files(run_dir: Path, cfg: Config, dataset: Any, policy: Policy, step: int) -> None:
    """config.json, videos.json, and this start's line of precision.jsonl."""
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    held = sorted(set(dataset.info.video_ids) - set(dataset.video_ids))
    (run_dir / "videos.json").write_text(json.dumps({"train": dataset.video_ids, "holdout": held}, indent=1))
    with open(run_dir / "precision.jsonl", "a") as f:
        f.write(json.dumps({"started_at_step": step, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                            **policy.to_dict()}) + "\n")


def resume_note(run_dir: Path, step: int, total: int) -> str:
    """What a resumed run says in its first line."""
    found = latest_checkpoint(run_dir / "checkpoints")
    where = found[0] if found else run_dir / "checkpoints"
    if step >= total:
        return (f"the run is already complete (step {step} of train.steps={total}, checkpoint {where}); "
                "nothing to do: pass a larger --steps to continue it")
    return f"resuming from step {step}, checkpoint {where}"
