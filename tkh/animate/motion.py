"""Motion transfer: the driver's motion on the portrait's face shape (against identity leakage, sec. 4.4).

out[t] = l_portrait + A · (l_driver(t) − l_driver(ref)), A the similarity (Umeyama) taking the driver's
reference face onto the portrait on the rigid points `RIGID_IDS`; the why is in `tkh.animate`'s docstring.
"""

from __future__ import annotations

import numpy as np

from tkh.errors import BadInputError

RIGID_IDS = (36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35)  # eye corners, nose: barely move with expression


# ---------------------------------------------------------------------------------------------
# Motion transfer (the normalisation against identity leakage)
# ---------------------------------------------------------------------------------------------
def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ≈ s·R·src + t (Umeyama 1991). src, dst (n, 2) -> (s, R (2, 2), t (2,))."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    s = float((sig * np.diag(d)).sum() / (a ** 2).sum(1).mean())
    return s, r, mu_d - s * r @ mu_s


def _mouth_open(lms: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,) inner-lip gap minus eye opening, in inter-ocular units (small = neutral)."""
    iod = np.linalg.norm(lms[:, 45] - lms[:, 36], axis=-1) + 1e-6
    mouth = np.linalg.norm(lms[:, 66] - lms[:, 62], axis=-1)
    eyes = (np.linalg.norm(lms[:, 37] - lms[:, 41], axis=-1) + np.linalg.norm(lms[:, 44] - lms[:, 46], axis=-1)) / 2
    return (mouth - eyes) / iod


def reference_index(track: np.ndarray, valid: np.ndarray, reference: str | int = "first") -> int:
    """The driver frame taken as matching the portrait: an index, "first" (valid) frame, or "neutral"."""
    ok = np.flatnonzero(valid)
    if len(ok) == 0:
        raise BadInputError("the driver has no frame with a face; use another driving video")
    if isinstance(reference, (int, np.integer)):
        if not valid[int(reference)]:
            raise BadInputError(f"reference frame {reference} of the driver has no face")
        return int(reference)
    if reference == "first":
        return int(ok[0])
    if reference == "neutral":
        return int(ok[np.argmin(_mouth_open(track[ok]))])
    raise BadInputError(f"reference must be a frame index, 'first' or 'neutral', got {reference!r}")


def transfer_motion(driver: np.ndarray, portrait: np.ndarray, valid: np.ndarray | None = None,
                    reference: str | int = "first") -> np.ndarray:
    """Driver motion on the portrait's face: (T, 68, 2) driver track, (68, 2) portrait -> (T, 68, 2).

    out[t] = portrait + A · (driver[t] − driver[ref]), A the similarity (scale·rotation) taking the
    driver's reference face onto the portrait (rigid points only). See `tkh.animate`'s docstring.
    """
    drv = np.asarray(driver, np.float64)
    por = np.asarray(portrait, np.float64)
    if drv.ndim != 3 or drv.shape[1:] != (68, 2):
        raise BadInputError(f"driver track: expected shape (T, 68, 2), got {drv.shape}")
    if por.shape != (68, 2):
        raise BadInputError(f"portrait landmarks: expected shape (68, 2), got {por.shape}")
    valid = np.isfinite(drv).all(axis=(1, 2)) if valid is None else (np.asarray(valid, bool) &
                                                                     np.isfinite(drv).all(axis=(1, 2)))
    r = reference_index(drv, valid, reference)
    ids = list(RIGID_IDS)
    s, rot, _ = similarity(drv[r, ids], por[ids])
    a = s * rot
    out = np.empty_like(drv)
    last = por
    for t in range(len(drv)):
        if valid[t]:
            last = por + (drv[t] - drv[r]) @ a.T
        out[t] = last
    return out.astype(np.float32)
