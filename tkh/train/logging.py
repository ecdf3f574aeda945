"""What a training run writes besides checkpoints: log.csv, TensorBoard events, sample grids, loss plots.

log.csv columns: step, epoch, time (seconds of training, summed over resumed runs), it_s (steps per
second since the previous row), nonfinite (steps skipped for a NaN/inf loss since the previous row),
then every loss part averaged over the steps since the previous row: ``G_*`` from the E/G update
(G_total, G_cnt, G_cnt_<net>, G_adv, G_fm, G_mch, G_rec_l1) and ``D_*`` from the D updates
(D_total, D_d_real, D_d_fake, D_real_score, D_fake_score). G_rec_l1 = mean |x̂ − x| in [-1, 1] units,
a reconstruction error that is comparable between configs (it is logged, not optimised).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = ["CsvLog", "StepLog", "TensorBoard", "plot_losses", "read_log"]

FIXED = ["step", "epoch", "time", "it_s", "nonfinite"]


class CsvLog:
    """Append-only CSV; on resume, rows after the checkpoint's step are dropped (those steps are redone)."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        if self.path.exists() and resume_step is not None:
            rows = read_log(self.path)
            if rows:
                self.columns = list(rows[0].keys())
                keep = [r for r in rows if float(r["step"]) <= resume_step]
                tmp = self.path.with_name(self.path.name + ".tmp")
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=self.columns)
                    w.writeheader()
                    w.writerows(keep)
                os.replace(tmp, self.path)
        elif self.path.exists():
            self.path.unlink()

    def write(self, row: Mapping[str, Any]) -> None:
        if self.columns is None:
            self.columns = FIXED + sorted(k for k in row if k not in FIXED)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: _fmt(row.get(k, "")) for k in self.columns})


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def read_log(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class TensorBoard:
    """SummaryWriter when the tensorboard package is installed; otherwise every call does nothing."""

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency
                return
            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, row: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k.replace("_", "/", 1) if k[:2] in ("G_", "D_") else k, v, step)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StepLog:
    """Rank 0's per-step bookkeeping: a log.csv row (and TensorBoard scalars) averaging the good steps since
    the last row every `log_every` steps, and the tqdm bar with the latest losses. Disabled on other ranks."""

    def __init__(self, run_dir: Path, tc: Any, start_step: int, resume: bool, enabled: bool) -> None:
        self.enabled, self.every, self.total = enabled, tc.log_every, tc.steps
        self.csv = CsvLog(run_dir / "log.csv", resume_step=start_step if resume else None) if enabled else None
        self.tb = TensorBoard(run_dir / "tb", enabled=tc.tensorboard and enabled)
        self.bar = None
        if enabled and tc.progress:
            self.bar = tqdm(total=tc.steps, initial=start_step, desc="meta-learning", unit="step", dynamic_ncols=True)
        self.window: dict[str, list[float]] = {}
        self.t0, self.steps, self.bad, self.it_s = time.perf_counter(), 0, 0, 0.0

    def say(self, line: str) -> None:
        """A line above the progress bar (or printed, without one)."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(line)

    def step(self, step: int, epoch: int, elapsed: float, ok: bool, parts: Mapping[str, float]) -> float:
        """Account for one step; returns steps per second over the last logged window."""
        self.steps += 1
        self.bad += 0 if ok else 1
        if ok:
            for k, v in parts.items():
                self.window.setdefault(k, []).append(v)
        if not self.enabled:
            return self.it_s
        now = time.perf_counter()
        if self.steps >= self.every or step >= self.total:
            self.it_s = self.steps / max(now - self.t0, 1e-9)
            row = {"step": step, "epoch": epoch, "time": round(elapsed, 3), "it_s": round(self.it_s, 4),
                   "nonfinite": self.bad, **{k: float(np.mean(v)) for k, v in self.window.items()}}
            self.csv.write(row)
            self.tb.scalars(row, step)
            self.window, self.t0, self.steps, self.bad = {}, now, 0, 0
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(G=f"{parts.get('G_total', float('nan')):.3g}",
                                 D=f"{parts.get('D_total', float('nan')):.3g}",
                                 rec=f"{parts.get('G_rec_l1', float('nan')):.3f}", refresh=False)
        return self.it_s

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.tb.close()


def plot_losses(run_dir: str | os.PathLike, smooth: int = 0):
    """Loss curves of a run folder's log.csv as a matplotlib Figure (G parts, D parts, reconstruction).

    smooth: moving-average window in log rows (0 = a sensible default for the log's length).
    """
    # lazy: matplotlib's Figure costs 0.34 s to import (python -X importtime); training never plots
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(run_dir) / "log.csv" if Path(run_dir).is_dir() else Path(run_dir)
    rows = read_log(path)
    fig = Figure(figsize=(13, 3.6))
    FigureCanvasAgg(fig)  # no pyplot: no global figure state, works headless and inline
    axes = fig.subplots(1, 3)
    if not rows:
        fig.suptitle(f"{path}: no rows yet")
        return fig
    step = np.array([float(r["step"]) for r in rows])
    win = smooth or max(1, len(rows) // 30)

    def series(key: str) -> np.ndarray:
        v = np.array([float(r[key]) if r.get(key) not in ("", None) else np.nan for r in rows])
        if win > 1 and len(v) >= win:
            kernel = np.ones(win) / win
            v = np.convolve(np.nan_to_num(v, nan=np.nanmean(v) if np.isfinite(v).any() else 0.0), kernel, mode="same")
        return v

    keys = list(rows[0].keys())
    panels = [
        ("E/G update: L = L_CNT + L_ADV + L_MCH", [k for k in keys if k.startswith("G_") and k != "G_rec_l1"]),
        ("D update: hinge loss and scores", [k for k in keys if k.startswith("D_")]),
        ("reconstruction |x̂ − x| (logged only)", ["G_rec_l1"] if "G_rec_l1" in keys else []),
    ]
    for ax, (title, ks) in zip(axes, panels):
        for k in ks:
            ax.plot(step, series(k), label=k, lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ks:
            ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figure_to_array(fig) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a matplotlib figure (to write it with tkh.media.write_image)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
