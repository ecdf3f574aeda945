"""One command for a lent GPU machine: check it, install carried wheels, meta-train, evaluate, benchmark.

    python tools/gpu_session.py --out $OUT                    # on the GPU machine (README: the device call)
    python tools/gpu_session.py --out /tmp/s --dry-run        # anywhere: tiny config on the CPU, seconds a stage

Made for a machine lent for minutes (one command of at most 10 minutes, no network, results only as
<= 8 files of <= 16 MiB): everything it needs was built beforehand by tools/gpu_prepare.py into the
git-ignored `.carry/` (tools/_carry.py describes it), and what it cannot do without dlib's landmark model
is left to tools/gpu_finish.py on a CPU machine afterwards. The same script trains your own weights on a
Colab GPU or a workstation (where a missing carried folder only means that the local one is used).

Stages, in order; each runs in its own process with its own time cap (SIGTERM at the cap: training then
checkpoints and stops; SIGKILL 20 s later), writes its results the moment they exist, and a stage that
fails, is cut off or skipped never stops the ones after it:

    check           GPU, memory, torch / CUDA, Python packages present and missing, carried folders
    install         pip install --no-index the carried wheels into WORK/site (a missing folder: reported)
    unpack          the carried cache pack -> a tkh cache, the fp16 networks -> tkh's cache (TKH_CACHE)
    train           `tkh.train.train` from the config (warm start, bf16 + channels_last on CUDA): one
                    minute, then resumed with a checkpoint every minute (the steps a minute measured)
    evaluate        pretrained/make.py's held-out protocol on the carried clips (FF/FT x 1/8 shots) for the
                    new weights, then the shipped ones the same way: shards + manifest.json, heldout.png,
                    the generated frames (heldout-frames.npz) for the metrics deferred to gpu_finish.py
    bench_puppet, bench_train, bench_ft, bench_maxbatch
                    benchmarks/puppet_frame.py, train_throughput.py, finetune_time.py on paper-256 (and the
                    largest batch that fits), merged into benchmarks-<device>.json

A deadline (`--minutes`, default 9) bounds the whole run: each stage's cap is what is left after the time
the later stages need, so the command always ends in time, and summary.json (rewritten after every stage)
says what ran, what was cut off or skipped and why, which metrics are deferred, and lists the files.

Returned files (<= 8): summary.json, session.log, manifest.json, NAME-0000i-of-0000n.safetensors (2 for
`small`), heldout.png, heldout-frames.npz, benchmarks-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _carry as C  # noqa: E402

ROOT = C.ROOT
GRACE_S = 20          # after SIGTERM at a stage's cap, before SIGKILL
END_RESERVE_S = 8     # kept for the last summary
TRAIN_OVERHEAD_S = 45  # process start, imports, data, networks, the resume after the first minute, last checkpoint
REQUIRED = ("torch", "numpy", "safetensors", "yaml", "cv2", "imageio", "PIL", "skimage", "matplotlib", "tqdm")
OPTIONAL = {"dlib": "CSIM / identity metrics (with the dlib face network)",
            "face_recognition_models": "dlib's landmark model: landmark error on generated frames",
            "imageio_ffmpeg": "mp4 reading and writing", "face_alignment": "the GPU landmark backend",
            "tensorboard": "TensorBoard logs"}
GPU_TRAIN_SET = ("train.batch_size=16", "train.k_shots=8", "train.d_steps_per_g=2", "train.num_workers=6",
                 "train.sample_every=0", "train.tensorboard=false", "train.progress=false", "train.log_every=10")
DRY_TRAIN_SET = ("train.batch_size=2", "train.k_shots=2", "train.d_steps_per_g=1", "train.num_workers=0",
                 "train.sample_every=0", "train.tensorboard=false", "train.progress=false", "train.log_every=1",
                 "train.init=", "train.w_rows=identity")


@dataclass
class Stage:
    name: str
    cap_s: float     # its own cap
    need_s: float    # below this much time it is skipped
    plan_s: float    # what the stages before it leave it (the train stage gets what is left after these)


STAGES = [Stage("check", 60, 5, 15), Stage("install", 90, 5, 10), Stage("unpack", 90, 5, 20),
          Stage("train", 0, 60, 0), Stage("evaluate", 240, 60, 120), Stage("bench_puppet", 150, 40, 70),
          Stage("bench_train", 240, 60, 120), Stage("bench_ft", 120, 30, 45), Stage("bench_maxbatch", 120, 45, 0)]
DRY_STAGES = [Stage(s.name, 600, 1, 0) for s in STAGES]


# =============================================================================================
# the parent: plans the time, runs each stage in its own process, keeps summary.json current
# =============================================================================================
class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.deadline = self.t0 + 60 * args.minutes
        self.out = Path(args.out).resolve()
        self.work = Path(args.work or f"/tmp/tkh-gpu-session-{os.getpid()}").resolve()
        self.carry = Path(args.carry).resolve()
        self.stages = DRY_STAGES if args.dry_run else STAGES
        self.caps = dict(_pairs(args.cap, float))
        self.slow = dict(_pairs(args.slow, float))
        wanted = set(args.only.split(",")) if args.only else {s.name for s in self.stages}
        unknown = (wanted | set(args.skip.split(",") if args.skip else ())) - {s.name for s in self.stages}
        if unknown:
            raise SystemExit(f"gpu_session: unknown stage(s) {sorted(unknown)}; stages: "
                             f"{', '.join(s.name for s in self.stages)}")
        self.enabled = [s for s in self.stages if s.name in wanted and s.name not in set((args.skip or "").split(","))]
        self.results: dict[str, dict[str, Any]] = {}
        self.records: list[dict[str, Any]] = []
        self.child: subprocess.Popen | None = None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TKH_OFFLINE": "1", "MPLBACKEND": "Agg",
                    "TQDM_MININTERVAL": "15", "PYTHONPATH": os.pathsep.join([str(ROOT)] + [
                        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
                    "TORCHINDUCTOR_CACHE_DIR": str(self.work / "inductor")}

    # --- bookkeeping -----------------------------------------------------------------------
    def say(self, line: str) -> None:
        stamp = f"[{time.time() - self.t0:6.1f} s] "
        print(stamp + line, flush=True)
        with open(self.out / "session.log", "a") as f:
            f.write(stamp + line + "\n")

    def write_summary(self, final: bool = False) -> None:
        files, problems = C.check_out(self.out)
        summary = {"format": "tkh-gpu-session", "version": 1, "final": final, "dry_run": self.args.dry_run,
                   "command": " ".join(sys.argv), "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.t0)),
                   "seconds": round(time.time() - self.t0, 1), "deadline_s": round(self.deadline - self.t0, 1),
                   "machine": self.results.get("check", {}).get("machine"), "stages": self.records,
                   "deferred": self._deferred(), "files": files, "limits_problems": problems,
                   "results": self.results}
        C.write_json(self.out / "summary.json", summary)

    def _deferred(self) -> list[str]:
        ev = self.results.get("evaluate", {})
        return [f"{m}: {why}" for m, why in ev.get("deferred", {}).items()]

    # --- time --------------------------------------------------------------------------------
    def cap_for(self, stage: Stage) -> tuple[float, str]:
        """(seconds this stage may run, why it is skipped when that is too little)."""
        later = self.enabled[self.enabled.index(stage) + 1:]
        left = self.deadline - time.time() - END_RESERVE_S
        if stage.name == "train":
            reserve = sum(s.plan_s for s in later)
            cap = min(60 * self.args.train_minutes + TRAIN_OVERHEAD_S, left - reserve)
        else:
            cap = min(self.caps.get(stage.name, stage.cap_s), left - sum(s.need_s for s in later))
        cap = min(cap, self.caps.get(stage.name, cap))
        need = min(stage.need_s, self.caps.get(stage.name, stage.need_s))  # a cap given by hand is what it needs
        if cap < need:
            return cap, f"no time left ({max(left, 0):.0f} s to the deadline; this stage needs {need:.0f} s)"
        return cap, ""

    # --- running -----------------------------------------------------------------------------
    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        if any(p.name != "session.log" for p in self.out.iterdir()):
            raise SystemExit(f"gpu_session: {self.out} is not empty; pass an empty --out folder")
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "results").mkdir(parents=True)
        signal.signal(signal.SIGTERM, self._on_term)
        self.say(f"tkh gpu_session{' --dry-run' if self.args.dry_run else ''}: deadline {self.args.minutes:g} min, "
                 f"stages {', '.join(s.name for s in self.enabled)}; carry {self.carry}; work {self.work}")
        self.write_summary()
        for stage in self.enabled:
            self.run_stage(stage)
            self.write_summary()
        self._trim_log()
        self.write_summary(final=True)
        files, problems = C.check_out(self.out)
        self.say("stage            status    seconds  note")
        for r in self.records:
            self.say(f"{r['stage']:16s} {r['status']:9s} {r['seconds']:7.1f}  {r.get('note', '')}")
        for d in self._deferred():
            self.say(f"deferred to tools/gpu_finish.py: {d}")
        self.say(f"{len(files)} files, {sum(f['bytes'] for f in files) / C.MiB:.1f} MiB in {self.out}"
                 + (f"; PROBLEMS: {'; '.join(problems)}" if problems else "; within the limits of what comes back"))
        shutil.rmtree(self.work, ignore_errors=True) if not self.args.keep_work else None
        return 0 if not problems else 1

    def _blocked(self, stage: Stage) -> str:
        """Why a stage cannot run given what happened before it ('' when it can)."""
        r = {rec["stage"]: rec for rec in self.records}
        check = self.results.get("check", {})
        if stage.name not in ("check", "install") and check.get("missing_required"):
            return f"required packages missing: {', '.join(check['missing_required'])}"
        gpu_needed = stage.name == "train" or stage.name.startswith("bench")
        if gpu_needed and not self.args.dry_run and self.args.device == "cuda" and check and not check.get("cuda"):
            return "no CUDA device (see check)"
        if stage.name == "train" and "cache" not in self.results.get("unpack", {}):
            return "no training cache (unpack: " + (r.get("unpack", {}).get("note") or "not run") + ")"
        if stage.name == "evaluate" and not self.results.get("train", {}).get("checkpoint"):
            return "no new weights (train: " + (r.get("train", {}).get("note") or "not run") + ")"
        return ""

    def run_stage(self, stage: Stage) -> None:
        t = time.time()
        blocked = self._blocked(stage)
        cap, why = self.cap_for(stage)
        if blocked or why:
            self.records.append({"stage": stage.name, "status": "skipped", "seconds": 0.0, "note": blocked or why})
            self.say(f"{stage.name}: skipped ({blocked or why})")
            return
        plan = {"stage": stage.name, "args": vars(self.args), "root": str(ROOT), "carry": str(self.carry),
                "work": str(self.work), "out": str(self.out), "cap_s": cap, "stage_deadline": t + cap,
                "slow_s": self.slow.get(stage.name, 0.0), "results": self.results}
        plan_path = self.work / f"plan-{stage.name}.json"
        C.write_json(plan_path, plan)
        self.say(f"{stage.name}: start (cap {cap:.0f} s)")
        log = open(self.out / "session.log", "a")
        start_at = log.tell()
        self.child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--stage-plan", str(plan_path)],
                                      stdout=log, stderr=subprocess.STDOUT, env=self._stage_env(), cwd=ROOT,
                                      start_new_session=True)
        status = "ok"
        try:
            rc = self.child.wait(timeout=max(cap, 1))
        except subprocess.TimeoutExpired:
            status = "cut off"
            self.child.send_signal(signal.SIGTERM)  # the main process only: DataLoader workers must outlive it
            try:
                rc = self.child.wait(timeout=min(GRACE_S, max(1.0, self.deadline - time.time() - END_RESERVE_S)))
            except subprocess.TimeoutExpired:
                rc = None
        finally:
            _kill_group(self.child)
            self.child = None
            log.close()
        result = C.read_json(self.work / "results" / f"{stage.name}.json", {}) or {}
        if status == "ok" and rc != 0:
            status = "failed"
        note = result.get("note", "")
        if status == "cut off":
            note = f"cut off at its cap of {cap:.0f} s" + (f"; kept: {note}" if note else "")
        elif status == "failed":
            note = f"exit {rc}: {_last_error(self.out / 'session.log', start_at)}"
        if result.get("status") == "skipped" and status == "ok":
            status = "skipped"
        self.results[stage.name] = result
        self.records.append({"stage": stage.name, "status": status, "seconds": round(time.time() - t, 1),
                             "cap_s": round(cap, 1), "note": note})
        self.say(f"{stage.name}: {status} in {time.time() - t:.1f} s{f' ({note})' if note else ''}")
        if stage.name.startswith("bench"):
            self._merge_benchmarks()

    def _stage_env(self) -> dict[str, str]:
        env = dict(self.env)
        site = self.results.get("install", {}).get("site")
        if site:
            env["PYTHONPATH"] += os.pathsep + site
        tkh_cache = self.results.get("unpack", {}).get("tkh_cache")
        if tkh_cache:
            env["TKH_CACHE"] = tkh_cache
        return env

    def _merge_benchmarks(self) -> None:
        device = "cpu" if self.args.dry_run else self.args.device
        merged = {"format": "tkh-benchmarks", "device": device,
                  "note": "one JSON per benchmark script, as benchmarks/results/<name>-<device>.json holds it; "
                          "tools/gpu_finish.py writes them there"}
        for p in sorted((self.work / "bench").glob("*.json")) if (self.work / "bench").is_dir() else []:
            data = C.read_json(p)
            if data is not None:
                merged[p.stem] = data
        C.write_json(self.out / f"benchmarks-{device.split(':')[0]}.json", merged)

    def _trim_log(self) -> None:
        log = self.out / "session.log"
        if log.is_file() and log.stat().st_size > C.OUT_MAX_FILE - C.MiB:
            data = log.read_bytes()
            keep = C.OUT_MAX_FILE - 2 * C.MiB
            log.write_bytes(data[:C.MiB] + b"\n[... log trimmed to fit 16 MiB ...]\n" + data[-keep:])

    def _on_term(self, signum, frame) -> None:
        if self.child is not None:
            self.child.send_signal(signal.SIGTERM)
        self.records.append({"stage": "session", "status": "interrupted", "seconds": round(time.time() - self.t0, 1),
                             "note": f"signal {signum}"})
        self.write_summary(final=True)
        raise SystemExit(2)


def _pairs(items: list[str] | None, kind) -> list[tuple[str, Any]]:
    out = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"gpu_session: expected STAGE=SECONDS, got {item!r}")
        out.append((name, kind(value)))
    return out


def _kill_group(child: subprocess.Popen) -> None:
    """SIGKILL what is left of a stage's process group (its DataLoader or compile workers)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _last_error(log: Path, start: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1][-300:]


