"""tkh.metrics: identity embeddings equal dlib's, CSIM ranks identities, SSIM/PSNR/landmark error by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tkh import metrics
from tkh.errors import BadInputError, NoFaceError

dlib = pytest.importorskip("dlib")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the converted network is cached here, not in ~/.cache
        mp.setenv("TKH_CACHE", str(tmp_path_factory.mktemp("tkh-cache")))
        yield


@pytest.fixture(scope="module")
def embeddings(grace_hopper, astronaut):
    return metrics.identity_embedding([grace_hopper, astronaut])


def test_identity_embedding_equals_dlib(grace_hopper, astronaut, embeddings):
    import face_recognition_models as frm

    facerec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    detector, predictor = metrics._dlib_models()
    assert embeddings.shape == (2, 128) and embeddings.dtype == np.float32
    for img, ours in zip((grace_hopper, astronaut), embeddings):
        theirs = np.array(facerec.compute_face_descriptor(img, predictor(img, detector(img, 1)[0])))
        diff = np.abs(ours - theirs).max()
        print(f"identity_embedding vs dlib: max abs diff {diff:.2e}")
        assert diff < 1e-5  # float rounding (measured 2.8e-7, 3.3e-7)


def test_csim_same_person_beats_different_person(grace_hopper, astronaut, embeddings):
    # another crop of the same photo, mirrored: the same person seen differently
    other_gh = np.ascontiguousarray(grace_hopper[30:380, 60:430][:, ::-1])
    other_ast = np.ascontiguousarray(astronaut[:300, 60:360][:, ::-1])
    views = metrics.identity_embedding([other_gh, other_ast])
    same = [metrics.csim(embeddings[0], views[0]), metrics.csim(embeddings[1], views[1])]
    different = [metrics.csim(embeddings[0], embeddings[1]), metrics.csim(views[0], embeddings[1]),
                 metrics.csim(views[1], embeddings[0])]
    print(f"CSIM same person {same}, different persons {different}")
    assert min(same) > max(different)
    assert np.allclose(metrics.csim(embeddings, views), same)  # batched, pairwise


def test_csim_hand_cases():
    assert metrics.csim(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    v = np.array([0.3, -0.2, 0.9])
    assert metrics.csim(v, 2 * v) == pytest.approx(1.0)
    assert metrics.csim(torch.tensor(v), -v) == pytest.approx(-1.0)
    batch = metrics.csim(np.stack([v, -v]), v)  # one side broadcast
    assert batch.shape == (2,) and np.allclose(batch, [1, -1])


def test_input_forms_agree(grace_hopper, embeddings):
    x = torch.from_numpy(grace_hopper.copy()).permute(2, 0, 1).float() / 127.5 - 1  # tkh tensor
    assert np.abs(metrics.identity_embedding(x) - embeddings[0]).max() < 1e-5
    chip = metrics.face_chips(grace_hopper)[0]
    assert chip.shape == (150, 150, 3)
    assert np.abs(metrics.identity_embedding(chip, aligned=True) - embeddings[0]).max() < 1e-5
    detector, predictor = metrics._dlib_models()
    shape = predictor(grace_hopper, detector(grace_hopper, 1)[0])
    points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
    assert np.abs(metrics.identity_embedding(grace_hopper, landmarks=points) - embeddings[0]).max() < 1e-5


def test_no_face_is_named(grace_hopper):
    with pytest.raises(NoFaceError, match="image 1"):
        metrics.identity_embedding([grace_hopper, np.full((80, 80, 3), 128, np.uint8)], fallback=None)


def test_ssim_psnr_hand_cases(astronaut):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = astronaut[100:228, 150:278]
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.psnr(a, a) == float("inf")
    # +-10 grey levels everywhere: MSE = (10/255)^2 -> PSNR = 20 log10(25.5) dB exactly
    sign = np.where(np.indices(a.shape).sum(0) % 2 == 0, 1, -1)
    base = np.clip(a.astype(int), 10, 245)
    noisy = (base + 10 * sign).astype(np.uint8)
    base = base.astype(np.uint8)
    assert metrics.psnr(base, noisy) == pytest.approx(20 * np.log10(25.5), abs=1e-9)
    assert metrics.psnr(base, noisy) == pytest.approx(peak_signal_noise_ratio(base, noisy, data_range=255))
    s = metrics.ssim(base, noisy)
    assert 0 < s < 1
    assert s == pytest.approx(structural_similarity(base / 255.0, noisy / 255.0, channel_axis=-1, data_range=1.0,
                                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
    # tkh tensors (B, 3, H, W) in [-1, 1] give the same numbers, per pair
    t = lambda img: torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1  # noqa: E731
    batch = torch.stack([t(base), t(base)]), torch.stack([t(noisy), t(base)])
    values = metrics.psnr(*batch)
    assert values.shape == (2,) and values[0] == pytest.approx(20 * np.log10(25.5), abs=1e-4) and values[1] == np.inf
    assert np.allclose(metrics.ssim(*batch), [s, 1.0], atol=1e-6)
    with pytest.raises(BadInputError, match="shapes differ"):
        metrics.ssim(base, noisy[:64])


def test_landmark_error_hand_cases():
    ref = np.zeros((68, 2), np.float32)
    ref[:, 0] = np.linspace(0, 100, 68)
    ref[36], ref[45] = (0, 0), (100, 0)                  # inter-ocular distance 100
    pred = ref + np.array([3.0, 4.0], np.float32)        # every point 5 px off
    assert metrics.landmark_error(pred, ref) == pytest.approx(0.05)
    pred_nan = pred.copy()
    pred_nan[10] = np.nan                                 # a missing point is ignored
    assert metrics.landmark_error(pred_nan, ref) == pytest.approx(0.05)
    batch = metrics.landmark_error(np.stack([pred, ref, np.full_like(ref, np.nan)]), torch.from_numpy(ref))
    assert batch.shape == (3,) and np.allclose(batch[:2], [0.05, 0.0]) and np.isnan(batch[2])
    flat = ref.copy()
    flat[45] = flat[36]                                   # no inter-ocular distance -> NaN, not inf
    assert np.isnan(metrics.landmark_error(pred, flat))
    with pytest.raises(BadInputError):
        metrics.landmark_error(pred[:10], ref[:10])


def test_landmark_error_of_a_detected_frame(grace_hopper):
    """The evaluation's use: detect landmarks on an output frame and compare them with the driving landmarks.
    Here the 'output' is Grace Hopper moved by (6, 8) px: against the moved driving landmarks the error is the
    detector's noise; against the unmoved ones it is 10 px over the inter-ocular distance."""
    import cv2

    from tkh.landmarks import detect

    driving = detect(grace_hopper, backend="dlib")
    moved = cv2.warpAffine(grace_hopper, np.float32([[1, 0, 6], [0, 1, 8]]), grace_hopper.shape[1::-1],
                           borderMode=cv2.BORDER_REPLICATE)
    found = detect(moved, backend="dlib")
    iod = np.linalg.norm(driving[45] - driving[36])
    noise, moved_err = metrics.landmark_error(found, driving + (6, 8)), metrics.landmark_error(found, driving)
    print(f"landmark error: detector noise {noise:.3f}, moved 10 px {moved_err:.3f} (10 / IOD = {10 / iod:.3f})")
    assert noise < 0.04  # dlib's detector box snaps to its scan grid (measured 0.028)
    assert moved_err == pytest.approx(10 / iod, abs=0.04) and moved_err > 2 * noise


