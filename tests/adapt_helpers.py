"""Shared by the adaptation tests: a freshly initialised tiny model (seed 0), shipped like real weights.

It is NOT meta-trained (the tests check the code paths and the properties that hold for any weights:
FT fits the adaptation image better than FF, files round-trip, checksums are enforced); the shipped
weights in pretrained/ are checked separately when present.
"""

from __future__ import annotations

from pathlib import Path

import torch

NAME = "tiny-test"


def make_tiny_pretrained(folder: Path, name: str = NAME, seed: int = 0, max_shard_bytes: int | None = None) -> Path:
    """A tiny TalkingHeadModel (seed `seed`, 4 training videos) written as shipped weights + manifest."""
    from tkh.config import load_config
    from tkh.models import TalkingHeadModel
    from tkh.pretrained import MAX_SHARD_BYTES, write_manifest

    torch.manual_seed(seed)
    model = TalkingHeadModel(load_config("tiny"), num_videos=4)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(model, name, folder, metrics={}, training={"steps": 0, "data": "none (freshly initialised)"},
                   description="TEST ONLY: freshly initialised tiny model", max_shard_bytes=max_shard_bytes or
                   MAX_SHARD_BYTES)
    return folder