# =============================================================================================
# the stages (each in its own process: `--stage-plan PLAN.json`)
# =============================================================================================
def stage_main(plan_path: Path) -> int:
    plan = json.loads(plan_path.read_text())
    name = plan["stage"]
    result_path = Path(plan["work"]) / "results" / f"{name}.json"
    if plan.get("slow_s"):  # tests: a stage that overruns its cap
        print(f"{name}: sleeping {plan['slow_s']} s (--slow)", flush=True)
        time.sleep(plan["slow_s"])

    def save(result: dict[str, Any]) -> None:  # partial results survive a cut-off
        C.write_json(result_path, result)

    try:
        result = STAGE_FUNCS[name](plan, save)
    except Exception as exc:  # noqa: BLE001 - reported in the summary; the next stages still run
        traceback.print_exc()
        prev = C.read_json(result_path, {}) or {}
        save({**prev, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        return 1
    save(result)
    return 0


def _device(plan: dict[str, Any]) -> str:
    return "cpu" if plan["args"]["dry_run"] else plan["args"]["device"]


# --- check -------------------------------------------------------------------------------------
def stage_check(plan: dict[str, Any], save) -> dict[str, Any]:
    import importlib.util
    import platform

    import torch

    machine: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                               "cuda_build": torch.version.cuda, "cpu_cores": os.cpu_count(),
                               "platform": platform.platform()}
    cuda = torch.cuda.is_available()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        machine.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                       capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                       cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        machine["nvidia_smi"] = q.stdout.strip()
    try:
        machine["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
        machine["disk_free_gib"] = round(shutil.disk_usage(plan["work"]).free / 2 ** 30, 1)
    except (OSError, ValueError):
        pass
    present = {m: importlib.util.find_spec(m) is not None for m in (*REQUIRED, *OPTIONAL)}
    carry = Path(plan["carry"])
    carried = {name: (C.folder_bytes(carry / name) if (carry / name).is_dir() else None)
               for name in ("cache", "nets", "heldout", "portrait", "wheels")}
    prepared = C.read_json(carry / "carry.json")
    missing_optional = {m: why for m, why in OPTIONAL.items() if not present[m]}
    for m, why in missing_optional.items():
        print(f"check: {m} is missing ({why})")
    return {"machine": machine, "cuda": cuda, "packages": present,
            "missing_required": [m for m in REQUIRED if not present[m]], "missing_optional": missing_optional,
            "carried_bytes": carried, "prepared": prepared and {k: prepared.get(k) for k in ("made_utc", "sizes", "plan")},
            "note": (f"{machine.get('gpu', 'no GPU')}, torch {torch.__version__}, missing: "
                     f"{', '.join(missing_optional) or 'nothing'}")}


# --- install -----------------------------------------------------------------------------------
def stage_install(plan: dict[str, Any], save) -> dict[str, Any]:
    wheels_dir = Path(plan["carry"]) / "wheels"
    wheels = sorted(wheels_dir.glob("*.whl")) if wheels_dir.is_dir() else []
    missing = plan["results"].get("check", {}).get("missing_optional", {})
    foreign = [w for w in wheels if not _wheel_fits(w)]
    wheels = [w for w in wheels if w not in foreign]
    if not wheels:
        why = (f"no carried wheel folder {wheels_dir}" if not wheels_dir.is_dir() else
               f"no wheel in {wheels_dir} is for this Python ({', '.join(w.name for w in foreign)})" if foreign else
               f"no wheels in {wheels_dir}")
        return {"status": "skipped", "note": f"{why}; still missing: {', '.join(missing) or 'nothing'}"}
    site = Path(plan["work"]) / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site), *map(str, wheels)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10, plan["cap_s"] - 10))
    print(r.stdout[-2000:], r.stderr[-4000:], flush=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip install of {len(wheels)} carried wheels failed: {r.stderr.strip().splitlines()[-1:]}")
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "") + os.pathsep + str(site)}
    now = {m: subprocess.run([sys.executable, "-c", f"import {m}"], env=env, capture_output=True).returncode == 0
           for m in missing}
    return {"site": str(site), "wheels": [w.name for w in wheels], "now_importable": now,
            "note": f"{len(wheels)} wheels; now importable: {', '.join(m for m, ok in now.items() if ok) or 'none'}"
                    f"; still missing: {', '.join(m for m, ok in now.items() if not ok) or 'nothing'}"}


