"""tkh.hub: downloads are verified by sha256 and atomic; a partial or wrong file is never kept."""

from __future__ import annotations

import hashlib

import pytest

from tests.localserver import serve_directory
from tkh import hub
from tkh.errors import ChecksumError, DownloadError


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    payload = b"real bytes of a file " * 1000
    (root / "file.bin").write_bytes(payload)
    with serve_directory(root) as url:
        yield url, payload


def test_download_verifies_and_renames(tmp_path, served):
    url, payload = served
    digest = hashlib.sha256(payload).hexdigest()
    dest = hub.download(f"{url}/file.bin", tmp_path / "cache" / "file.bin", sha256=digest, progress=False)
    assert dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]


def test_wrong_checksum_keeps_nothing(tmp_path, served):
    url, _ = served
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(ChecksumError, match="failed its checksum"):
        hub.download(f"{url}/file.bin", dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_prefix_checksum_like_torch_hub(tmp_path, served):
    url, payload = served
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    assert hub.download(f"{url}/file.bin", tmp_path / "f.bin", prefix=prefix, progress=False).exists()
    with pytest.raises(ChecksumError):
        hub.download(f"{url}/file.bin", tmp_path / "g.bin", prefix="deadbeef", progress=False)


def test_missing_file_and_unreachable_host(tmp_path, served):
    url, _ = served
    with pytest.raises(DownloadError, match="could not download"):
        hub.download(f"{url}/nope.bin", tmp_path / "x.bin", progress=False)
    with pytest.raises(DownloadError, match="place the file at"):
        hub.download("http://127.0.0.1:9/x.bin", tmp_path / "y.bin", timeout=2, progress=False)
    assert not list(tmp_path.glob("*.part"))


def test_fetch_uses_a_mirror_but_keeps_the_registered_checksum(tmp_path, served, monkeypatch):
    url, payload = served
    monkeypatch.setenv("TKH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(hub.REGISTRY, "test-file", hub.RemoteFile(
        url="https://example.invalid/file.bin", sha256=hashlib.sha256(payload).hexdigest(), filename="file.bin"))
    path = hub.fetch("test-file", url=f"{url}/file.bin")
    assert path == tmp_path / "cache" / "file.bin" and path.read_bytes() == payload
    assert hub.fetch("test-file") == path  # cached: no network needed
    path.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="delete the file"):
        hub.fetch("test-file")


def test_s3fd_registry_entry_refuses_other_bytes(tmp_path, served):
    """The registered face-alignment checksums are the published ones: other bytes never pass."""
    url, _ = served
    with pytest.raises(ChecksumError):
        hub.fetch("s3fd", url=f"{url}/file.bin", dest_dir=tmp_path)
    assert not (tmp_path / "s3fd-619a316812.pth").exists()
