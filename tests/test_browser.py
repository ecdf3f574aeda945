"""05_puppeteer in a real browser: JupyterLab headless, Chromium driven by Playwright, a slider moved by keyboard.

Skipped (with the reason) when Debian's chromium (/usr/bin/chromium, or $TKH_CHROMIUM) or the `playwright`
package is missing; Playwright never downloads a browser here, it drives the system one.
With TKH_UPDATE_SCREENSHOT=1 the screenshot of the app is also copied to docs/puppeteer.png (the README's).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("TKH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The sliders after the notebook's last lesson cell ("A sequence, rendered headless": reset, then yaw=25,
# smile=0.3; the exercises after it use the engine, not the app).
# Checked in the browser before the keyboard moves one: a slider off its value would be a stale front-end
# echo the kernel applied after the cell (tkh.widgets.slider_value), e.g. brows stuck at 0.04.
AFTER_RUN = {"jaw open": 0.0, "smile": 0.3, "blink L": 0.0, "blink R": 0.0, "brows": 0.0, "yaw °": 25.0,
             "pitch °": 0.0, "roll °": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook_copy(dest: Path) -> Path:
    """05_puppeteer with the video-driving cell switched off (its own tests cover it): a shorter run."""
    nb = json.loads((ROOT / "notebooks" / "05_puppeteer.ipynb").read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"])
            cell["source"] = src.replace("DRIVE_VIDEO = True", "DRIVE_VIDEO = False")
    path = dest / "05_puppeteer.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture()
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1, random port and token, serving a temporary copy of the notebook."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: `apt-get install -y chromium` (or set TKH_CHROMIUM) to run the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: `pip install playwright`")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (the `notebooks` extra)")
    work = tmp_path / "nb"
    work.mkdir()
    _notebook_copy(work)
    # no "get Jupyter news?" toast over the app, no update checks, no toasts at all (nothing may leave the machine)
    notify = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notify.parent.mkdir(parents=True)
    notify.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               IPYTHONDIR=str(tmp_path / "ipython"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"), MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--ServerApp.open_browser=False", "--allow-root",
         "--LabApp.extension_manager=readonly"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"base": base, "token": token, "dir": work, "tmp": tmp_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_puppeteer_notebook_in_jupyterlab(jupyterlab):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    shot = jupyterlab["tmp"] / "puppeteer.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{jupyterlab['base']}/lab/tree/05_puppeteer.ipynb?token={jupyterlab['token']}")
            # wait until the notebook and its kernel are ready, then Run > Run All Cells
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return !!(w && w.sessionContext && w.sessionContext.session &&"
                " w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'); }",
                timeout=60_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            frame = page.locator("img.tkh-puppet-frame").first
            frame.wait_for(state="visible", timeout=120_000)
            # every code cell has run (the committed notebook has no execution counts): nothing else will move
            # the sliders
            page.wait_for_function(
                "() => { const cells = window.jupyterapp.shell.currentWidget.content.model.cells;"
                " for (let j = 0; j < cells.length; j++) { const c = cells.get(j);"
                " if (c.type === 'code' && c.executionCount === null) return false; } return true; }",
                timeout=180_000)
            # the kernel reads the front end's slider messages only between cells: let them all land
            page.wait_for_function(
                "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                timeout=60_000)
            page.wait_for_timeout(1500)
            readouts = {}
            for label in AFTER_RUN:
                row = page.locator(".widget-slider").filter(has_text=label).first
                readouts[label] = float(row.locator(".widget-readout").text_content())
            page.locator("img.tkh-puppet-source").first.wait_for(state="visible", timeout=10_000)
            before = frame.get_attribute("src")
            slider = page.locator(".widget-slider").filter(has_text="jaw open").locator(".noUi-handle").first
            slider.scroll_into_view_if_needed()
            slider.focus()
            for _ in range(5):
                page.keyboard.press("ArrowRight")  # one slider step each, as a user's keyboard would
            page.keyboard.press("End")  # jaw open = 1
            page.wait_for_function("([el, src]) => el.src !== src", arg=[frame.element_handle(), before],
                                   timeout=30_000)
            page.wait_for_timeout(500)  # let the last coalesced frame land
            app = frame.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")
            app.scroll_into_view_if_needed()
            app.screenshot(path=str(shot))
            frame_png = frame.screenshot()
            value = page.locator(".widget-slider").filter(has_text="jaw open").locator(".widget-readout").first
            readout = value.inner_text()
        finally:
            browser.close()

    assert readouts == pytest.approx(AFTER_RUN), readouts  # no slider drifted by a stale echo
    assert float(readout) == pytest.approx(1.0), readout  # the keyboard moved the slider to its end
    img = np.asarray(Image.open(io.BytesIO(frame_png)).convert("RGB"))
    assert img.shape[0] >= 100 and img.std() > 10  # the portrait is shown, not a blank box
    assert shot.stat().st_size > 10_000
    if os.environ.get("TKH_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "puppeteer.png")
