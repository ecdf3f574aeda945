"""VGG19 / VGGFace loaders: local files, torch hub's cache, verified downloads, clear errors.

The real VGG19 weights are not reachable here, so the weights in these tests are state dicts of the
right keys and shapes made by the test: they test the loaders only and are never used as a network.
"""

from __future__ import annotations

import pytest
import torch

from tests.localserver import serve_directory
from tkh import nets
from tkh.errors import ChecksumError, WeightsUnavailableError
from tkh.hub import REGISTRY
from tkh.nets.vgg19 import VGG19_CFG, load_vgg19
from tkh.nets.vggface import CONV_INDEX, VGG16_CFG, load_vggface

FILENAME = REGISTRY["vgg19"].filename


def vgg_state(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision-layout `features.N.*` tensors of the right shapes (loader test data only)."""
    g = torch.Generator().manual_seed(seed)
    state, idx, cin = {}, 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        state[f"features.{idx}.weight"] = torch.randn(v, cin, 3, 3, generator=g) * 0.01
        state[f"features.{idx}.bias"] = torch.randn(v, generator=g) * 0.01
        cin, idx = v, idx + 2
    return state


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "my-vgg19.pth"
    state = vgg_state(VGG19_CFG)
    state["classifier.6.weight"] = torch.zeros(10, 4)  # extra keys, as in torchvision's file, are ignored
    torch.save(state, path)
    return path, state


def test_local_file_loads_with_torchvision_keys(vgg19_file):
    path, state = vgg19_file
    model = load_vgg19(path)
    assert torch.equal(model.features[28].weight, state["features.28.weight"])  # conv5_1
    assert len(model.features) == 30  # truncated after relu5_1 (index 29)
    maps = model(torch.zeros(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]
    assert not any(p.requires_grad for p in model.parameters())


def test_imagenet_normalisation_of_tkh_tensors(vgg19_file):
    model = load_vgg19(vgg19_file[0], layers=(1,))
    x = torch.full((1, 3, 2, 2), -1.0)  # black in tkh's [-1, 1]
    expected = (0.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(model.normalize(x)[0, :, 0, 0], expected)


def test_wrong_files_raise_one_line_errors(tmp_path, vgg19_file):
    state = dict(vgg19_file[1])
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, tmp_path / "wrong-shape.pth")
    with pytest.raises(WeightsUnavailableError, match=r"features\.0\.weight has shape"):
        load_vgg19(tmp_path / "wrong-shape.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsUnavailableError, match="lacks"):
        load_vgg19(tmp_path / "partial.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a zip")
    with pytest.raises(WeightsUnavailableError, match="not a readable"):
        load_vgg19(tmp_path / "garbage.pth")
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_vgg19(tmp_path / "nope.pth")


def test_hub_cache_file_is_checked_against_the_registered_prefix(tmp_path, vgg19_file):
    hub = tmp_path / "checkpoints"
    hub.mkdir()
    (hub / FILENAME).write_bytes(vgg19_file[0].read_bytes())  # right name, other bytes
    with pytest.raises(ChecksumError, match="does not match"):
        load_vgg19(hub_dir=hub, download=False)


def test_download_failing_checksum_keeps_nothing(tmp_path, vgg19_file):
    www, hub = tmp_path / "www", tmp_path / "checkpoints"
    www.mkdir()
    (www / FILENAME).write_bytes(vgg19_file[0].read_bytes())
    with serve_directory(www) as url:
        with pytest.raises(ChecksumError, match="failed its checksum"):
            load_vgg19(hub_dir=hub, url=f"{url}/{FILENAME}", progress=False)
    assert not hub.exists() or list(hub.iterdir()) == []


def test_no_weights_no_network_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="pass path=") as info:
        load_vgg19(hub_dir=tmp_path, download=False)
    assert "\n" not in str(info.value)
    with pytest.raises(WeightsUnavailableError, match="get online") as info:
        load_vgg19(hub_dir=tmp_path, url="http://127.0.0.1:9/vgg19.pth", progress=False)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_vggface_needs_a_path_and_reads_caffe_names(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="path="):
        load_vggface()
    with pytest.raises(WeightsUnavailableError, match="path="):
        nets.load_face_network("vggface")
    tv = vgg_state(VGG16_CFG, seed=1)
    caffe = {f"{name}.{kind}": tv[f"features.{idx}.{kind}"] for name, idx in CONV_INDEX.items()
             for kind in ("weight", "bias")}
    caffe["fc8.weight"] = torch.zeros(2622, 4096)[:2]  # classifier layers are ignored
    torch.save(caffe, tmp_path / "vggface.pth")
    model = nets.load_face_network("vggface", path=tmp_path / "vggface.pth")
    assert torch.equal(model.features[24].weight, tv["features.24.weight"])  # conv5_1
    maps = model.feature_maps(torch.zeros(1, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [64, 128, 256, 512, 512]
    # Caffe convention: 0-255, mean subtracted, BGR order
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(red)[0, :, 0, 0], torch.tensor([-93.5940, -104.7624, 255 - 129.1863]))


def test_face_network_kinds_and_availability(tmp_path, monkeypatch):
    with pytest.raises(WeightsUnavailableError, match="unknown face network"):
        nets.load_face_network("arcface")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert "dlib" in nets.available_perceptual() and "vgg19" not in nets.available_perceptual()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / FILENAME).write_bytes(b"x")
    assert "vgg19" in nets.available_perceptual()


@pytest.mark.parametrize("loader", ["vgg19", "vggface"])
def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path, loader):
    """torch.load(weights_only=True): a .pth whose unpickling would run a command is refused and never runs it,
    both in the plain-pickle format and in torch.save's zip format."""
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    plain, zipped = tmp_path / "plain.pth", tmp_path / "zipped.pth"
    plain.write_bytes(pickle.dumps({"features.0.weight": Payload()}))
    torch.save({"features.0.weight": Payload()}, zipped)
    load = load_vgg19 if loader == "vgg19" else load_vggface
    for path in (plain, zipped):
        with pytest.raises(WeightsUnavailableError, match=path.name) as info:
            load(path)
        assert "\n" not in str(info.value)
    assert not marker.exists()
