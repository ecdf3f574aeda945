"""The notebook sequence (issues 7 and 16): every notebook runs headless on a CPU with its small setting and
ends its lesson with a figure, then 2-4 exercises with check cells; each committed .ipynb is exactly what its
jupytext source notebooks/NN_name.py builds (notebooks/sync.py): no outputs, content-derived cell ids; ruff
lints the sources.

How the kernel is found: papermill (like nbmake) asks jupyter_client's KernelSpecManager for a kernel name.
A plain "python3" would be whatever kernelspec comes first on the Jupyter path (a user-level one may point
at another Python), so the `kernel` fixture writes its own kernelspec, `tkh-test`, whose argv is this very
interpreter (`sys.executable`, i.e. `.venv/bin/python` after `bash setup.sh --dev`), into a temporary
folder put first on JUPYTER_PATH. Nothing is registered on the machine.

Each notebook runs in a temporary working directory (what it writes stays out of the checkout), with
papermill's parameters injected after its `parameters` cell (FAST = True, plus a few per notebook).
`TKH_NOTEBOOK_TIMES=path.json` appends each notebook's wall time to that file (for the README table).
One notebook while developing: `pytest tests/test_notebooks.py -k 02_networks`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "tkh-test"

# name -> papermill parameters (the small CPU setting) and marks: every notebook takes > 30 s on 2 CPU cores, so
# all are `slow` (.ci/run still runs them; `-m "not slow"` skips them)
SEQUENCE = {
    "00_quickstart.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "01_landmarks.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "02_networks.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "03_meta_training.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "04_one_shot_painting.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "05_puppeteer.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "06_evaluation.ipynb": ({"FAST": True}, [pytest.mark.slow]),
}
EXERCISES = "## Exercises"  # the heading after the lesson's last figure

# An equation typed in Unicode prose: a norm or transpose glyph (only equations have them), or an "=" next to one of
# the paper's symbols (ψ̂ = P·ê, λ_MCH = 80, w' = w0 + ê). Such equations belong in $…$ / $$…$$; the symbols alone
# ("ê of each person") and code (`…`, fenced blocks) are fine.
_SYMBOLS = "(?:ψ̂|ê|x̂|λ|Σ)"
_BARE_EQUATION = re.compile(rf"[‖ᵀ]|{_SYMBOLS}[^=\n]{{0,12}}=|=[^=\n]{{0,12}}{_SYMBOLS}")
_NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]+\$", re.S)  # code, then LaTeX, removed


def _bare_equations(markdown: str) -> list[str]:
    """The prose lines of a markdown text that hold an equation outside LaTeX (see _BARE_EQUATION)."""
    return [line.strip() for line in _NOT_PROSE.sub("", markdown).splitlines() if _BARE_EQUATION.search(line)]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _sync():
    """notebooks/sync.py as a module (it needs jupytext: the `dev` and `notebooks` extras)."""
    pytest.importorskip("jupytext", reason="jupytext is not installed (the `dev` extra: bash setup.sh --dev)")
    spec = importlib.util.spec_from_file_location("tkh_notebook_sync", NOTEBOOKS / "sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sequence_is_complete():
    """The seven notebooks exist, each with its jupytext source, and no notebook is left untested."""
    present = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert present == sorted(SEQUENCE), f"notebooks/ holds {present}; SEQUENCE lists {sorted(SEQUENCE)}"
    sources = sorted(p.with_suffix(".ipynb").name for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    assert sources == sorted(SEQUENCE), f"jupytext sources {sources} do not match the notebooks"


def test_every_notebook_is_in_sync_with_its_source():
    """Each .ipynb is byte for byte what notebooks/sync.py builds from its .py (edit the .py, run sync.py)."""
    assert _sync().out_of_sync(NOTEBOOKS) == []


def test_out_of_sync_pairs_and_unstable_ids_are_caught(tmp_path):
    """The sync check names a stale .ipynb, a missing one and an orphan; ids depend on content only."""
    sync = _sync()
    src = NOTEBOOKS / "00_quickstart.py"
    shutil.copy(src, tmp_path / src.name)
    (tmp_path / "00_quickstart.ipynb").write_text(sync.text(src))
    assert sync.out_of_sync(tmp_path) == []
    assert sync.text(src) == sync.text(src)  # a rebuild changes nothing
    nb = json.loads((tmp_path / "00_quickstart.ipynb").read_text())
    nb["cells"][0]["id"] = "random-id"  # what a builder with uuid ids would write
    (tmp_path / "00_quickstart.ipynb").write_text(json.dumps(nb))
    assert len(sync.out_of_sync(tmp_path)) == 1
    (tmp_path / "00_quickstart.ipynb").unlink()
    (tmp_path / "99_orphan.ipynb").write_text("{}")
    problems = sync.out_of_sync(tmp_path)
    assert any("missing" in p for p in problems) and any("99_orphan" in p for p in problems)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_cell_ids_derive_from_content(path):
    """Ids are the content hashes sync.py gives (no random ids: a rebuild leaves git quiet)."""
    sync = _sync()
    seen: set[str] = set()
    for cell in _cells(path):
        assert cell["id"] == sync.cell_id({"cell_type": cell["cell_type"], "source": "".join(cell["source"])}, seen)


def test_ruff_lints_the_notebook_sources():
    """The .py sources pass the project's ruff configuration (pyproject.toml)."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists() and not shutil.which(ruff):
        pytest.skip("ruff is not installed (the `dev` extra)")
    sources = [str(p) for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))] + [str(NOTEBOOKS / "sync.py")]
    out = subprocess.run([ruff, "check", *sources], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_stripped(path):
    """No outputs, no execution counts, no saved widget state (rebuild with `python notebooks/sync.py`)."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.get("metadata", {}), f"{path.name} saves widget state"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_follow_the_sequence_conventions(path):
    """An Open-in-Colab badge and a time estimate up front, one `parameters` cell with FAST."""
    cells = _cells(path)
    opening = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and "colab-badge.svg" in opening, f"{path.name}: no Colab badge"
    assert "**Time.**" in opening, f"{path.name}: the opening cell does not say how long it takes"
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "FAST = True" in "".join(params[0]["source"]), f"{path.name}: parameters cell"
    assert any("google.colab" in "".join(c["source"]) for c in cells if c["cell_type"] == "code"), \
        f"{path.name}: no Colab install cell"
    markdown = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "$$" in markdown, f"{path.name}: no LaTeX ($$…$$) equation"
    assert "METHOD.md" not in "".join("".join(c["source"]) for c in cells), f"{path.name} cites METHOD.md"


def test_the_equation_check_tells_latex_from_unicode_prose():
    bare = ["parameters ψ̂ = P·ê, so", "r = V(x, y)ᵀ(W_i + w0) + b", "L_MCH = λ_MCH‖W_i − ê_i‖₁", "(λ_FM = 10)",
            "starts at w' = w0 + ê_NEW."]
    assert all(_bare_equations(text) for text in bare)
    fine = ["$\\hat\\psi = \\mathbf{P}\\,\\hat e$", "the ê of each person", "K = 8 frames", "`psi = P @ e_hat`",
            "$$\\lVert \\mathbf{W}_i - \\hat e_i \\rVert_1$$", "```python\nr = v @ (W[i] + w0) + b  # Vᵀ(W_i + w0)\n```"]
    assert not any(_bare_equations(text) for text in fine)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_equations_in_markdown_are_latex(path):
    """Every equation in a notebook's prose is LaTeX ($…$ inline, $$…$$ displayed), not Unicode text."""
    markdown = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "markdown")
    assert _bare_equations(markdown) == [], f"{path.name}: equations outside $…$ (write them in LaTeX)"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_end_with_exercises_and_check_cells(path):
    """After the lesson: an Exercises section with 2-4 check cells (tkh.notebook.check), and nothing else."""
    cells = _cells(path)
    starts = [j for j, c in enumerate(cells) if c["cell_type"] == "markdown" and EXERCISES in "".join(c["source"])]
    assert len(starts) == 1, f"{path.name}: expected one '{EXERCISES}' heading"
    checks = [c for c in cells[starts[0]:] if c["cell_type"] == "code" and "check(" in "".join(c["source"])]
    assert 2 <= len(checks) <= 4, f"{path.name}: {len(checks)} check cells after '{EXERCISES}'"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> str:
    """A kernelspec that runs this interpreter, first on JUPYTER_PATH for the module's tests."""
    pytest.importorskip("papermill", reason="papermill is not installed (the `dev` extra: bash setup.sh --dev)")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (the `notebooks` extra)")
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"tkh tests ({sys.executable})", "language": "python"}))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), saved["JUPYTER_PATH"]]))
    # figures must come back as image/png even where CI sets MPLBACKEND=Agg
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    yield KERNEL
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _lesson_ends_with_image(nb: dict) -> bool:
    """The last code cell before the Exercises heading shows an image/png figure."""
    lesson = []
    for c in nb["cells"]:
        if c["cell_type"] == "markdown" and EXERCISES in "".join(c["source"]):
            break
        if c["cell_type"] == "code" and "".join(c["source"]).strip():
            lesson.append(c)
    return any("image/png" in out.get("data", {}) for out in lesson[-1].get("outputs", []))


@pytest.mark.parametrize("name", [pytest.param(n, marks=m, id=n) for n, (_, m) in SEQUENCE.items()])
def test_notebook_runs_headless_and_ends_with_a_figure(name, kernel, tmp_path):
    import papermill

    params = SEQUENCE[name][0]
    out = tmp_path / name
    t0 = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=params, kernel_name=kernel,
                               cwd=str(tmp_path), progress_bar=False, execution_timeout=600)
    seconds = time.perf_counter() - t0
    print(f"{name}: {seconds:.1f} s")
    if os.environ.get("TKH_NOTEBOOK_TIMES"):
        log = Path(os.environ["TKH_NOTEBOOK_TIMES"])
        times = json.loads(log.read_text()) if log.is_file() else {}
        times[name] = round(seconds, 1)
        log.write_text(json.dumps(times, indent=2) + "\n")
    nb = json.loads(out.read_text())
    assert _lesson_ends_with_image(nb), f"{name}: the lesson's last code cell shows no image/png figure"
    shown = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "✗" not in shown, f"{name}: an exercise check failed on its unsolved placeholder"
