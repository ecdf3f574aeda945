"""After a GPU session, on a CPU machine with dlib: the deferred metrics, the comparison, the files in place.

    python tools/gpu_finish.py RETURNED [--out runs/gpu-session] [--benchmarks] [--install small]

RETURNED is the folder the session's files came back to (read-only is fine; everything is written under
--out). What it does:

1. the metrics the GPU machine could not compute (summary.json's "deferred"), from heldout-frames.npz:
   landmark error (dlib's 68 points on the generated frames, as `tkh.evaluate.detect_generated` finds them),
   CSIM / identity distance / same-person fraction (dlib's face network), LPIPS — for the new weights and for
   the shipped ones the session evaluated the same way — merged into manifest.json's metrics;
2. a table: each held-out metric (mean over the clips) of the new weights beside the shipped ones, and
   whether the new ones are better on every one (comparison.md, finish.json);
3. `--benchmarks`: benchmarks-cuda.json split into benchmarks/results/<name>-cuda.json (the CPU files'
   format); `--install NAME`: the new weights and their manifest entry into pretrained/ under NAME
   (`--default` makes it the default; installing as `small` replaces the shipped weights and keeps the
   tree's size, which the next device call needs).

For the full CPU protocol on the original clips (fp32, frames decoded from the videos), run
pretrained/make.py on the --out folder afterwards: it loads a folder with a manifest.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _carry as C  # noqa: E402

ROOT = C.ROOT


def _strip(buf: np.ndarray, n: int | None = None) -> np.ndarray:
    """A PNG strip of frames side by side -> (n, S, S, 3)."""
    import cv2

    img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    s = img.shape[0]
    return np.stack([img[:, i * s:(i + 1) * s] for i in range(n or img.shape[1] // s)])


def deferred_metrics(z, tag: str, clip: str, cell: str, groups: set[str]) -> dict[str, Any]:
    """The metric groups `groups` of one held-out cell, computed as `tkh.evaluate.evaluate_self` does."""
    from tkh.evaluate import _identity, _identity_summary, _nanmean, detect_generated
    from tkh.metrics import csim, identity_distance, landmark_error, lpips

    key = f"{tag}/{clip}"
    real, gen, lms = _strip(z[f"{key}/real"]), _strip(z[f"{key}/{cell}"]), z[f"{key}/lms"]
    out: dict[str, Any] = {}
    if "landmarks" in groups:
        err = np.atleast_1d(landmark_error(detect_generated(gen, "dlib"), lms))
        out.update(landmark_error=_nanmean(err), detected_fraction=float(np.isfinite(err).mean()))
    if "identity" in groups:
        shots = cell.split("-")[1]
        source = _identity(_strip(z[f"{key}/src-{shots}"]), z[f"{key}/srclms-{shots}"][None], "cpu")[0]
        e = _identity(gen, lms, "cpu")
        out.update(csim=_nanmean(np.atleast_1d(csim(_identity(real, lms, "cpu"), e))),
                   **_identity_summary(np.atleast_1d(identity_distance(source, e))))
    if "lpips" in groups:
        out["lpips"] = float(np.mean(lpips(real, gen)))
    return out


def fill_deferred(npz: Path, per_clip: dict, tag: str, groups: set[str]) -> int:
    """Compute the deferred groups into per_clip[clip][cell] (in place); returns the cells filled."""
    n = 0
    with np.load(npz) as z:
        names = set(z.files)
        for clip, cells in per_clip.items():
            for cell, values in cells.items():
                if f"{tag}/{clip}/{cell}" in names:
                    values.update(deferred_metrics(z, tag, clip, cell, groups))
                    n += 1
    return n


def finish(args: argparse.Namespace) -> dict[str, Any]:
    from tkh.atomic import write_json

    src, out = Path(args.returned), Path(args.out)
    summary = C.read_json(src / "summary.json")
    if summary is None:
        raise SystemExit(f"gpu_finish: {src / 'summary.json'} is missing or unreadable: not a gpu_session folder")
    out.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and p.resolve() != (out / p.name).resolve():
            shutil.copyfile(p, out / p.name)
    for r in summary.get("stages", []):
        print(f"{r['stage']:16s} {r['status']:9s} {r['seconds']:7.1f}  {r.get('note', '')}")
    make = C.make_module()
    record: dict[str, Any] = {"session": str(src), "stages": summary.get("stages")}
    ev = summary.get("results", {}).get("evaluate", {})
    groups = set(ev.get("deferred", {}))
    manifest_path, npz = out / "manifest.json", out / "heldout-frames.npz"
    manifest = C.read_json(manifest_path)
    if manifest is not None and npz.is_file():
        entry = manifest["models"][ev.get("name") or manifest["default"]]
        metrics = entry["metrics"]
        if groups:
            n = fill_deferred(npz, metrics["per_clip"], "new", groups)
            metrics["mean"] = make.mean_table(metrics["per_clip"])
            metrics["deferred_done"] = {g: "tools/gpu_finish.py on the CPU, from heldout-frames.npz" for g in groups}
            print(f"deferred metrics ({', '.join(sorted(groups))}) computed for {n} cells of the new weights")
        write_json(manifest_path, manifest, indent=2)
        record["new"] = metrics["mean"]
        base = ev.get("baseline")
        if base:
            if groups:
                fill_deferred(npz, base["per_clip"], "base", groups)
                base["mean"] = make.mean_table(base["per_clip"])
            record["baseline"] = {"name": base["name"], "mean": base["mean"], "per_clip": base["per_clip"]}
            rows, wins = make.compare(metrics["mean"], base["mean"])
            record["new_beats_shipped_on_every_metric"] = wins
            text = "\n".join([f"Held-out metrics (mean over {len(metrics['per_clip'])} clips), new weights vs "
                              f"shipped {base['name']!r}, both evaluated by the session the same way:", "", *rows, "",
                              f"new better on every metric: {'yes' if wins else 'no'}"])
            (out / "comparison.md").write_text(text + "\n")
            print(text)
    else:
        print("gpu_finish: no manifest.json / heldout-frames.npz: the evaluate stage did not finish")
    bench = C.read_json(out / "benchmarks-cuda.json") or C.read_json(out / "benchmarks-cpu.json")
    if bench:
        record["benchmarks"] = [k for k in bench if isinstance(bench[k], dict)]
        if args.benchmarks:
            if bench.get("device") != "cuda":
                print("gpu_finish: the benchmarks ran on the CPU (a dry run): not written to benchmarks/results")
            else:
                for name, payload in bench.items():
                    if isinstance(payload, dict):
                        write_json(ROOT / "benchmarks" / "results" / f"{name}-cuda.json", payload, indent=1)
                        print(f"wrote benchmarks/results/{name}-cuda.json")
    if args.install and manifest is not None:
        from tkh import pretrained

        model = pretrained.load(out)
        entry = manifest["models"][manifest["default"]]
        written = pretrained.write_manifest(model, args.install, ROOT / "pretrained", metrics=entry["metrics"],
                                            training=entry.get("training"), description=entry.get("description", ""),
                                            default=args.default)
        print(f"installed {len(written['files'])} shard(s) as {args.install!r} in pretrained/"
              f"{' (the default)' if args.default else ''}")
    write_json(out / "finish.json", record, indent=1)
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("returned", type=Path, help="the folder the session's files came back to")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-session")
    p.add_argument("--benchmarks", action="store_true", help="write benchmarks/results/<name>-cuda.json")
    p.add_argument("--install", default="", metavar="NAME", help="copy the new weights into pretrained/ as NAME")
    p.add_argument("--default", action="store_true", help="with --install: make them the default weights")
    return p


def main(argv: list[str] | None = None) -> int:
    finish(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
