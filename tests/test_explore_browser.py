"""The explorer's widgets render in a real JupyterLab, in headless Chromium.

A JupyterLab server on 127.0.0.1 serves a small notebook that builds an
AnomalyExplorer over the CTU-Normal-43 capture; Chromium opens it, JupyterLab runs
all cells, and the test reads the live DOM through the Chrome DevTools protocol
(tornado's websocket client, already a JupyterLab dependency).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, require
from test_report import build_alerts

from watchtower_lib import store
from watchtower_lib.explore import LOG_TYPES
from watchtower_lib.labels import read_labelled
from watchtower_lib.zeek import read_log

CAPTURE = "labelled/stratosphere-sdt/011-ctu-normal-43-day1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT = 50.0  # seconds for the page, the kernel and the widgets together

PROBE = """(() => {
  const q = (s) => document.querySelectorAll(s).length;
  return JSON.stringify({
    widgets: q('.jupyter-widgets'), dropdowns: q('.widget-dropdown'), sliders: q('.widget-slider'),
    selects: q('.widget-select'), combobox: q('.widget-text input[list]'), table: q('table.wt-alert-table'),
    table_rows: q('table.wt-alert-table tbody tr'), records: q('table.wt-http'), plot: q('.js-plotly-plot'),
    errors: q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
    dialog: (document.querySelector('.jp-Dialog') || {}).textContent || null,
    stderr: Array.from(document.querySelectorAll('.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')).map(e => e.textContent.slice(0, 300)),
    prompt: (document.querySelector('.jp-InputPrompt') || {}).textContent || null,
    text: (document.querySelector('.widget-html-content b') || {}).textContent || null,
  });
})()"""
KERNEL_STATUS = """(() => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.title.label === 'explore.ipynb');
  const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (kernel && !window.jupyterapp.shell.currentWidget) window.jupyterapp.shell.activateById(panel.id);
  return kernel ? kernel.status : null;
})()"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(what: str, check, deadline: float, every: float = 0.25):
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read()
    except OSError:
        return None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def notebook_dir(shared_data, tmp_path):
    """The capture in a Parquet store + a notebook that shows an explorer with one alert picked."""
    folder = shared_data / CAPTURE
    work = tmp_path / "lab"
    work.mkdir()
    store.ingest([folder / f"{log_type}.log.labeled" for log_type in LOG_TYPES], work / "store")
    alerts = build_alerts(read_labelled(folder / "conn.log.labeled"), sensor="ctu43")
    alerts.to_parquet(work / "alerts.parquet")
    http = read_log(folder / "http.log.labeled")
    uid = sorted(set(http["uid"].astype(str)) & set(alerts["uid"].astype(str)))[0]
    alert_id = alerts.loc[alerts["uid"] == uid, "id"].iloc[0]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        "import pandas as pd\n"
        "from watchtower_lib.explore import AnomalyExplorer\n"
        "alerts = pd.read_parquet('alerts.parquet')\n"
        "explorer = AnomalyExplorer(alerts, 'store', max_rows=25)  # the logs from the Parquet store\n"
        f"explorer.select({alert_id!r})\n"
        "explorer"
    )]
    nbformat.write(nb, work / "explore.ipynb")
    return work


@pytest.fixture
def jupyterlab(notebook_dir, tmp_path):
    port, token = _free_port(), "wt-" + os.urandom(8).hex()
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "PYTHONPATH": str(ROOT)}
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={notebook_dir}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]  # no news, update checks or PyPI listing: 127.0.0.1 only
    if os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    log = open(tmp_path / "jupyter.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("jupyter lab to answer", lambda: proc.poll() is not None or _get(f"{base}/api/status?token={token}"),
              time.monotonic() + 30)
        assert proc.poll() is None, (tmp_path / "jupyter.log").read_text()[-2000:]
        yield f"{base}/lab/tree/explore.ipynb?token={token}"
    finally:
        _stop(proc)
        log.close()


async def _cdp(ws_url: str, page_url: str, deadline: float) -> dict:
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(ws_url, max_message_size=64 * 1024 * 1024)
    counter = iter(range(1, 1_000_000))

    async def call(method: str, **params):
        ident = next(counter)
        conn.write_message(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            remaining = max(deadline - time.monotonic(), 0.1)
            raw = await asyncio.wait_for(conn.read_message(), timeout=remaining)
            assert raw is not None, f"DevTools connection closed during {method}"
            message = json.loads(raw)
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(expression: str):
        result = await call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    await call("Page.navigate", url=page_url)
    while not await evaluate("!!(window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell'))"):
        assert time.monotonic() < deadline, "JupyterLab did not open the notebook"
        await asyncio.sleep(0.25)
    while await evaluate(KERNEL_STATUS) != "idle":  # run only once the notebook's kernel is up
        assert time.monotonic() < deadline, "the notebook's kernel did not start"
        await asyncio.sleep(0.25)
    await evaluate("void window.jupyterapp.commands.execute('notebook:run-all-cells')")
    state: dict = {}
    while time.monotonic() < deadline:
        state = json.loads(await evaluate(PROBE))
        if state["table"] and state["records"] and state["dropdowns"] >= 2 and state["plot"]:
            break
        await asyncio.sleep(0.5)
    conn.close()
    return state


def test_explorer_renders_in_jupyterlab(jupyterlab, tmp_path):
    require("CHROMIUM", CHROMIUM is not None, "no chromium on PATH")
    started = time.monotonic()
    profile = tmp_path / "chromium"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
           f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
           "--remote-allow-origins=*", "--window-size=1280,2000", "--disable-breakpad",
           "--disable-crash-reporter", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        port = _wait("chromium's DevTools port", lambda: port_file.exists() and port_file.read_text().split()[:1],
                     started + 20)[0]
        targets = json.loads(_wait("DevTools targets", lambda: _get(f"http://127.0.0.1:{port}/json/list"),
                                   started + 20))
        page = next(t for t in targets if t["type"] == "page")
        state = asyncio.run(_cdp(page["webSocketDebuggerUrl"], jupyterlab, started + TIMEOUT))
    finally:
        _stop(proc)
    assert state.get("widgets", 0) > 0, json.dumps(state)
    assert state["dropdowns"] >= 2 and state["sliders"] >= 2 and state["selects"] >= 1, state
    assert state["table"] == 1 and state["table_rows"] == 25, state
    assert state["records"] == 1, state  # the picked alert's HTTP record
    assert state["plot"] >= 1, state  # its host timeline, drawn by plotly
    assert state["text"] == "4042", state  # "4042 of 4042 alerts"
    assert state["errors"] == 0, state
