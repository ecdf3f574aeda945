"""Writes each notebooks/NN_name.ipynb (what Colab opens) from its jupytext source notebooks/NN_name.py.

    python notebooks/sync.py            # rewrite every .ipynb from its .py
    python notebooks/sync.py --check    # exit 1 naming each pair out of sync (tests/test_notebooks.py checks this)

The .py files (jupytext's percent format) are the sources: edit, review and lint those (ruff checks them).
Each .ipynb is derived from its .py: no outputs, the kernel and Colab metadata every tkh notebook carries,
and cell ids derived from each cell's content, so the same source always gives byte-identical notebooks and
an edit shows up in git only where a cell changed.

Edited a notebook in Jupyter? With jupytext installed (the `notebooks` extra) the pairing in its metadata
(`formats: ipynb,py:percent`) has already updated the .py; run this to strip the .ipynb again. Edited it
where jupytext is absent (e.g. Colab)? `jupytext --to py:percent NN_name.ipynb` brings the edit back first.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
    "jupytext": {"formats": "ipynb,py:percent"},
}


def sources(folder: Path = HERE) -> list[Path]:
    """The notebook sources: NN_name.py (this script and other helpers are not notebooks)."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.py"))


def cell_id(cell: dict, seen: set[str]) -> str:
    """A cell's id from its type and source (nbformat wants unique ids; a repeated cell gets a suffix)."""
    base = hashlib.sha1(f"{cell['cell_type']}\n{cell['source']}".encode()).hexdigest()[:10]
    cid, n = base, 1
    while cid in seen:
        cid, n = f"{base}-{n}", n + 1
    seen.add(cid)
    return cid


def build(py: Path) -> nbformat.NotebookNode:
    """The .ipynb of a jupytext source: stripped cells, content-derived ids, the shared metadata."""
    nb = jupytext.read(py, fmt="py:percent")
    seen: set[str] = set()
    for cell in nb.cells:
        cell["id"] = cell_id(cell, seen)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.metadata = nbformat.from_dict(METADATA)
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def text(py: Path) -> str:
    """The exact text `sync` writes for a source."""
    return nbformat.writes(build(py)) + "\n"


def out_of_sync(folder: Path = HERE) -> list[str]:
    """One line per notebook whose .ipynb is missing or differs from what its .py builds, and per orphan .ipynb."""
    problems = []
    pys = sources(folder)
    for py in pys:
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.is_file():
            problems.append(f"{ipynb.name} is missing: run `python notebooks/sync.py`")
        elif ipynb.read_text() != text(py):
            problems.append(f"{ipynb.name} differs from {py.name}: run `python notebooks/sync.py` "
                            f"(or `jupytext --to py:percent {ipynb.name}` if the notebook holds the edit)")
    names = {p.with_suffix(".ipynb").name for p in pys}
    problems += [f"{p.name} has no source {p.with_suffix('.py').name}" for p in sorted(folder.glob("*.ipynb"))
                 if p.name not in names]
    return problems


def main(argv: list[str]) -> int:
    if "--check" in argv:
        problems = out_of_sync()
        print("\n".join(problems) or f"{len(sources())} notebooks in sync")
        return 1 if problems else 0
    for py in sources():
        ipynb = py.with_suffix(".ipynb")
        new = text(py)
        if not ipynb.is_file() or ipynb.read_text() != new:
            ipynb.write_text(new)
            print("wrote", ipynb.relative_to(HERE.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
