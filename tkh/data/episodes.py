"""Episodes for meta-learning (paper Sec. 3.2): K frames of one video for E, one more as G's target.

``EpisodeDataset(cache, k=8)[i]`` is one episode of video i::

    frames            (K, 3, H, W)  float32 in [-1, 1]  x_i(s_1..s_K), input of the embedder E
    landmarks         (K, 3, H, W)  float32 in [-1, 1]  y_i(s_1..s_K), their rasterized landmarks
    target            (3, H, W)     float32 in [-1, 1]  x_i(t), the frame G must reconstruct
    target_landmarks  (3, H, W)     float32 in [-1, 1]  y_i(t), G's input
    video_index       int           i, the row of D's W matrix (W_i in r = V(x, y)ᵀ(W_i + w0) + b): the
                                    video's, or its person's with w_rows="identity"

The K+1 frames are distinct; a video with fewer than K+1 frames (the cache keeps at least 2 per video)
gives a target distinct from the K references, and references repeated (drawn with replacement).
Landmark images are drawn on the fly with `tkh.landmarks.rasterize` from the stored coordinates.

``video_index`` is the position of the video in `EpisodeDataset.video_ids`: the cache's usable videos
sorted by id, after `videos=` / `holdout=` filtering. It is therefore stable for a given cache and
filter, and D must be built with ``num_videos=len(dataset)``; store ``dataset.video_ids`` with the
checkpoint to map rows of W back to videos.

Randomness: the frames of an episode are a pure function of (seed, epoch, index), so they are the
same whatever the number of DataLoader workers or ranks. An epoch is one episode per video; call
``dataset.set_epoch(e)`` (as with DistributedSampler) or use `EpisodeSampler`, whose indices carry
the epoch with them and so also work with persistent workers.

Works with DataLoader workers: the dataset pickles as paths and small metadata; each worker
memory-maps the ``frames.npy`` files it touches (lazily, a bounded LRU of open maps).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from tkh.data.cache import CacheInfo, VideoEntry, load_cache_index, split_identities
from tkh.errors import BadInputError, ConfigError
from tkh.landmarks import rasterize
from tkh.landmarks.crop import MARGIN, SHIFT
from tkh.tensors import to_tensor


def _mirror_68() -> np.ndarray:
    """The iBUG-68 left/right permutation: point j of a mirrored face is point MIRROR_68[j] of the original."""
    m = np.arange(68)
    pairs = [(i, 16 - i) for i in range(8)]  # jaw 0-16 (8 is the chin)
    pairs += [(17 + j, 26 - j) for j in range(5)]  # brows 17-21 <-> 26-22
    pairs += [(31, 35), (32, 34)]  # nose base (33 the tip); the bridge 27-30 is on the axis
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes: outer, top, inner, bottom
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip (51 top, 57 bottom on the axis)
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip (62, 66 on the axis)
    for a, b in pairs:
        m[a], m[b] = b, a
    return m


MIRROR_68 = _mirror_68()


def flip_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored image: x -> width - 1 - x, and left/right points swapped.

    landmarks: (..., 68, 2) (x, y) in pixel-centre coordinates (as detected, and as `rasterize`
    draws them). Without the swap, point 36 (the subject's right eye, outer corner) would land on
    the image's right side and the part colours of y would be mirrored too.
    """
    pts = np.array(landmarks, dtype=np.float32, copy=True)
    pts[..., 0] = (width - 1) - pts[..., 0]
    return pts[..., MIRROR_68, :]


