"""Few-shot adaptation (sec. 3.3) on a real face: FF vs FT, the small adapted file, T images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tkh import precision, pretrained
from tkh.adapt import AdaptedPortrait, adapt
from tkh.errors import CheckpointError
from tkh.landmarks import detect

from adapt_helpers import NAME, make_tiny_pretrained

FT_STEPS = 12


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    return make_tiny_pretrained(tmp_path_factory.mktemp("pretrained"))


@pytest.fixture(scope="module")
def model(shipped):
    return pretrained.load(NAME) if False else pretrained.load(shipped)


@pytest.fixture(scope="module")
def hopper_lms(grace_hopper):
    return detect(grace_hopper, backend="dlib")


@pytest.fixture(scope="module")
def ff_ft(model, grace_hopper, hopper_lms):
    before = {k: v.clone() for k, v in model.G.state_dict().items()}
    ff = adapt(model, [grace_hopper], mode="ff", landmarks=[hopper_lms])
    ft = adapt(model, [grace_hopper], mode="ft", steps=FT_STEPS, landmarks=[hopper_lms], progress=False)
    after = model.G.state_dict()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    return ff, ft, unchanged


def test_ft_lowers_reconstruction_error(ff_ft):
    ff, ft, base_unchanged = ff_ft
    e_ff, e_ft = ff.reconstruction_error(), ft.reconstruction_error()
    print(f"reconstruction error (mean |x - G(y)|, [-1,1] units): FF {e_ff:.4f}, FT {FT_STEPS} steps {e_ft:.4f}")
    assert e_ft < 0.9 * e_ff
    assert len(ft.history) == FT_STEPS and all(np.isfinite(h["total"]) for h in ft.history)
    assert not torch.equal(ft.psi, ff.psi)  # ψ' was trained, starting from P·ê
    assert torch.equal(ft.e_hat, ff.e_hat)  # E is not fine-tuned
    assert base_unchanged  # adaptation copies G and D; the meta-trained model is untouched
    assert ff.crops.shape == (1, 64, 64, 3) and ff.crop_landmarks.shape == (1, 68, 2)


def test_render_shapes(ff_ft):
    ff, _, _ = ff_ft
    one = ff.render(ff.crop_landmarks[0])
    many = ff.render(np.repeat(ff.crop_landmarks, 3, axis=0))
    assert one.shape == (64, 64, 3) and one.dtype == np.uint8
    assert many.shape == (3, 64, 64, 3)
    assert np.abs(many[0].astype(int) - one).max() <= 1


def test_saved_adapted_reloads_and_renders_the_same_frame(ff_ft, shipped, tmp_path, monkeypatch):
    _, ft, _ = ff_ft
    path = ft.save(tmp_path / "hopper.safetensors")
    size = path.stat().st_size
    g_fp16 = sum(v.numel() for k, v in ft.G.state_dict().items() if k != "P.weight") * 2
    print(f"FT adapted file: {size / 2**20:.2f} MiB (G diff fp16 {g_fp16 / 2**20:.2f} MiB)")
    assert size < g_fp16 + 200_000  # only what changed: fp16 diff of G without P, ψ', ê, one crop
    monkeypatch.setenv("TKH_PRETRAINED", str(shipped))
    loaded = AdaptedPortrait.load(path)  # one call: finds the base by name, verifies its sha256
    assert loaded.mode == "ft" and loaded.model_name == NAME
    a, b = ft.render(ft.crop_landmarks[0]), loaded.render(loaded.crop_landmarks[0])
    assert np.abs(a.astype(int) - b).max() <= 1
    assert loaded.source_images and loaded.source_images[0].shape == ft.source_images[0].shape


def test_ff_file_is_tiny(ff_ft, model, tmp_path):
    ff, _, _ = ff_ft
    path = ff.save(tmp_path / "ff.safetensors")
    assert path.stat().st_size < 200_000  # ψ, ê, landmarks, one crop, the source JPEG
    loaded = AdaptedPortrait.load(path, base=model)
    assert np.array_equal(loaded.render(ff.crop_landmarks[0]), ff.render(ff.crop_landmarks[0]))


def test_load_refuses_other_base_and_truncation(ff_ft, tmp_path):
    ff, _, _ = ff_ft
    path = ff.save(tmp_path / "ff.safetensors")
    other = pretrained.load(make_tiny_pretrained(tmp_path / "other", name="other", seed=1))
    with pytest.raises(CheckpointError, match="sha256"):
        AdaptedPortrait.load(path, base=other)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        AdaptedPortrait.load(tmp_path / "cut.safetensors", base=other)


def test_t_shots_embedding_is_the_mean(model, carphone_path):
    """T images in different poses: each gets its own landmarks and crop; ê_NEW is the mean of E (sec. 3.3)."""
    from tkh.media import iter_video

    frames = [f for i, f in enumerate(iter_video(carphone_path, max_frames=25)) if i in (0, 12, 24)]
    lms = detect(frames, backend="dlib")
    three = adapt(model, frames, mode="ff", landmarks=lms)
    singles = [adapt(model, [f], mode="ff", landmarks=[lm]) for f, lm in zip(frames, lms)]
    assert three.crops.shape[0] == 3 and len(three.transforms) == 3
    mean = torch.stack([s.e_hat for s in singles]).mean(0)
    assert torch.allclose(three.e_hat, mean, atol=1e-5)
    assert not np.allclose(three.crop_landmarks[0], three.crop_landmarks[2])  # poses differ


def test_ft_initialisation_is_the_papers(model, ff_ft, grace_hopper):
    """Sec. 3.3: ψ' starts at P·ê_NEW, w' at w0 + ê_NEW; E, P, W and w0 are not trained; no L_MCH in FT."""
    from tkh.adapt import init_finetune, landmark_images, to_tensor

    ff, ft, _ = ff_ft
    e_hat = ff.e_hat
    G, D, psi, w, g_params, d_params = init_finetune(model, e_hat)
    with torch.no_grad():
        torch.testing.assert_close(psi.detach(), model.G.P(e_hat[None])[0])
        torch.testing.assert_close(w.detach(), model.D.w0 + e_hat)
        # at the start, rendering with ψ' is exactly the feed-forward result G(y, ê)
        y = landmark_images(ff.crop_landmarks, 64)
        torch.testing.assert_close(G.eval().render(y, psi), model.G.eval()(y, e_hat[None]), rtol=1e-5, atol=1e-5)
        x = to_tensor(ff.crops)
        s_ft, _ = D.eval().score_with_w(x, y, w)
        s_ref, _ = model.D.eval().score_with_w(x, y, model.D.w0 + e_hat)
        torch.testing.assert_close(s_ft, s_ref)
    ids = {id(p) for p in g_params} | {id(p) for p in d_params}
    assert id(psi) in ids and id(w) in ids and id(D.b) in ids
    assert id(G.P.weight) not in ids and id(D.W) not in ids and id(D.w0) not in ids
    assert not ids & {id(p) for p in model.parameters()}  # copies: the meta-trained model is never stepped
    # the FT objective is L_CNT + L_ADV (hinge + feature matching): no L_MCH term (there is no W_i)
    fm_weight = model.cfg.loss.fm_weight
    for h in ft.history:
        assert "mch" not in h
        assert h["total"] == pytest.approx(h["cnt"] + h["adv"] + fm_weight * h["fm"], rel=1e-5, abs=1e-5)


@pytest.fixture(scope="module")
def carphone_32(carphone_path):
    """32 frames spread over the real clip (the speaker moves: poses differ) and their dlib landmarks."""
    from tkh.media import iter_video

    frames = [f for i, f in enumerate(iter_video(carphone_path, max_frames=120)) if i % 3 == 0 and i < 96]
    return frames, detect(frames, backend="dlib")


@pytest.mark.parametrize("shots", [1, 8, 32])
def test_t_shots_1_8_32(model, carphone_32, shots):
    """T = 1, 8, 32 images, each with its own landmarks and crop; FF averages E over them, FT draws from all T."""
    from tkh.adapt import landmark_images, to_tensor

    frames, lms = carphone_32
    assert len(frames) == 32
    ff = adapt(model, frames[:shots], mode="ff", landmarks=lms[:shots])
    assert ff.crops.shape == (shots, 64, 64, 3) and ff.crop_landmarks.shape == (shots, 68, 2)
    assert len(ff.transforms) == shots
    with torch.no_grad():
        per_image = model.E.embed_frames(to_tensor(ff.crops), landmark_images(ff.crop_landmarks, 64))
    assert per_image.shape[0] == shots
    torch.testing.assert_close(ff.e_hat, per_image.mean(0), rtol=1e-5, atol=1e-5)
    if shots > 1:
        assert np.abs(ff.crop_landmarks[0] - ff.crop_landmarks[-1]).mean() > 0.5  # other poses, other landmarks
    ft = adapt(model, frames[:shots], mode="ft", steps=2, landmarks=lms[:shots], progress=False)
    assert len(ft.history) == 2 and all(np.isfinite(h["total"]) for h in ft.history)


def test_finetune_cli_shots_writes_a_small_file_naming_its_base(model, shipped, carphone_32, tmp_path, monkeypatch,
                                                                 capsys):
    """`tkh finetune --images 32 files --shots 8`: 8 images used; the file holds only what changed and names its
    base weights by name and sha256; it reloads in one call."""
    from safetensors import safe_open

    from tkh.cli import main
    from tkh.media import write_image

    frames, _ = carphone_32
    paths = [str(write_image(tmp_path / f"f{i:02d}.png", f)) for i, f in enumerate(frames)]
    monkeypatch.setenv("TKH_PRETRAINED", str(shipped))
    monkeypatch.setenv("TKH_OFFLINE", "1")
    out = tmp_path / "me.safetensors"
    capsys.readouterr()
    rc = main(["finetune", "--model", NAME, "--images", *paths, "--shots", "8", "--steps", "2", "--device", "cpu",
               "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    # the one-line summary names the precision verdict the run used (the same policy adapt resolves)
    verdict = precision.resolve(model.cfg.adapt.amp, model.cfg.adapt.channels_last, "cpu", model.cfg.model).describe()
    line = [ln for ln in printed.out.splitlines() if ln.startswith("tkh finetune:")]
    assert len(line) == 1 and "FT on 8 image(s) in " in line[0] and f"s ({verdict}), reconstruction" in line[0]
    with safe_open(str(out), framework="pt") as f:
        header = f.metadata()
    assert header["base_name"] == NAME and header["base_sha256"] == model.weights_sha256
    base_bytes = sum(p.stat().st_size for p in shipped.glob("*.safetensors"))
    print(f"adapted file {out.stat().st_size / 2**20:.2f} MiB vs base weights {base_bytes / 2**20:.2f} MiB (fp16)")
    assert out.stat().st_size < base_bytes  # no E, no D, no P: G's fp16 difference and the person's vectors
    loaded = AdaptedPortrait.load(out)
    assert loaded.mode == "ft" and loaded.crop_landmarks.shape == (8, 68, 2)
