"""Finding the videos to preprocess: VoxCeleb layouts, any folder of videos, frame folders, file lists.

Each video gets an id that is stable (the same files give the same ids, whatever order or shell glob
they were passed in) and unique in the cache:

- a file or frame folder found under a folder argument: its path relative to that folder, without
  the suffix, in POSIX form — VoxCeleb2's ``id00012/21Uxsk56VDQ/00001.mp4`` -> ``id00012/21Uxsk56VDQ/00001``;
- a file passed by itself: its name without the suffix (``lp_d5.mp4`` -> ``lp_d5``), so
  ``tkh preprocess clips/`` and ``tkh preprocess clips/*`` give the same ids;
- on a clash (``a.mp4`` and ``a.mov``; two roots with the same relative paths) the suffix, then the
  parent folder names are added until the ids differ.

A frame folder is a folder holding images (jpg/png) and no videos, e.g. VoxCeleb1's extracted frames
``id10001/1zcIwhmdeo4/*.jpg``; it counts as one video whose frames are the images in name order.

VoxCeleb's clip folders ``id*/video_id/*.mp4`` (several utterance clips cut from one YouTube video)
count as one video ``id*/video_id`` whose frames are sampled across all its clips (`group_clips=True`,
the default): the paper's W has one row per video, not per utterance (VoxCeleb2: ~145k videos but
~1.1M clips), and the clips of one video share the person, the camera and the background. Pass
`group_clips=False` to make every clip its own video.

The identity (the person, used to keep evaluation people out of training, and optionally for the rows
of W) is VoxCeleb's ``id*`` folder when the layout has one, else the video id itself (one identity per
video), unless an identities table names it (`read_identities`: a TSV whose ``file`` or ``id`` column
names the video and whose ``identity`` column, or a ``[Pnn]`` tag in a ``person_note`` column as in
../shared/talking-heads/SOURCES.tsv, names the person).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tkh.errors import BadInputError
from tkh.media import VIDEO_SUFFIXES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_VOX_ID = re.compile(r"id\d+")
_PERSON_TAG = re.compile(r"\[(P\d+)\]")


@dataclass(frozen=True)
class VideoSource:
    """One input video (a file, or a folder of frames)."""

    id: str  # stable unique id in the cache (see the module docstring)
    path: str  # absolute path of the video file or frame folder
    kind: str  # "video" (a file decoded with ffmpeg), "frames" (a folder of images), "clips" (a folder of videos)
    identity: str  # the person: VoxCeleb's id* folder, else the id

    def frame_files(self) -> list[Path]:
        """The images of a frame folder in name order (empty for a video file)."""
        if self.kind != "frames":
            return []
        return sorted(p for p in Path(self.path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    def clip_files(self) -> list[Path]:
        """The video clips of a VoxCeleb clip folder in name order (empty for other kinds)."""
        if self.kind != "clips":
            return []
        return sorted(p for p in Path(self.path).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
                      and not p.name.startswith("."))


def _abs(p: Path) -> Path:
    return Path(os.path.abspath(p))


def _identity(parts: Sequence[str], vid: str) -> str:
    return parts[0] if len(parts) >= 2 and _VOX_ID.fullmatch(parts[0]) else vid


def _scan_folder(root: Path, exclude: Path | None, group_clips: bool = True) -> list[tuple[Path, tuple[str, ...], str]]:
    """(path, parts of the path relative to root, kind) for every video and frame folder under root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude is None or (here / d).resolve() != exclude))
        videos = sorted(f for f in filenames if Path(f).suffix.lower() in VIDEO_SUFFIXES and not f.startswith("."))
        rel = here.relative_to(root).parts
        if videos and group_clips and len(rel) == 2 and _VOX_ID.fullmatch(rel[0]):  # VoxCeleb id*/video_id/
            found.append((here, rel, "clips"))
            continue
        for f in videos:
            found.append((here / f, (here / f).relative_to(root).parts, "video"))
        if not videos and here != root and any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in filenames):
            found.append((here, here.relative_to(root).parts, "frames"))
    return found


