"""Figures for comparing generated faces: a labelled image grid and a blind, user-study-style grid.

- `image_grid(rows, row_labels, col_labels, cell_text)`: a matplotlib Figure of images in rows and columns
  with a caption under each cell (e.g. "CSIM 0.61 · SSIM 0.42"). Used by notebooks 04 and 06 to put FF,
  FT and the real face side by side.
- `score_parts({part: values}, labels)`: a sum drawn as signed stacked bars, one bar per label (notebook
  02: the projection discriminator's r = VᵀW_i + Vᵀw0 + b, part by part).
- `blind_grid({identity: {"real": img, "FF": img, "FT": img}}, seed)`: the paper's user study in miniature
  (Zakharov et al. 2019, sec. 4: people were shown real and generated images of a person and asked
  to spot the fake; USER = how often they succeeded, lower is better for the method). Each row's
  images are shuffled behind letters A, B, C…; `BlindGrid.figure()` shows them unlabeled,
  `figure(reveal=True)` and `key()` give the answers, `score(picks)` grades a reader's guesses,
  `sharpest_picks()` is a naive baseline reader, and `save(folder)` writes the grid (PNG, labelled
  synthetic) and the key (JSON).

Figures are built without pyplot (no global figure state), as `tkh.train.plot_losses` does; a notebook
shows one by leaving it as a cell's last expression, a script saves it with `fig.savefig`.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tkh.atomic import write_json
from tkh.errors import BadInputError
from tkh.media import to_rgb_uint8, write_image

__all__ = ["BlindGrid", "blind_grid", "image_grid", "same_pose", "score_parts"]


def _figure(width: float, height: float):
    # lazy: matplotlib's Figure costs 0.34 s to import (python -X importtime); only drawn figures need it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # no pyplot: works headless and inline, never left open
    return fig


def score_parts(parts: dict[str, Any], labels: list[str], title: str = "", horizontal: bool = False,
                total_label: str = "their sum"):
    """A matplotlib Figure of one bar per label split into `parts` ({name: one value per label}, e.g. tensors):
    positive parts stack away from 0 one way, negative ones the other, and a black diamond marks each sum.
    Tensors are read without importing torch here (this module does not need it)."""
    values = {name: v.detach().float().cpu().numpy().reshape(-1) if hasattr(v, "detach")
              else np.array([float(t) for t in v]) for name, v in parts.items()}
    n = len(labels)
    if any(len(v) != n for v in values.values()):
        raise BadInputError(f"score_parts: every part needs {n} values (one per label)")
    fig = _figure(*((7, 0.45 * n + 1.4) if horizontal else (max(5.0, 0.8 * n + 2), 3.2)))
    ax = fig.subplots()
    where = np.arange(n)
    up, down = np.zeros(n), np.zeros(n)
    for name, v in values.items():
        start = np.where(v >= 0, up, down)
        if horizontal:
            ax.barh(where, v, left=start, height=0.6, label=name)
        else:
            ax.bar(where, v, bottom=start, width=0.6, label=name)
        up, down = up + v.clip(min=0), down + v.clip(max=0)
    total = sum(values.values())
    if horizontal:
        ax.plot(total, where, "kD", label=total_label), ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(where, labels), ax.invert_yaxis()
    else:
        ax.plot(where, total, "kD", label=total_label), ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(where, labels, fontsize=8)
    ax.legend(fontsize=8), ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 image resized to size x size (cells of one grid share a size)."""
    img = to_rgb_uint8(np.asarray(img), "grid cell")
    if img.shape[:2] == (size, size):
        return img
    interp = cv2.INTER_CUBIC if img.shape[0] < size else cv2.INTER_AREA
    return cv2.resize(img, (size, size), interpolation=interp)


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, cell_text: Sequence[Sequence[str]] | None = None,
               panel: float = 2.0, title: str | None = None):
    """A Figure with rows x columns of images (None leaves a cell empty), labels and per-cell captions.

    rows: images as RGB uint8 (H, W, 3) arrays; row_labels on the left, col_labels on top;
    cell_text[r][c] under each image. Returns a matplotlib Figure (no pyplot).
    """
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise BadInputError("image_grid: no images given")
    for name, labels, n in (("row_labels", row_labels, n_rows), ("col_labels", col_labels, n_cols)):
        if labels is not None and len(labels) != n:
            raise BadInputError(f"image_grid: {len(labels)} {name} for {n} {name.split('_')[0]}s")
    fig = _figure(panel * n_cols + (0.6 if row_labels else 0), panel * n_rows + 0.4 * bool(title))
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            img = rows[r][c] if c < len(rows[r]) else None
            if img is not None:
                ax.imshow(np.asarray(img))
            if cell_text is not None and r < len(cell_text) and c < len(cell_text[r]) and cell_text[r][c]:
                ax.set_xlabel(cell_text[r][c], fontsize=8)
            if r == 0 and col_labels is not None:
                ax.set_title(col_labels[c], fontsize=10)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