def _wheel_fits(wheel: Path) -> bool:
    """Whether pip would install this wheel here (its tags against this interpreter's)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:
        return True  # let pip decide
    return bool(set(parse_wheel_filename(wheel.name)[3]) & set(sys_tags()))


# --- unpack ------------------------------------------------------------------------------------
def stage_unpack(plan: dict[str, Any], save) -> dict[str, Any]:
    import importlib.util

    from tkh.data.pack import unpack_cache

    carry, work = Path(plan["carry"]), Path(plan["work"])
    out: dict[str, Any] = {}
    notes = []
    if plan["args"].get("data"):
        out["cache"] = str(Path(plan["args"]["data"]).resolve())
        notes.append("cache: --data")
    elif (carry / "cache" / "pack.json").is_file():
        t = time.perf_counter()
        out["cache"] = str(unpack_cache(carry / "cache", work / "cache"))
        pack = json.loads((carry / "cache" / "pack.json").read_text())
        out["cache_removed"] = pack.get("removed", [])
        out["cache_exclude"] = pack.get("exclude", [])
        n = len(pack["index"]["videos"])
        notes.append(f"cache: {n} videos x {pack['frames_per_video']} frames unpacked in {time.perf_counter() - t:.1f} s")
    else:
        notes.append(f"no training cache: neither --data nor {carry / 'cache'}")
    nets = sorted((carry / "nets").glob("*.fp16z")) if (carry / "nets").is_dir() else []
    if nets:
        tkh_cache = work / "tkh-cache"
        for p in nets:
            C.unpack_weights(p, tkh_cache)
        out["tkh_cache"] = str(tkh_cache)
        out["carried_nets"] = [p.name.split(".")[0] for p in nets]
        os.environ["TKH_CACHE"] = str(tkh_cache)
        notes.append(f"networks: {', '.join(p.name.split('.')[0] for p in nets)} (fp16)")
    else:
        notes.append("no carried networks: tkh's own cache is used")
    from tkh.nets import available_perceptual

    out["perceptual"] = available_perceptual()
    have = {m: importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models")}
    extra = plan["results"].get("install", {}).get("now_importable", {})
    have = {m: have[m] or bool(extra.get(m)) for m in have}
    deferred = {}
    if not (have["dlib"] and "dlib" in out["perceptual"]):
        deferred["identity"] = "CSIM, identity distance, same-person fraction: dlib " + (
            "and its face network are" if not have["dlib"] else "'s face network is") + " not on this machine"
    if not (have["dlib"] and have["face_recognition_models"]):
        deferred["landmarks"] = "landmark error: dlib's 68-point model (100 MB) cannot travel"
    if "vgg16" not in out["perceptual"]:
        deferred["lpips"] = "LPIPS: VGG16 was not carried"
    for group in filter(None, plan["args"].get("defer", "").split(",")):
        deferred.setdefault(group, "--defer")
    out["deferred"] = deferred
    out["heldout"] = str(carry / "heldout") if (carry / "heldout" / C.HELDOUT_INDEX).is_file() else None
    portrait = carry / C.PORTRAIT_LANDMARKS
    out["portrait_landmarks"] = str(portrait) if portrait.is_file() else None
    out["note"] = "; ".join(notes + [f"L_CNT networks: {', '.join(out['perceptual']) or 'none'}"])
    return out


# --- train -------------------------------------------------------------------------------------
def train_config(plan: dict[str, Any]):
    """The config of the run: --config, then the GPU (or dry-run) settings, the held-out split, --set."""
    import yaml

    from tkh.config import load_config

    args, unpack = plan["args"], plan["results"].get("unpack", {})
    cfg = load_config(args["config"])
    sets = list(DRY_TRAIN_SET if args["dry_run"] else GPU_TRAIN_SET)
    sets.append(f"train.device={_device(plan)}")
    if args.get("from_scratch"):
        sets.append("train.init=")
    if args.get("compile"):
        sets.append("train.compile=true")
    carried = unpack.get("carried_nets") or []
    if carried:  # carried networks: name them, so that one that does not load is an error, not a fallback
        have = tuple(n for n, stem in (("vgg16", "vgg16-lpips"), ("dlib", "dlib_face_resnet_v1-")) if
                     any(c.startswith(stem) for c in carried))
        sets.append("loss.perceptual=" + {("vgg16", "dlib"): "vgg16+face", ("vgg16",): "vgg16",
                                          ("dlib",): "face"}.get(have, "auto"))
    sets += args.get("set") or []
    data: dict[str, dict] = {}
    for item in sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = yaml.safe_load(value) if value else ""
    if unpack.get("cache_removed"):  # the pack left the held-out people out: nothing to hold out here
        data.setdefault("train", {})["holdout"] = []
    return cfg.replace(**data)


def stage_train(plan: dict[str, Any], save) -> dict[str, Any]:
    from tkh.train import Callbacks, read_log, train

    args, unpack = plan["args"], plan["results"]["unpack"]
    cfg = train_config(plan)
    run_dir = Path(plan["work"]) / "run"
    budget_min = max(0.2, (plan["cap_s"] - 25) / 60)  # leave the cap's last seconds for the final checkpoint
    first_min = min(1.0, budget_min)
    seen: list[tuple[int, float]] = []
    last_print = [0.0]
    t_start = time.time()

    def on_step(info) -> None:
        seen.append((info.step, info.elapsed))
        if info.elapsed - last_print[0] > 30 or info.step <= 2:
            last_print[0] = info.elapsed
            parts = ", ".join(f"{k} {v:.3g}" for k, v in list(info.losses.items())[:6])
            print(f"train: step {info.step} at {info.elapsed:.0f} s, {info.it_s:.2f} it/s; {parts}", flush=True)

    steps_a = 2 if args["dry_run"] else 10 ** 7
    cfg_a = cfg.replace(train={"max_minutes": first_min, "steps": steps_a, "ckpt_every": 0})
    res = train(cfg_a, unpack["cache"], run_dir, callbacks=Callbacks(on_step=on_step))
    rate = _steps_per_s(seen)
    ckpt_every = max(1, int(round(rate * 60))) if rate else 50
    record = {"checkpoint": str(res.checkpoint) if res.checkpoint else None, "run_dir": str(run_dir),
              "steps": res.step, "ckpt_every": ckpt_every, "steps_per_s": rate, "stopped": res.stopped,
              "config": cfg.to_dict(), "holdout": unpack.get("cache_exclude") or list(cfg.train.holdout),
              "first_line": _first_line(run_dir)}
    _ship(plan, cfg, record)
    save({**record, "note": f"first minute: {res.step} steps, {rate or 0:.2f} steps/s"})
    left_min = budget_min - (time.time() - t_start) / 60
    if left_min > 0.15 and res.stopped == "time" or args["dry_run"]:
        steps_b = 4 if args["dry_run"] else 10 ** 7
        cfg_b = cfg.replace(train={"max_minutes": max(left_min, 0.05), "steps": steps_b, "ckpt_every": ckpt_every})
        res = train(cfg_b, unpack["cache"], run_dir, resume=True, callbacks=Callbacks(on_step=on_step))
        record.update(checkpoint=str(res.checkpoint) if res.checkpoint else record["checkpoint"], steps=res.step,
                      stopped=res.stopped, steps_per_s=_steps_per_s(seen) or rate)
    rows = read_log(run_dir / "log.csv") if (run_dir / "log.csv").is_file() else []
    record["log"] = rows[:: max(1, len(rows) // 60)] + rows[-1:] if rows else []  # ~60 rows for the summary
    record["last_losses"] = res.losses
    record["minutes"] = round((time.time() - t_start) / 60, 2)
    batch = cfg.train.batch_size
    record["note"] = (f"{record['steps']} steps of batch {batch}, K {cfg.train.k_shots} in {record['minutes']} min "
                      f"({(record['steps_per_s'] or 0) * batch:.1f} episodes/s); stopped: {res.stopped}")
    _ship(plan, cfg, record)
    return record


def weights_name(plan: dict[str, Any], model_name: str) -> str:
    return plan["args"].get("name") or f"{model_name}-gpu"


def _ship(plan: dict[str, Any], cfg, record: dict[str, Any]) -> None:
    """The checkpoint as shipped weights in --out right away (evaluate rewrites them with the metrics): a cut-off
    later stage still returns the weights."""
    from tkh import pretrained

    if record.get("checkpoint"):
        pretrained.write_manifest(record["checkpoint"], weights_name(plan, cfg.model.name), Path(plan["out"]),
                                  metrics={"note": "not evaluated (see summary.json)"},
                                  training={k: record.get(k) for k in ("steps", "steps_per_s", "holdout", "stopped")},
                                  description=f"tkh {cfg.model.name}, meta-trained by tools/gpu_session.py (unevaluated)")


def _steps_per_s(seen: list[tuple[int, float]]) -> float | None:
    """Steps per second after the first step (compilation and warm-up excluded)."""
    if len(seen) < 3:
        return None
    (s0, e0), (s1, e1) = seen[1], seen[-1]
    return (s1 - s0) / (e1 - e0) if e1 > e0 else None


def _checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's latest checkpoint (its name: step_XXXXXXX)."""
    import re

    from tkh.train.checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
    m = re.search(r"(\d+)", found[0].stem) if found else None
    return int(m.group(1)) if m else None


