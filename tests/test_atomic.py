"""tkh.atomic: a file appears whole or not at all; a failed write leaves the old file and no temporary."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tkh.atomic import atomic_path, save_safetensors


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "weights.safetensors"
    save_safetensors({"a": torch.ones(3)}, target, metadata={"v": "1"})
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise OSError(28, "disk full")  # what a full disk raises mid-write (ENOSPC)
    assert torch.equal(load_file(target)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_save_creates_the_folder_and_replaces(tmp_path):
    target = tmp_path / "new" / "w.safetensors"
    save_safetensors({"a": torch.zeros(2)}, target)
    save_safetensors({"a": torch.full((2,), 7.0)}, target)
    assert torch.equal(load_file(target)["a"], torch.full((2,), 7.0))
    assert len(list(target.parent.iterdir())) == 1


def test_written_file_has_the_usual_permissions(tmp_path):
    """Not mkstemp's 0600: a shared pretrained/ or run folder stays readable as any file the user writes."""
    import os

    mask = os.umask(0o022)
    try:
        target = save_safetensors({"a": torch.zeros(1)}, tmp_path / "w.safetensors")
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644