@dataclass
class BlindGrid:
    """Rows of shuffled images; `order[r][j]` is the method shown in column j (letter A + j) of row r."""

    identities: list[str]
    order: list[list[str]]
    images: list[list[np.ndarray]]  # per row, in displayed order
    seed: int = 0

    @property
    def letters(self) -> list[str]:
        return list(string.ascii_uppercase[:max(len(o) for o in self.order)])

    def key(self) -> dict[str, dict[str, str]]:
        """The answers: {identity: {letter: method}}."""
        return {name: dict(zip(self.letters, order)) for name, order in zip(self.identities, self.order)}

    def score(self, picks: Mapping[str, str], target: str = "real") -> float:
        """Fraction of rows where the picked letter is `target` (e.g. a reader's guesses of the real face).

        picks: {identity: letter}. Rows without a pick count as wrong. A method whose fakes are never
        told apart from the real face brings a reader down to chance (1 / number of columns).
        """
        key = self.key()
        unknown = set(picks) - set(key)
        if unknown:
            raise BadInputError(f"picks name identities not in the grid: {sorted(unknown)}")
        hits = sum(key[name].get(str(picks.get(name, "")).upper()) == target for name in key)
        return hits / len(key)

    def sharpest_picks(self) -> dict[str, str]:
        """A naive observer: in each row it calls the sharpest image (variance of the Laplacian) the real one.

        Generated faces are usually smoother than photographs, so when a method blurs, this baseline
        "user" beats chance; `score(grid.sharpest_picks())` is its success rate (the paper's USER, sec. 4,
        asked people instead).
        """
        def sharpness(img: np.ndarray) -> float:
            grey = cv2.cvtColor(_fit(img, 128), cv2.COLOR_RGB2GRAY)  # one scale for all cells
            return float(cv2.Laplacian(grey, cv2.CV_64F).var())

        return {name: self.letters[int(np.argmax([sharpness(im) for im in row]))]
                for name, row in zip(self.identities, self.images)}

    def image(self, size: int = 192) -> np.ndarray:
        """The unlabeled grid as one RGB uint8 image (rows x columns of size x size cells, 4 px gaps)."""
        gap = 4
        n_cols = len(self.letters)
        out = np.full((len(self.images) * (size + gap) - gap, n_cols * (size + gap) - gap, 3), 255, np.uint8)
        for r, row in enumerate(self.images):
            for c, img in enumerate(row):
                y, x = r * (size + gap), c * (size + gap)
                out[y:y + size, x:x + size] = _fit(img, size)
        return out

    def figure(self, reveal: bool = False, panel: float = 2.0):
        """The grid as a Figure: letters over the columns; with reveal, each cell names its method."""
        text = [[f"{letter} = {m}" if reveal else letter for letter, m in zip(self.letters, order)]
                for order in self.order]
        title = "answer key" if reveal else "which one is real? (answers: .key())"
        return image_grid(self.images, row_labels=self.identities, cell_text=text, panel=panel, title=title)

    def save(self, folder: str | os.PathLike, model: str = "unknown", size: int = 192) -> tuple[Path, Path]:
        """Write grid.png (labelled synthetic, it holds generated faces) and answer_key.json into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        png = write_image(folder / "grid.png", self.image(size), model=model)

        key = write_json(folder / "answer_key.json", {"seed": self.seed, "rows_top_to_bottom": self.identities,
                                                      "columns_left_to_right": self.letters, "key": self.key()},
                         indent=2)
        return png, key


def blind_grid(rows: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0) -> BlindGrid:
    """Shuffle each identity's images ({identity: {method: image}}) behind letters, reproducibly by `seed`."""
    if not rows:
        raise BadInputError("blind_grid: no identities given")
    rng = np.random.default_rng(seed)
    names, orders, images = [], [], []
    for name, methods in rows.items():
        if not methods:
            raise BadInputError(f"blind_grid: identity {name!r} has no images")
        order = [list(methods)[i] for i in rng.permutation(len(methods))]
        names.append(str(name))
        orders.append(order)
        images.append([np.asarray(methods[m]) for m in order])
    return BlindGrid(names, orders, images, seed)


def same_pose(adapted: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{"ff": AdaptedPortrait, "ft": ...} -> {"real": the first adaptation crop, "FF": its redraw, "FT": ...}.

    Each adaptation redraws the crop it was adapted on from that crop's own landmarks: a row of
    `blind_grid` in the same pose (easy for FT: it was tuned on that very image)."""
    first = next(iter(adapted.values()))
    return {"real": first.crops[0], **{m.upper(): a.render(a.crop_landmarks[0]) for m, a in adapted.items()}}