def _first_line(run_dir: Path) -> str | None:
    p = run_dir / "precision.jsonl"
    try:
        return p.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


# --- evaluate ----------------------------------------------------------------------------------
def _evaluate_model(make, model, clips, inputs, plan, skip, n_eval: int) -> tuple[dict, dict, dict]:
    """(per-clip metrics, figure frames, what gpu_finish needs for the deferred metrics) of one model."""
    import numpy as np

    from tkh.evaluate import _pick
    from tkh.landmarks import crop

    ft_steps = 2 if plan["args"]["dry_run"] else plan["args"]["ft_steps"]
    per_clip, frames = make.evaluate_heldout(model, clips, ft_steps, "dlib", device=_device(plan), inputs=inputs,
                                             skip=tuple(skip))
    size = model.cfg.model.image_size
    extra = {}
    for clip in clips:  # what evaluate_self compared: the held-out frames' crop landmarks, the source crops
        track, fr = inputs[clip.stem]["track"], inputs[clip.stem]["frames"]
        valid = np.flatnonzero(track.coverage.detected)
        eval_idx = _pick(valid, 1, n_eval)[1]
        extra[clip.stem] = {"lms": np.stack([crop(fr[i], track.landmarks[i], size)[1] for i in eval_idx])}
        for shots in sorted({k for _, k in make.CELLS}):
            first = _pick(valid, shots, n_eval)[0][0]  # the adaptation image whose person identity_distance uses
            c, cl, _ = crop(fr[first], track.landmarks[first], size)
            extra[clip.stem][f"src-{shots}"], extra[clip.stem][f"srclms-{shots}"] = _png_strip([c]), cl
    return per_clip, frames, extra


