"""Set-up files agree with each other: environment.yml, pyproject.toml, the README's two commands, CI."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _names(reqs):
    return {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_reqs = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert conda_python == "python=3.11"
    wanted = project["dependencies"] + project["optional-dependencies"]["offline"] + \
        project["optional-dependencies"]["notebooks"]
    env_reqs = [r for r in pip_reqs if not r.startswith("-e")]
    assert _names(env_reqs) == _names(wanted)
    # same version floors, not just the same names
    assert sorted(env_reqs) == sorted(wanted)


def test_torch_is_not_pinned_to_a_cpu_build():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if r.startswith("torch"))
    assert "+cpu" not in torch_req and "==" not in torch_req


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in block.strip().splitlines()]
    assert len(commands) == 2
    assert commands[0].endswith("tkh demo")
    assert readme.index("```bash") < 200  # the very first lines
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_ci_installs_debian_chromium_and_playwright_uses_it():
    """The browser test really runs in CI: apt's chromium, playwright from [dev], no browser download."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "playwright" in _names(project["optional-dependencies"]["dev"])
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get update" in ci and "apt-get install -y" in ci and "--no-install-recommends chromium" in ci
    assert "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1" in ci
    assert ci.index("|| install_chromium") < ci.index("bash setup.sh")  # before the tests run
    browser_test = (ROOT / "tests" / "test_browser.py").read_text()
    assert "executable_path=str(CHROMIUM)" in browser_test
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]:
        assert f'"{flag}"' in browser_test, flag
