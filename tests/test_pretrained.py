"""Shipped weights: manifest + fp16 shards < 16 MiB, sha256 verified on load, clear errors, discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tkh import pretrained
from tkh.errors import CheckpointError, WeightsUnavailableError

from adapt_helpers import NAME, make_tiny_pretrained

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def shipped(tmp_path):
    return make_tiny_pretrained(tmp_path / "pretrained", max_shard_bytes=2 * 2**20)  # force several shards


def test_write_manifest_and_load(shipped, monkeypatch):
    m = json.loads((shipped / "manifest.json").read_text())
    entry = m["models"][NAME]
    assert m["format"] == pretrained.MANIFEST_FORMAT and m["default"] == NAME
    assert len(entry["files"]) > 1 and all(f["bytes"] < 16 * 2**20 for f in entry["files"])
    assert entry["dtype"] == "float16" and entry["param_counts"]["D.W"] == 0
    assert {"config", "training", "metrics", "param_counts"} <= set(entry)
    monkeypatch.setenv("TKH_PRETRAINED", str(shipped))
    assert pretrained.available() == [NAME]
    model = pretrained.load(NAME)  # by name
    default = pretrained.load()  # the manifest's default
    assert model.weights_name == NAME and model.weights_sha256 == default.weights_sha256
    assert model.D.W.shape[0] == 0 and not model.training
    torch.manual_seed(0)
    from tkh.config import load_config
    from tkh.models import TalkingHeadModel

    ref = TalkingHeadModel(load_config("tiny"), num_videos=4)  # the same seed as make_tiny_pretrained
    for k, v in ref.G.state_dict().items():
        assert torch.allclose(model.G.state_dict()[k], v, atol=1e-3, rtol=1e-3), k  # fp16 round-trip
    assert pretrained.load(shipped).weights_sha256 == model.weights_sha256  # a folder works too


def test_checksum_mismatch_is_a_clear_error(shipped, monkeypatch):
    monkeypatch.setenv("TKH_PRETRAINED", str(shipped))
    f = shipped / pretrained.info(NAME)["files"][1]["path"]
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte, same size
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 .* differs from the manifest.*(re-download|git)"):
        pretrained.load(NAME)
    f.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        pretrained.load(NAME)
    f.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        pretrained.load(NAME)


def test_unknown_name_and_no_folder(tmp_path, monkeypatch, shipped):
    monkeypatch.setenv("TKH_PRETRAINED", str(shipped))
    with pytest.raises(WeightsUnavailableError, match="available"):
        pretrained.load("no-such-model")
    monkeypatch.setenv("TKH_PRETRAINED", str(tmp_path / "empty"))
    assert pretrained.available() == []
    with pytest.raises(WeightsUnavailableError):
        pretrained.load()


def test_load_checkpoint_path(tmp_path):
    from tkh.config import load_config
    from tkh.models import TalkingHeadModel

    path = TalkingHeadModel(load_config("tiny"), num_videos=2).save(tmp_path / "run.safetensors")
    model = pretrained.load(path)
    assert model.weights_sha256 and model.weights_name.endswith("run.safetensors")


def test_load_run_folder_and_no_weights_messages(tmp_path, monkeypatch):
    """A `tkh train` run folder loads its latest checkpoint; folders without weights say what to do."""
    from tkh.config import load_config
    from tkh.models import TalkingHeadModel
    from tkh.train import TrainState, save_checkpoint

    model = TalkingHeadModel(load_config("tiny"), num_videos=2)
    opt = {"D": torch.optim.Adam(model.D.parameters())}
    weights = save_checkpoint(tmp_path / "run" / "checkpoints", model, opt, TrainState(step=7), ["a", "b"])
    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        loaded = pretrained.load(folder)
        assert loaded.meta["step"] == 7 and loaded.weights_name == str(weights.resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsUnavailableError, match=r"neither a manifest.json .* nor a `tkh train` checkpoint"):
        pretrained.load(tmp_path / "empty")
    monkeypatch.setenv("TKH_PRETRAINED", str(tmp_path / "empty"))
    with pytest.raises(WeightsUnavailableError) as err:
        pretrained.load()
    msg = str(err.value)
    assert "None" not in msg and "no manifest.json" in msg and "TKH_PRETRAINED" in msg and "run folder" in msg


def test_shipped_weights_verify():
    """The weights in the repository's pretrained/ (when present) match their manifest and load on CPU."""
    if not (ROOT / "pretrained" / "manifest.json").is_file():
        pytest.skip("no shipped weights in pretrained/ yet")
    names = pretrained.available(ROOT / "pretrained")
    assert names
    total = sum(p.stat().st_size for p in (ROOT / "pretrained").iterdir() if p.is_file())
    assert total <= 32 * 2**20, f"pretrained/ is {total / 2**20:.1f} MiB > 32 MiB"
    for name in names:
        entry = pretrained.verify_model(name, ROOT / "pretrained")
        assert all(f["bytes"] < 16 * 2**20 for f in entry["files"])
    model = pretrained.load(ROOT / "pretrained")
    assert model.cfg.model.image_size in (64, 128, 256)


def test_make_compares_two_mean_tables_metric_by_metric():
    """pretrained/make.py --compare (and tools/gpu_finish.py): each metric judged in its own direction; the new
    weights 'win' only when better on every metric both tables have."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make", ROOT / "pretrained" / "make.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    base = {"ft-1": {"ssim": 0.48, "lpips": 0.55, "palette_fraction": 0.02, "csim": None}}
    better = {"ft-1": {"ssim": 0.50, "lpips": 0.45, "palette_fraction": 0.01, "csim": 0.9}}
    rows, wins = make.compare(better, base)
    assert wins and len(rows) == 2 + 3  # csim is missing on one side: not judged
    assert "| ft-1 | lpips | 0.4500 | 0.5500 | yes |" in rows
    rows, wins = make.compare({"ft-1": {**better["ft-1"], "lpips": 0.6}}, base)
    assert not wins and "| ft-1 | lpips | 0.6000 | 0.5500 | no |" in rows