def discover_videos(inputs: str | os.PathLike | Iterable[str | os.PathLike],
                    exclude: str | os.PathLike | None = None, group_clips: bool = True) -> list[VideoSource]:
    """All videos named by `inputs` (folders are searched recursively), sorted by id.

    inputs: a folder, a video file, a frame folder, or a list of those. `exclude`: a folder to skip
    while searching (the cache being written, when it lies inside an input folder). group_clips: a
    VoxCeleb ``id*/video_id/`` folder of clips is one video (see the module docstring).
    Raises BadInputError for a path that does not exist or when nothing is found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    excl = Path(exclude).resolve() if exclude is not None else None
    # candidates: (absolute path, relative parts used for the id, kind, root label for clashes)
    cands: list[tuple[Path, tuple[str, ...], str, str]] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise BadInputError(f"{p}: not found; pass video files or folders of videos")
        if p.is_dir():
            has_images = any(c.suffix.lower() in IMAGE_SUFFIXES for c in p.iterdir() if c.is_file())
            has_videos = any(c.suffix.lower() in VIDEO_SUFFIXES for c in p.iterdir() if c.is_file())
            # absolute() and not resolve(): symlinked videos (datasets linked in from elsewhere) stay distinct
            if has_images and not has_videos:  # the argument itself is a frame folder
                cands.append((_abs(p), (_abs(p).name,), "frames", _abs(p).parent.name))
            for path, parts, kind in _scan_folder(p, excl, group_clips):
                cands.append((_abs(path), parts, kind, _abs(p).name))
        else:  # a file passed by itself: tried as a video even with an unknown suffix (skipped if unreadable)
            cands.append((_abs(p), (p.name,), "video", _abs(p).parent.name))
    # the same file named twice (a folder and a file in it) counts once
    seen: dict[Path, tuple[Path, tuple[str, ...], str, str]] = {}
    for c in cands:
        seen.setdefault(c[0], c)
    cands = list(seen.values())
    if not cands:
        raise BadInputError(f"no videos found in {', '.join(str(i) for i in inputs)}; "
                            f"expected {', '.join(VIDEO_SUFFIXES)} files or folders of frames")
    ids = _unique_ids(cands)
    out = []
    for (path, parts, kind, _), vid in zip(cands, ids):
        out.append(VideoSource(id=vid, path=str(path), kind=kind, identity=_identity(parts, vid)))
    return sorted(out, key=lambda s: s.id)


def _strip(parts: tuple[str, ...], kind: str) -> str:
    last = parts[-1] if kind in ("frames", "clips") else Path(parts[-1]).stem
    return "/".join((*parts[:-1], last))


def _unique_ids(cands: list[tuple[Path, tuple[str, ...], str, str]]) -> list[str]:
    """Ids without suffix; clashing ones get their suffix, then parent folders, then the root's name."""
    ids = [_strip(parts, kind) for _, parts, kind, _ in cands]
    for level in range(0, 8):
        clash = {i for i in ids if ids.count(i) > 1}
        if not clash:
            return ids
        for n, (path, parts, _kind, root) in enumerate(cands):
            if ids[n] not in clash:
                continue
            full = "/".join(parts)
            if level == 0:
                ids[n] = full
            else:
                parents = path.parts[:-len(parts)] if len(parts) < len(path.parts) else ()
                extra = parents[-level:] if parents else (root,)
                ids[n] = "/".join((*extra, full))
    clash = sorted({i for i in ids if ids.count(i) > 1})
    raise BadInputError(f"videos with the same id {clash[0]!r} from different inputs; rename one of them")


def read_identities(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, str]:
    """{video file name or id: person} from one or more identities tables (TSV with a header row).

    The video: the ``file`` column (a file name, e.g. ``vox_lia_1.mp4``) or the ``id`` column. The person:
    the ``identity`` column, else the ``[Pnn]`` tag in ``person_note``; rows without one are left out.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise BadInputError(f"{path}: cannot read the identities table ({type(exc).__name__}: {exc})") from None
        cols = set(rows[0]) if rows else set()
        key = "file" if "file" in cols else "id" if "id" in cols else None
        if key is None or not ({"identity", "person_note"} & cols):
            raise BadInputError(f"{path}: an identities table needs a header with a 'file' or 'id' column and an "
                                f"'identity' or 'person_note' column (tab-separated); found {sorted(cols)}")
        for row in rows:
            person = (row.get("identity") or "").strip()
            if not person:
                tag = _PERSON_TAG.search(row.get("person_note") or "")
                person = tag.group(1) if tag else ""
            if person and (row.get(key) or "").strip():
                out[row[key].strip()] = person
    return out


def apply_identities(sources: Sequence[VideoSource], identities: Mapping[str, str]) -> list[VideoSource]:
    """The sources with the person of `identities` (keyed by file name or video id) where it names one."""
    out = []
    for s in sources:
        person = identities.get(Path(s.path).name) or identities.get(s.id)
        out.append(dataclasses.replace(s, identity=person) if person else s)
    return out
