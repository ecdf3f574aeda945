"""tkh.hub: downloads are verified by sha256 and atomic; a partial or wrong file is never kept."""

from __future__ import annotations

import ast
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.localserver import serve_directory
from tkh import hub
from tkh.errors import ChecksumError, DownloadError

ROOT = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------------------------------
# A server that drops the connection part-way, and a download killed with SIGKILL (issue 6)
# ---------------------------------------------------------------------------------------------
PAYLOAD = bytes(range(256)) * 4096 * 3  # 3 MiB: more than hub.CHUNK, so a part of it reaches the disk


class _Dropping(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD: whole at /ok; cut after a third at /cut-length (Content-Length announced) and
    /cut-chunked (chunked encoding, cut inside a chunk); at /slow, in 64 KiB pieces 50 ms apart (2.4 s)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        third = len(PAYLOAD) // 3
        self.send_response(200)
        if self.path == "/cut-chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(PAYLOAD) + PAYLOAD[:third])
        else:
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            if self.path == "/ok":
                self.wfile.write(PAYLOAD)
            elif self.path == "/slow":
                for i in range(0, len(PAYLOAD), 1 << 16):
                    self.wfile.write(PAYLOAD[i:i + (1 << 16)])
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self.wfile.write(PAYLOAD[:third])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def dropping_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dropping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["cut-length", "cut-chunked"])
def test_connection_dropped_mid_download_is_a_one_line_error(tmp_path, dropping_server, path):
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(DownloadError) as info:  # not http.client.IncompleteRead's traceback
        hub.download(f"{dropping_server}/{path}", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                     timeout=5, progress=False)
    assert "\n" not in str(info.value) and path in str(info.value)
    assert list(dest.parent.iterdir()) == []  # neither the file nor its partial download


def test_download_killed_with_sigkill_is_never_used(tmp_path, dropping_server, monkeypatch):
    """A real process downloading through tkh.hub, killed mid-transfer: the cache holds no file under the
    final name; the next fetch downloads again and verifies. The killed run's `.part` file is never read."""
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    cache = tmp_path / "cache"
    code = ("import sys; from tkh import hub; "
            "hub.download(sys.argv[1], sys.argv[2], sha256=sys.argv[3], progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, f"{dropping_server}/slow", str(cache / "file.bin"), digest],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until a part of the file is on disk
            parts = list(cache.glob("file.bin.*.part")) if cache.exists() else []
            if parts and parts[0].stat().st_size > 0:
                break
            assert proc.poll() is None, "the download finished or failed before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no partial download appeared within 60 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (cache / "file.bin").exists()
    stale = list(cache.glob("file.bin.*.part"))
    assert len(stale) == 1 and 0 < stale[0].stat().st_size < len(PAYLOAD)  # SIGKILL left it: nothing can clean up

    monkeypatch.setenv("TKH_CACHE", str(cache))
    monkeypatch.setitem(hub.REGISTRY, "test-payload", hub.RemoteFile(
        url=f"{dropping_server}/ok", sha256=digest, filename="file.bin"))
    path = hub.fetch("test-payload")
    assert path.read_bytes() == PAYLOAD
    assert stale[0].read_bytes() != PAYLOAD  # the partial file was not renamed into place


# ---------------------------------------------------------------------------------------------
# Never unpickle untrusted files (issue 6): a scan of tkh's own sources
# ---------------------------------------------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_sources_never_unpickle():
    """Every torch.load in tkh, the benchmarks and the notebook builders passes weights_only=True; nothing
    calls pickle.load(s), torch.jit.load or np.load(..., allow_pickle=True)."""
    files = [*ROOT.joinpath("tkh").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py"),
             *ROOT.joinpath("notebooks").glob("*.py")]
    assert len(files) > 20
    torch_loads, problems = 0, []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, name in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                torch_loads += 1
                value = kw.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "torch.jit.load",
                          "joblib.load"):
                problems.append(f"{where}: {name}")
            elif name in ("np.load", "numpy.load") and "allow_pickle" in kw:
                value = kw["allow_pickle"]
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
    assert not problems, problems
    assert torch_loads >= 1  # the scan does see the loaders (tkh.nets.vgg19, tkh.train.checkpoint)