class EpisodeDataset(Dataset):
    """K+1-frame episodes from a `tkh preprocess` cache, one item per video (see the module docstring).

    cache: the cache folder (or its CacheInfo). k: frames given to E (paper: 8). image_size: output
    side H = W (default: the cache's; smaller resizes, larger is refused). seed: with the epoch and
    the index, fixes each episode. flip: mirror whole episodes with probability 1/2 (frames and
    landmarks, with the iBUG left/right permutation); off by default, as in the paper.
    videos: use only these video ids. holdout: identities / video ids (shell patterns) kept out, see
    `tkh.data.split_identities`. w_rows: what a row of D's W stands for — "video" (the paper: one row per
    training video) or "identity" (one row per person, shared by that person's videos: clips of one
    person under several names then pull ê towards one vector).
    """

    max_open = 128  # memory maps kept open per process (each is one mmap, not a file handle)

    def __init__(self, cache: str | os.PathLike | CacheInfo, k: int = 8, image_size: int | None = None, seed: int = 0,
                 flip: bool = False, videos: Sequence[str] | None = None, holdout: Iterable[str] = (),
                 w_rows: str = "video"):
        if int(k) != k or k < 1:
            raise ConfigError(f"EpisodeDataset: k must be an integer >= 1, got {k!r}")
        self.info = load_cache_index(cache)
        entries = list(self.info.videos)
        if videos is not None:
            by_id = {e.id: e for e in entries}
            missing = [v for v in videos if v not in by_id]
            if missing:
                raise BadInputError(f"{self.info.root}: no usable video {missing[0]!r} in this cache")
            entries = [by_id[v] for v in sorted(set(videos))]
        holdout = [holdout] if isinstance(holdout, str) else list(holdout)
        if holdout:
            train_ids = set(split_identities(self.info, holdout)[0])
            entries = [e for e in entries if e.id in train_ids]
        if not entries:
            raise BadInputError(f"{self.info.root}: no usable videos{' after the holdout' if holdout else ''}; "
                                "preprocess videos with faces into it")
        self.entries: tuple[VideoEntry, ...] = tuple(entries)
        if w_rows not in ("video", "identity"):
            raise ConfigError(f"EpisodeDataset: w_rows must be 'video' or 'identity', got {w_rows!r}")
        self.w_rows = w_rows
        keys = [e.id if w_rows == "video" else e.identity for e in self.entries]
        self.row_ids: list[str] = sorted(set(keys))  # row_ids[r]: the video (or person) behind W's row r
        self._row_of = [self.row_ids.index(k) for k in keys]
        self.k = int(k)
        self.image_size = int(image_size or self.info.size)
        if self.image_size > self.info.size:
            raise ConfigError(f"{self.info.root} holds {self.info.size} px crops; training at {self.image_size} px "
                              f"needs a cache made with `tkh preprocess --size {self.image_size}`")
        self._check_crop_matches_inference()
        self.seed = int(seed)
        self.flip = bool(flip)
        self.epoch = 0
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _check_crop_matches_inference(self) -> None:
        """Warn when the cache was cropped with other margins than tkh.landmarks.crop uses now (at inference)."""
        cfg = self.info.config
        if (cfg.get("margin"), cfg.get("shift")) != (MARGIN, SHIFT):
            warnings.warn(f"{self.info.root} was cropped with margin={cfg.get('margin')}, shift={cfg.get('shift')} but "
                          f"tkh.landmarks.crop now uses margin={MARGIN}, shift={SHIFT}: a model trained on it will see "
                          "other crops at inference; preprocess the videos again into a new cache", stacklevel=3)

    # --- identity of the items ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_videos(self) -> int:
        """Rows of D's W matrix for this dataset (videos, or people with w_rows="identity")."""
        return len(self.row_ids)

    @property
    def video_ids(self) -> list[str]:
        """video_ids[i] is the video behind video_index i."""
        return [e.id for e in self.entries]

    def set_epoch(self, epoch: int) -> None:
        """Choose the episodes of another epoch (call before iterating, like DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    # --- pickling for DataLoader workers: paths only, no open maps ----------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    # --- data ---------------------------------------------------------------------------------
    def load_video(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames uint8 (F, S, S, 3) memory-mapped, landmarks float32 (F, 68, 2) in crop pixels) of video `index`."""
        hit = self._open.get(index)
        if hit is not None:
            self._open.move_to_end(index)
            return hit
        folder = self.info.root / self.entries[index].dir
        try:
            frames = np.load(folder / "frames.npy", mmap_mode="r")
            with np.load(folder / "landmarks.npz") as z:
                lms = np.asarray(z["landmarks"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise BadInputError(f"{folder}: unreadable cache entry ({exc}); delete that folder and run "
                                "`tkh preprocess` again to redo it") from None
        if (frames.ndim != 4 or len(frames) != len(lms) or lms.shape[1:] != (68, 2)
                or len(frames) != self.entries[index].n_frames):
            raise BadInputError(f"{folder}: frames {frames.shape} and landmarks {lms.shape} do not match; delete "
                                "that folder and run `tkh preprocess` again")
        self._open[index] = (frames, lms)
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return frames, lms

    def episode_frame_indices(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, int, bool]:
        """(K reference frame indices, target frame index, flipped) of an episode; pure in (seed, epoch, index)."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = self.entries[index].n_frames
        rng = np.random.default_rng([self.seed, epoch, int(index)])
        if n >= self.k + 1:
            pick = rng.choice(n, self.k + 1, replace=False)
            refs, target = pick[: self.k], int(pick[self.k])
        else:  # short video: target distinct from the references, references drawn with replacement
            target = int(rng.integers(n))
            others = np.delete(np.arange(n), target)
            refs = rng.choice(others, self.k, replace=len(others) < self.k)
        flipped = bool(self.flip and rng.random() < 0.5)
        return np.sort(refs), target, flipped

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (item if isinstance(item, (tuple, list)) else (item, None))
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"episode index {index} out of range for {len(self)} videos")
        refs, target, flipped = self.episode_frame_indices(index, epoch)
        frames, lms = self.load_video(index)
        ids = np.append(refs, target)
        imgs = np.asarray(frames[ids])  # (K+1, S, S, 3): reads only these frames from the map
        pts = lms[ids].copy()  # (K+1, 68, 2)
        size = self.image_size
        if size != self.info.size:
            imgs = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in imgs])
            pts *= size / self.info.size  # same convention as tkh.landmarks.crop's scale
        if flipped:
            imgs = imgs[:, :, ::-1]
            pts = flip_landmarks(pts, size)

        ys = np.stack([rasterize(p, size) for p in pts])  # (K+1, H, W, 3) uint8
        x, y = to_tensor(imgs), to_tensor(ys)
        return {"frames": x[: self.k], "landmarks": y[: self.k], "target": x[self.k],
                "target_landmarks": y[self.k], "video_index": self._row_of[index]}


class EpisodeSampler(DistributedSampler):
    """DistributedSampler whose indices carry the epoch: yields ``(video index, epoch)`` pairs.

    `EpisodeDataset` accepts these pairs, so the episodes of an epoch are right even with
    ``persistent_workers=True`` (where a `dataset.set_epoch` in the main process never reaches the
    workers). Call ``sampler.set_epoch(e)`` every epoch as usual. Works without torch.distributed
    (one replica) and with it (each rank gets its share of the videos; an epoch = one episode per video).
    """

    def __init__(self, dataset: EpisodeDataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if num_replicas is None and not (dist.is_available() and dist.is_initialized()):
            num_replicas, rank = 1, 0 if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        for i in super().__iter__():
            yield (i, epoch)