def stage_evaluate(plan: dict[str, Any], save) -> dict[str, Any]:
    import torch

    from tkh import pretrained

    args, res = plan["args"], plan["results"]
    unpack, trained = res["unpack"], res["train"]
    if not unpack.get("heldout"):
        return {"status": "skipped", "note": f"no held-out pack in {plan['carry']}/heldout"}
    make = C.make_module()
    clips, inputs, index = C.load_heldout_pack(Path(unpack["heldout"]))
    skip = sorted(unpack.get("deferred", {}))
    out = Path(plan["out"])
    torch.manual_seed(0)
    t0 = time.time()
    # the run folder's latest checkpoint: newer than the recorded one when training was cut off at its cap
    model = pretrained.load(Path(trained["run_dir"]) if Path(trained["run_dir"]).is_dir() else trained["checkpoint"])
    trained = {**trained, "steps": _checkpoint_step(Path(trained["run_dir"])) or trained.get("steps")}
    model.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    per_clip, frames, extra = _evaluate_model(make, model, clips, inputs, plan, skip, index["n_eval"])
    new_seconds = time.time() - t0
    name = weights_name(plan, model.cfg.model.name)
    protocol = ("self-reenactment on held-out identities (pretrained/make.py): adapt on K frames of the clip's first "
                f"half, reconstruct 8 frames of its second half; FT = {2 if args['dry_run'] else args['ft_steps']} "
                f"steps; on {_device(plan)} from the carried frames (crop windows stored as "
                f"{index.get('image_format')}, dlib landmarks found beforehand on a CPU)")
    metrics = {"protocol": protocol, "heldout": [c.stem for c in clips], "mean": make.mean_table(per_clip),
               "per_clip": per_clip, "deferred": unpack.get("deferred", {})}
    machine = res.get("check", {}).get("machine", {})
    prepared = res.get("check", {}).get("prepared") or {}
    training = {"machine": machine.get("gpu") or machine.get("platform"), "torch": machine.get("torch"),
                "steps": trained.get("steps"), "minutes": trained.get("minutes"),
                "config": trained.get("config", {}).get("train"), "holdout": trained.get("holdout"),
                "data": prepared.get("plan"), "first_line": trained.get("first_line"),
                "command": "tools/gpu_session.py (tools/gpu_prepare.py's .carry)"}
    desc = (f"tkh {model.cfg.model.name} ({model.cfg.model.image_size} px), meta-trained {trained.get('minutes')} min "
            f"on {training['machine']} by tools/gpu_session.py ({trained.get('steps')} steps)")
    pretrained.write_manifest(model, name, out, metrics=metrics, training=training, description=desc)
    make.figure(frames, None, out / "heldout.png")
    arrays = _frame_arrays("new", clips, frames, extra)
    _write_frames(out / "heldout-frames.npz", arrays)
    result = {"name": name, "mean": metrics["mean"], "deferred": unpack.get("deferred", {}), "skip": skip,
              "seconds_new": round(new_seconds, 1)}
    save({**result, "note": f"new weights evaluated in {new_seconds:.0f} s; the shipped ones next"})
    baseline = args.get("baseline")
    left = plan["stage_deadline"] - time.time()
    if baseline and left > 1.2 * new_seconds + 10:
        t1 = time.time()
        base = pretrained.load(baseline)
        b_clip, b_frames, b_extra = _evaluate_model(make, base, clips, inputs, plan, skip, index["n_eval"])
        result["baseline"] = {"name": baseline, "sha256": getattr(base, "weights_sha256", ""),
                              "mean": make.mean_table(b_clip), "per_clip": b_clip}
        arrays.update(_frame_arrays("base", clips, b_frames, b_extra))
        _write_frames(out / "heldout-frames.npz", arrays)
        result["seconds_baseline"] = round(time.time() - t1, 1)
        note = f"new {new_seconds:.0f} s, shipped {baseline!r} {time.time() - t1:.0f} s, the same way"
    else:
        note = (f"new weights in {new_seconds:.0f} s; shipped {baseline!r} not evaluated ({left:.0f} s left)"
                if baseline else f"new weights in {new_seconds:.0f} s")
    result["note"] = note
    return result


