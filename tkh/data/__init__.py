"""Data for meta-learning: `preprocess` videos into a cache, then `EpisodeDataset` episodes from it.

- `preprocess(inputs, out, size, frames_per_video, backend, workers)`: sample, detect, crop and
  store frames + landmarks (resumable, corrupt videos skipped); also ``tkh preprocess``.
- `load_cache_index(cache)` -> `CacheInfo` (num_videos, size, video ids, skipped videos...).
- `split_identities(cache, holdout)`: keep evaluation people out of training.
- `read_identities(tsv)`: which clips show the same person (e.g. ../shared/talking-heads/SOURCES.tsv).
- `EpisodeDataset(cache, k=8)`: K+1-frame episodes (paper Sec. 3.2) for DataLoader / DDP;
  `EpisodeSampler`: a DistributedSampler that carries the epoch.

See `tkh.data.cache` for the cache format and `tkh.data.sources` for video ids.
"""

from tkh.data.cache import CacheInfo, VideoEntry, load_cache_index, split_identities
from tkh.data.episodes import MIRROR_68, EpisodeDataset, EpisodeSampler, flip_landmarks
from tkh.data.preprocess import PreprocessSummary, preprocess, process_video
from tkh.data.sampling import iter_sampled_frames, sample_indices
from tkh.data.sources import VideoSource, apply_identities, discover_videos, read_identities

__all__ = [
    "MIRROR_68", "CacheInfo", "EpisodeDataset", "EpisodeSampler", "PreprocessSummary", "VideoEntry", "VideoSource",
    "apply_identities", "discover_videos", "flip_landmarks", "load_cache_index", "preprocess", "process_video",
    "iter_sampled_frames", "read_identities", "sample_indices", "split_identities",
]
