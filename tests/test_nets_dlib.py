"""The dlib face-recognition ResNet port: the .dat reader, and the torch module against dlib itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tkh.errors import BadInputError, WeightsUnavailableError
from tkh.nets import dlib_format
from tkh.nets.dlib_format import DlibFormatError, DlibReader, read_dnn
from tkh.nets.dlib_resnet import default_dat_path, load_dlib_face_resnet

dlib = pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def net():
    return load_dlib_face_resnet(use_cache=False)


@pytest.fixture(scope="module")
def dlib_models():
    import face_recognition_models as frm

    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
            dlib.face_recognition_model_v1(frm.face_recognition_model_location()))


# --- the serialization primitives, on hand-written bytes -------------------------------------
def test_integer_float_bool_string_encodings():
    r = DlibReader(bytes([0x01, 0x00,             # 0
                          0x01, 0x02,             # 2
                          0x81, 0x1C,             # -28
                          0x02, 0x2C, 0x01,       # 300, little-endian
                          0x03, 0x0A, 0xD7, 0xA3, 0x81, 0x1C,  # float 0x a3d70a * 2**-28 = 0.04
                          ord("1"), ord("0"),
                          0x01, 0x03]) + b"abc")  # a string: its length as an integer, then the bytes
    assert [r.read_int(), r.read_int(), r.read_int(), r.read_int()] == [0, 2, -28, 300]
    assert r.read_float() == pytest.approx(0.04, rel=1e-7)
    assert (r.read_bool(), r.read_bool()) == (True, False)
    assert r.read_string() == "abc"
    with pytest.raises(DlibFormatError, match="end of file"):
        r.read_int()


def test_tensor_encoding_version_2_is_raw_little_endian_float32():
    values = np.arange(6, dtype="<f4") / 7
    blob = bytes([0x01, 0x02, 0x01, 0x01, 0x01, 0x02, 0x01, 0x03, 0x01, 0x01]) + values.tobytes()
    t = DlibReader(blob).read_tensor()
    assert t.shape == (1, 2, 3, 1) and np.array_equal(t.reshape(-1), values)


# --- the real file ------------------------------------------------------------------------------
def test_reader_parses_the_whole_face_model():
    parsed = read_dnn(default_dat_path())  # raises unless the parse ends exactly at the end of the file
    kinds = [layer.kind for layer in parsed.layers]
    assert len(kinds) == 108 and kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds[:4] == ["con", "affine", "relu", "max_pool"] and kinds[-2:] == ["avg_pool", "fc"]
    assert parsed.input.fields["nr"] == parsed.input.fields["nc"] == 150
    assert parsed.input.fields["avg_red"] == pytest.approx(122.782, abs=1e-4)
    assert parsed.loss.fields["margin"] == pytest.approx(0.04) and parsed.loss.fields["dist_thresh"] == pytest.approx(0.6)
    assert parsed.layers[-1].tensors["weight"].shape == (128, 256)


def test_truncated_or_foreign_files_fail_clearly(tmp_path):
    data = default_dat_path().read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="cut.dat"):
        read_dnn(cut)
    foreign = tmp_path / "foreign.dat"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(BadInputError, match="foreign.dat"):
        read_dnn(foreign)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_dlib_face_resnet(tmp_path / "missing.dat")


# --- the port against dlib ------------------------------------------------------------------------
@pytest.mark.parametrize("image_name", ["grace_hopper", "astronaut"])
def test_port_matches_dlib_compute_face_descriptor(image_name, request, net, dlib_models):
    img = request.getfixturevalue(image_name)
    detector, predictor, facerec = dlib_models
    shape = predictor(img, detector(img, 1)[0])
    reference = np.array(facerec.compute_face_descriptor(img, shape))  # num_jitters=0, padding=0.25
    chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)       # the chip dlib computes it on

    exact = net.embed_chips(chip)[0].numpy()                           # dlib's own input normalisation
    with torch.no_grad():
        x = torch.from_numpy(chip).permute(2, 0, 1)[None].float() / 127.5 - 1  # tkh's [-1, 1] tensor
        via_tkh = net(x)[0].numpy()
    diff_exact, diff_tkh = np.abs(exact - reference).max(), np.abs(via_tkh - reference).max()
    print(f"{image_name}: max |torch - dlib| = {diff_exact:.2e} (dlib input), {diff_tkh:.2e} ([-1,1] input)")
    assert exact.shape == (128,)
    assert diff_exact < 1e-5 and diff_tkh < 1e-5  # float rounding: measured 2.8e-7 and 3.0e-7
    assert np.linalg.norm(reference) > 0.5  # a real descriptor, not zeros


def test_features_shapes_and_gradients(net, grace_hopper):
    x = torch.from_numpy(grace_hopper[:300, 100:400].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    x.requires_grad_(True)
    maps = net.features(x)  # resized to 150 inside
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]
    sum(m.abs().mean() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.training


def test_safetensors_cache_is_written_once_and_reused(tmp_path, monkeypatch, net):
    monkeypatch.setenv("TKH_CACHE", str(tmp_path))
    first = load_dlib_face_resnet()
    files = list(tmp_path.glob("dlib_face_resnet_v1-*.safetensors"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr("tkh.nets.dlib_resnet.read_dnn", lambda *a: calls.append(a) or dlib_format.read_dnn(*a))
    second = load_dlib_face_resnet()
    assert calls == []  # came from the cache, no parse
    same = lambda a, b: all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert same(first, second) and same(first, net) and second.block_spec == net.block_spec
    files[0].write_bytes(b"broken")  # a damaged cache is rebuilt, not trusted
    third = load_dlib_face_resnet()
    assert len(calls) == 1 and same(third, net)


def test_features_under_cpu_bf16_autocast(net, grace_hopper):
    """The antialiased resize has no bf16 kernel; under autocast it runs in float32 and the maps stay
    within bf16 rounding of float32 (measured 0.2-0.8 % mean relative difference)."""
    x = torch.from_numpy(grace_hopper[:300, 100:400].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    ref = net.features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = net.features(x.bfloat16())
    for r, g in zip(ref, got):
        assert torch.isfinite(g).all()
        assert (g.float() - r).abs().mean() / r.abs().mean() < 0.05