def _frame_arrays(tag: str, clips, frames: dict, extra: dict) -> dict[str, Any]:
    """For gpu_finish.py, under TAG/CLIP/: real, ff-1 ... ft-8 (PNG strips: the 8 frames side by side), lms (their
    crop landmarks), src-K and srclms-K (the K-shot adaptation's first crop, its landmarks)."""
    import numpy as np

    out: dict[str, Any] = {}
    for clip in clips:
        f, key = frames[clip.stem], f"{tag}/{clip.stem}"
        out[f"{key}/real"] = _png_strip(f["real"])
        for name, value in extra[clip.stem].items():
            out[f"{key}/{name}"] = value.astype(np.float32) if "lms" in name else value
        for cell in (c for c in f if c != "real"):
            out[f"{key}/{cell}"] = _png_strip(f[cell])
    return out


def _png_strip(images) -> Any:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.concatenate(list(images), axis=1), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return buf.reshape(-1)


def _write_frames(path: Path, arrays: dict[str, Any]) -> None:
    """heldout-frames.npz, atomically; the shipped model's frames are dropped if they would pass 16 MiB."""
    import numpy as np

    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    if tmp.stat().st_size > C.OUT_MAX_FILE - C.MiB and any(k.startswith("base/") for k in arrays):
        np.savez(tmp, **{k: v for k, v in arrays.items() if not k.startswith("base/")})
    os.replace(tmp, path)


