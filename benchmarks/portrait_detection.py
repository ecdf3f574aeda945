"""Faces in paintings: which stage of the offline (dlib) cascade finds each face, and how long it takes.

For every image of ../shared/portraits (30 paintings and old photographs; `--dir` for another folder):
`tkh.landmarks.find_faces(image, backend="dlib")` as `tkh landmarks` runs it (time caps on), timed
from the decoded image to the fitted 68 points: wall seconds and this process's CPU seconds (dlib runs
on one core, so on a busy machine CPU seconds estimate an idle machine's wall time). Faces no detector
finds are then given by hand (`HAND_BOXES`, as README's table lists them). With `--groups`, the
group paintings are searched again with ``all_faces=True`` (every stage, faces merged).

    python benchmarks/portrait_detection.py [--groups] [--dir FOLDER] [--dry-run]
"""

from __future__ import annotations

import csv
import time
import warnings
from pathlib import Path
from typing import Any

import _common as C

PORTRAITS = C.ROOT.parent / "shared" / "portraits"
HAND_BOXES = {"vangogh_self_portrait_with_straw_hat.jpg": (230, 360, 310, 280),
              "leonardo_adoration_of_the_magi.jpg": (476, 438, 50, 52)}  # the Virgin


def visible_faces(folder: Path) -> dict[str, str]:
    """file -> faces visible by eye, from the folder's dlib_detection_*.tsv (empty when there is none)."""
    tables = sorted(folder.glob("dlib_detection_*.tsv"))
    if not tables:
        return {}
    with open(tables[-1], newline="") as f:
        return {r["file"]: r["faces_visible"] for r in csv.DictReader(f, delimiter="\t")}


def search(image, name: str, **kwargs: Any) -> dict[str, Any]:
    from tkh.landmarks import find_faces, implausible_reason

    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = find_faces(image, backend="dlib", name=name, **kwargs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    face = det.faces[0] if det.faces else None
    return {"stage": det.stage or "none", "faces": len(det.faces), "seconds": round(wall, 2), "cpu_s": round(cpu, 2),
            "box": ",".join(map(str, face.box)) if face else "", "tried": ",".join(det.tried),
            "skipped": ",".join(det.skipped), "plausible": face is not None and implausible_reason(face.landmarks,
                                                                                                   face.box) is None}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=PORTRAITS, help="folder of images (default ../shared/portraits)")
    p.add_argument("--groups", action="store_true", help="also all_faces=True on images with several faces")
    args = p.parse_args(argv)
    device = C.setup(args)
    from tkh.landmarks import get_backend
    from tkh.media import load_image

    files = sorted(x for x in args.dir.glob("*") if x.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if args.dry_run or not files:
        files = files[:1] or [None]  # None: Grace Hopper (no ../shared on this machine)
    visible = visible_faces(args.dir)
    get_backend("dlib")  # loading the models is not the search
    rows, groups = [], []
    for path in files:
        name = path.name if path else "grace_hopper.jpg"
        image = load_image(path) if path else C.grace_hopper()
        row = {"image": name, "size": f"{image.shape[1]}x{image.shape[0]}", "visible": visible.get(name, "")}
        row.update(search(image, name))
        if name in HAND_BOXES:
            hand = search(image, name, box=HAND_BOXES[name])
            row["note"] = f"--box {hand['box']}: {'plausible' if hand['plausible'] else 'NOT plausible'}"
        rows.append(row)
        if args.groups and visible.get(name, "1") not in ("1", ""):
            groups.append({"image": name, "visible": visible[name], **search(image, name, all_faces=True)})
    C.print_table("Offline face search (dlib cascade) per image: the stage that found the face", rows,
                  ["image", "size", "visible", "stage", "faces", "seconds", "cpu_s", "plausible", "skipped", "note"])
    if groups:
        C.print_table("Group paintings, all_faces=True (every stage, faces merged)", groups,
                      ["image", "visible", "faces", "seconds", "cpu_s", "tried"])
    C.write_json("portrait_detection", args, device, rows, groups=groups)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
