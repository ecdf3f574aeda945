"""The notebook sequence (issue 7): every notebook runs headless on a CPU with its small setting, and ends
with a figure; the committed notebooks carry no outputs.

How the kernel is found: papermill (like nbmake) asks jupyter_client's KernelSpecManager for a kernel name.
A plain "python3" would be whatever kernelspec comes first on the Jupyter path (a user-level one may point
at another Python), so the `kernel` fixture writes its own kernelspec, `tkh-test`, whose argv is this very
interpreter (`sys.executable`, i.e. `.venv/bin/python` after `bash setup.sh --dev`), into a temporary
folder put first on JUPYTER_PATH. Nothing is registered on the machine.

Each notebook runs in a temporary working directory (what it writes stays out of the checkout), with
papermill's parameters injected after its `parameters` cell (FAST = True, plus a few per notebook).
`TKH_NOTEBOOK_TIMES=path.json` appends each notebook's wall time to that file (for the README table).
"""

from __future__ import annotations

import json
import os
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
    "02_meta_training.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "03_one_shot_painting.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "04_puppeteer.ipynb": ({"FAST": True}, [pytest.mark.slow]),
    "05_evaluation.ipynb": ({"FAST": True}, [pytest.mark.slow]),
}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def test_the_sequence_is_complete():
    """Issue 7's six notebooks exist, and no notebook is left untested."""
    present = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert present == sorted(SEQUENCE), f"notebooks/ holds {present}; SEQUENCE lists {sorted(SEQUENCE)}"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_stripped(path):
    """No outputs, no execution counts, no saved widget state (rebuild with notebooks/_build_*.py)."""
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


def _last_code_cell_has_image(nb: dict) -> bool:
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    return any("image/png" in out.get("data", {}) for out in code[-1].get("outputs", []))


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
    assert _last_code_cell_has_image(nb), f"{name}: the last code cell shows no image/png figure"
