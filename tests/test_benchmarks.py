"""Every benchmark script runs (`--dry-run`: one iteration of its smallest case) against the current `tkh`
and writes its JSON with rows and the machine it ran on. Speed itself is the scripts' business, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["puppet_frame", "train_throughput", "finetune_time", "preprocess_speed", "scaling", "portrait_detection"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_dry_run_prints_a_table_and_writes_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--dry-run", "--json", str(out)],
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2", "TKH_OFFLINE": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "|---" in r.stdout  # the markdown table
    data = json.loads(out.read_text())
    assert data["benchmark"] == name and data["rows"]
    assert data["machine"]["device"] in ("cpu", "cuda") and data["machine"]["torch"]
