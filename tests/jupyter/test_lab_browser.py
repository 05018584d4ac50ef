"""JupyterLab 4.6 in a real browser runs a kerneld kernel: a notebook cell plots, and the PNG
is rendered.

The whole stack a notebook user has: `jupyter lab` (from `.venv-clients`) on 127.0.0.1 with
a token and JUPYTER_PATH at the kerneld kernelspec, Debian's `chromium` (headless) driven by
its `chromedriver` through selenium. Selenium lives in `.venv-clients`, not in the daemon's
environment, so the browser part is a small script run by `.venv-clients/bin/python` (below,
`BROWSER`); the test starts the server, runs the script, and checks what it reports and what
the daemon holds. The screenshot is kept as a test artefact: `tests/artifacts/
jupyterlab-plot.png` (gitignored).

Chromium as root refuses to start without `--no-sandbox` (its own sandbox needs an
unprivileged user); that sandbox protects the browser, not the kernel under test.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jupyter.test_server import Server

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / ".venv-clients" / "bin"
ARTIFACT = ROOT / "tests" / "artifacts" / "jupyterlab-plot.png"

pytestmark = [pytest.mark.timeout(150)]

PLOT = """\
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot([1, 3, 2, 4], marker="o")
ax.set_title("kerneld in JupyterLab")
plt.show()
"""

# Runs in .venv-clients: open the notebook, wait for its kernel (status bar "| Idle"), run its
# cell with Shift+Enter, wait for the image, save a screenshot, print what was rendered as one
# JSON line.
BROWSER = r"""
import json, sys
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

url, shot, profile = sys.argv[1:4]
opts = Options()
opts.binary_location = "/usr/bin/chromium"
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-extensions", "--window-size=1280,900",
            f"--user-data-dir={profile}"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.get(url)
    # the notebook's session has its kernel (Lab silently drops a run before that)
    WebDriverWait(driver, 60).until(lambda d: any(
        e.text.endswith("| Idle") for e in d.find_elements(By.CSS_SELECTOR,
                                                           ".jp-StatusBar-TextItem")))
    editor = WebDriverWait(driver, 60).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell .cm-content")))
    editor.click()
    ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    img = WebDriverWait(driver, 60).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-OutputArea-output img")))
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    info = driver.execute_script(
        "const i = arguments[0];"
        "const out = i.closest('.jp-OutputArea-output');"
        "const k = document.querySelector('.jp-NotebookPanel .jp-KernelName,"
        " .jp-NotebookPanel .jp-Toolbar-kernelName');"
        "return {src: i.src.slice(0, 22), width: i.naturalWidth, height: i.naturalHeight,"
        " mime: out && out.getAttribute('data-mime-type'),"
        " kernel: k && k.textContent,"
        " errors: document.querySelectorAll('.jp-NotebookPanel [data-mime-type="
        "\"application/vnd.jupyter.stderr\"]').length}", img)
    driver.save_screenshot(shot)
    print(json.dumps(info), flush=True)
except Exception:
    driver.save_screenshot(shot)
    print("prompts:", [e.text for e in driver.find_elements(
        By.CSS_SELECTOR, ".jp-NotebookPanel .jp-InputArea-prompt")], file=sys.stderr)
    print("status:", [e.text for e in driver.find_elements(
        By.CSS_SELECTOR, ".jp-StatusBar-TextItem")], file=sys.stderr)
    for entry in driver.get_log("browser")[-30:]:
        print("console:", entry.get("level"), entry.get("message", "")[:300], file=sys.stderr)
    raise
finally:
    driver.quit()
"""


@pytest.fixture
def lab(jupyter_kernel: Any, tmp_path: Path) -> Iterator[Server]:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": "plot",
                           "metadata": {}, "outputs": [], "source": jupyter_kernel.plot_code}],
                "metadata": {"kernelspec": {"name": jupyter_kernel.name, "language": "python",
                                            "display_name": jupyter_kernel.name}},
                "nbformat": 4, "nbformat_minor": 5}
    (notebooks / "plot.ipynb").write_text(json.dumps(notebook))
    server = Server("jupyter-lab", jupyter_kernel.env, jupyter_kernel.name, tmp_path)
    try:
        yield server.wait_ready()
    finally:
        server.close()
        # shown by pytest only when the test failed: what the server and the adapter logged
        print("--- jupyter lab log (warnings, errors, kerneld lines):")
        print("\n".join(line for line in server.log.splitlines()
                        if not line.startswith("[I ") or "kerneld" in line)[-6000:])
        print("--- daemon log (tail):\n" + jupyter_kernel.daemon.log[-4000:])


def test_jupyterlab_notebook_plots_in_chromium(lab: Server, jupyter_kernel: Any,
                                               tmp_path: Path) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.unlink(missing_ok=True)
    url = f"http://127.0.0.1:{lab.port}/lab/tree/plot.ipynb?token={lab.token}"
    proc = subprocess.run([str(CLIENTS / "python"), "-c", BROWSER, url, str(ARTIFACT),
                           str(tmp_path / "chromium-profile")],
                          capture_output=True, text=True, timeout=120, check=False)
    print(f"JupyterLab screenshot: {ARTIFACT}")
    assert proc.returncode == 0, (f"browser script failed ({proc.returncode}); screenshot "
                                  f"{ARTIFACT}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    rendered = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"rendered: {rendered}")
    assert rendered["src"] == "data:image/png;base64,", rendered
    assert rendered["mime"] == "image/png", rendered
    assert rendered["width"] >= 100 and rendered["height"] >= 100, rendered
    assert rendered["errors"] == 0, rendered
    assert ARTIFACT.stat().st_size > 10_000

    # the notebook's kernel is the kerneld kernelspec's, and the daemon holds it
    status, specs = lab.request("GET", "/api/kernelspecs")
    display = specs["kernelspecs"][jupyter_kernel.name]["spec"]["display_name"]
    assert rendered["kernel"] and display in rendered["kernel"], (display, rendered)
    status, kernels = lab.request("GET", "/api/kernels")
    assert status == 200 and [k["name"] for k in kernels] == [jupyter_kernel.name], kernels
    jupyter_kernel.expect_daemon_kernels(1)
    status, _ = lab.request("DELETE", f"/api/kernels/{kernels[0]['id']}")
    assert status == 204
    jupyter_kernel.expect_daemon_kernels(0)