# --- benchmarks --------------------------------------------------------------------------------
def _bench(plan: dict[str, Any], script: str, argv: list[str], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """benchmarks/SCRIPT.py's main on this device, its JSON into WORK/bench. optional: arguments passed only where
    the script has them (the benchmark scripts change; this keeps the session running with either version)."""
    import importlib

    bench_dir = Path(plan["work"]) / "bench"
    bench_dir.mkdir(exist_ok=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    mod = importlib.import_module(script)
    lm = plan["results"].get("unpack", {}).get("portrait_landmarks")
    common = ["--device", _device(plan), "--json", str(bench_dir / f"{script}.json")]
    has = _options(mod)
    if lm and "--portrait-landmarks" in has:
        common += ["--portrait-landmarks", lm]
    argv = (["--dry-run"] if plan["args"]["dry_run"] else argv + _known(list(optional), has)) + common
    print(f"{script}: {' '.join(argv)}", flush=True)
    rc = mod.main(argv)
    data = C.read_json(bench_dir / f"{script}.json", {}) or {}
    return {"rc": rc, "rows": len(data.get("rows", [])), "note": f"{len(data.get('rows', []))} rows"}


def _options(mod) -> set[str]:
    """The --options a benchmark script's main accepts (from its --help)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        mod.main(["--help"])
    return {w.strip(",") for w in buf.getvalue().split() if w.startswith("--")}


def _known(items: list[str], has: set[str]) -> list[str]:
    """items (an option, then its values, ...) without the options the script does not have."""
    out, keep = [], False
    for it in items:
        if it.startswith("--"):
            keep = it in has
        if keep:
            out.append(it)
    return out


def stage_bench_puppet(plan, save):
    return _bench(plan, "puppet_frame", ["--configs", "paper-256", "--iters", "30"])


def stage_bench_train(plan, save):
    return _bench(plan, "train_throughput", ["--configs", "paper-256", "--batch", "8", "--iters", "10"],
                  optional=("--variants", "fp32", "bf16+channels_last", "bf16+channels_last+compile"))


def stage_bench_ft(plan, save):
    return _bench(plan, "finetune_time", ["--configs", "paper-256"])


def stage_bench_maxbatch(plan, save):
    """The largest batch of a paper-256 meta-training step (train_throughput.py's, eager bf16 + channels_last: one
    compile per probed size would not fit the cap) that fits in GPU memory: doubling, then bisection, each probe
    written at once (a cut-off keeps the bounds found so far)."""
    import gc
    import importlib

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    tt = importlib.import_module("train_throughput")
    device = torch.device(_device(plan))
    dry = plan["args"]["dry_run"]
    config, variant = ("tiny", "fp32") if dry else ("paper-256", "bf16+channels_last")
    start, limit = (2, 4) if dry else (8, 1024)
    path = Path(plan["work"]) / "bench" / "train_throughput_max_batch.json"
    path.parent.mkdir(exist_ok=True)
    record = {"benchmark": "train_throughput_max_batch", "config": config, "variant": variant, "probes": [],
              "machine": tt.C.machine(device)}
    t0 = time.perf_counter()

    def fits(b: int) -> bool:
        t = time.perf_counter()
        try:
            row = tt.measure(config, device, b, [variant], warmup=1, iters=1)[0]
            ok, peak = True, row.get("peak_mem_mib")
        except torch.cuda.OutOfMemoryError:
            ok, peak = False, None
        except RuntimeError as exc:  # cuDNN / cuBLAS report running out of memory in their own words
            if "ALLOC" not in str(exc) and "out of memory" not in str(exc):
                raise
            ok, peak = False, None
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        record["probes"].append({"batch": b, "fits": ok, "peak_mem_mib": peak, "seconds": round(time.perf_counter() - t, 1)})
        C.write_json(path, record)
        return ok

    def time_left() -> bool:
        spent = [p["seconds"] for p in record["probes"]] or [0]
        return plan["stage_deadline"] - time.time() > 1.5 * max(spent) + 5

    lo, hi, b = 0, None, start
    while b <= limit and time_left():
        if not fits(b):
            hi = b
            break
        lo, b = b, b * 2
    while hi is not None and hi - lo > 1 and time_left():
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    record.update(max_batch=lo, first_not_fitting=hi, exact=hi is not None and hi - lo == 1,
                  seconds=round(time.perf_counter() - t0, 1))
    C.write_json(path, record)
    bound = "exact" if record["exact"] else f"at least (next tried: {hi})"
    return {"max_batch": lo, "note": f"largest batch of {config} that fits: {lo} ({bound}, {variant})"}


STAGE_FUNCS = {"check": stage_check, "install": stage_install, "unpack": stage_unpack, "train": stage_train,
               "evaluate": stage_evaluate, "bench_puppet": stage_bench_puppet, "bench_train": stage_bench_train,
               "bench_ft": stage_bench_ft, "bench_maxbatch": stage_bench_maxbatch}


# =============================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="where everything returned goes (empty; $OUT on the device)")
    p.add_argument("--dry-run", action="store_true", help="tiny config on the CPU, a few steps per stage")
    p.add_argument("--carry", type=Path, default=C.CARRY, help="the folder gpu_prepare.py made (default .carry)")
    p.add_argument("--minutes", type=float, default=9.0, help="deadline of the whole run (default 9)")
    p.add_argument("--train-minutes", type=float, default=6.0,
                   help="training budget (default 6), cut to what the deadline leaves after the later stages")
    p.add_argument("--config", default=None, help="default configs/small-cpu.yaml (dry run: tiny)")
    p.add_argument("--set", nargs="*", default=[], help="SECTION.KEY=VALUE overrides after the GPU settings")
    p.add_argument("--from-scratch", action="store_true", help="no warm start (train.init='')")
    p.add_argument("--compile", action="store_true", help="torch.compile E, G, D for training (train.compile)")
    p.add_argument("--data", default=None, help="a tkh cache to train on instead of the carried pack")
    p.add_argument("--ft-steps", type=int, default=40, help="FT steps in the held-out evaluation (make.py's 40)")
    p.add_argument("--baseline", default="small", help="shipped weights evaluated the same way ('' for none)")
    p.add_argument("--name", default="", help="name of the new weights (default MODEL-gpu, e.g. small-gpu)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--defer", default="", help="metric groups left to gpu_finish.py anyway: identity,landmarks,lpips")
    p.add_argument("--only", default="", help="comma-separated stages to run (default all)")
    p.add_argument("--skip", default="", help="comma-separated stages to leave out")
    p.add_argument("--cap", nargs="*", default=[], metavar="STAGE=S", help="a stage's cap in seconds")
    p.add_argument("--slow", nargs="*", default=[], metavar="STAGE=S", help=argparse.SUPPRESS)  # tests
    p.add_argument("--work", default=None, help="scratch folder (default /tmp/tkh-gpu-session-PID)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (run folder, unpacked cache)")
    p.add_argument("--stage-plan", type=Path, help=argparse.SUPPRESS)  # internal: run one stage
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage_plan:
        return stage_main(args.stage_plan)
    if args.out is None:
        raise SystemExit("gpu_session: --out DIR is required")
    if args.config is None:
        args.config = str(ROOT / "configs" / ("tiny.yaml" if args.dry_run else "small-cpu.yaml"))
    if args.dry_run and args.minutes == 9.0:
        args.minutes = 30.0  # a busy 2-core CPU; the stages' own caps still apply
    return Session(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