def test_identity_distance_says_same_person_or_not(grace_hopper, astronaut, embeddings):
    """dlib's descriptor distance: a JPEG'd, slightly shifted Grace Hopper stays under 0.6, another person does not."""
    import cv2

    jpeg = cv2.imdecode(cv2.imencode(".jpg", np.roll(grace_hopper, 6, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 40])[1],
                        cv2.IMREAD_UNCHANGED)
    same = metrics.identity_distance(grace_hopper, jpeg)
    other = metrics.identity_distance(embeddings[0], embeddings[1])
    print(f"identity distance: same {same:.3f}, other {other:.3f}")
    assert same < metrics.DLIB_SAME_PERSON < other
    both = metrics.identity_distance(embeddings[0], embeddings)  # a single side broadcasts
    assert both.shape == (2,) and both[0] == pytest.approx(0.0, abs=1e-6)


def test_palette_fraction_counts_landmark_colours_in_the_face(grace_hopper):
    """A real face has (almost) no pixel in the landmark drawing's colours; drawing y onto it raises the fraction,
    the more the thicker it is drawn; outside the face nothing counts."""
    from tkh.landmarks import crop, detect, rasterize

    face, pts, _ = crop(grace_hopper, detect(grace_hopper, backend="dlib"), 128)
    real = metrics.palette_fraction(face, pts)
    thin, thick = (np.where(rasterize(pts, 128, thickness=t) > 0, rasterize(pts, 128, thickness=t), face)
                   for t in (1, 3))
    f_thin, f_thick = metrics.palette_fraction([thin, thick], np.stack([pts, pts]))
    print(f"palette fraction: real {real:.4f}, thin lines {f_thin:.4f}, thick {f_thick:.4f}")
    assert real < 0.01 < f_thin < f_thick
    # What G really does: the drawing's colours half mixed into the skin still count (RGB distance would not).
    y = rasterize(pts, 128, thickness=3)
    blended = np.where(y.any(-1, keepdims=True), (face.astype(np.float32) + y) / 2, face).astype(np.uint8)
    f_blend = metrics.palette_fraction(blended, pts)
    print(f"half-blended thick lines {f_blend:.4f}")
    assert f_blend > 0.5 * f_thick
    outside = face.copy()
    outside[:8] = (255, 0, 255)  # a lip-coloured band at the top edge, outside the landmarks' hull
    assert metrics.palette_fraction(outside, pts) == pytest.approx(real)
    with pytest.raises(BadInputError, match="landmark arrays"):
        metrics.palette_fraction([face, face], pts)
