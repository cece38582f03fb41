"""`clims ui` in a real browser: the MLflow UI, started by the command a user types, shows a
sweep's parent run and, expanded, its trial runs in headless Chromium (driven over the DevTools
protocol with aiohttp, which Ray already brings). Needs Debian's chromium (`apt-get install
chromium`); run with `python -m pytest -m browser`. The screenshot is kept in test-artifacts/."""
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pipeline.distributed import bindable_port
from pipeline.params import validate
from pipeline.sweep import MlflowTrials

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
TRIALS = {f"t{i:04d}": {"otm": 2.0 + i, "btm": 24.0, "cbs": 1.0, "reg": 0.2, "tau": 0.3 + 0.05 * i} for i in range(4)}


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900"]


async def _show_sweep(debug_port: int, page: str, names: list[str], shot: Path) -> str:
    """Drive Chromium over the DevTools protocol: open `page`, wait for the sweep's parent row,
    expand it, wait until every name in `names` is on the page, screenshot; returns the page text."""
    import base64
    import itertools

    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # Chromium takes a moment to open its DevTools port
            try:
                targets = await (await http.get(f"http://127.0.0.1:{debug_port}/json")).json()
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
        target = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = itertools.count(1)

            async def call(method: str, **params):
                request = next(ids)
                await ws.send_json({"id": request, "method": method, "params": params})
                async for message in ws:
                    data = message.json()
                    if data.get("id") == request:
                        return data.get("result", {})

            async def text() -> str:
                result = await call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
                return result["result"].get("value", "")

            async def wait_for(wanted: list[str]) -> str:
                for _ in range(120):
                    shown = await text()
                    if all(name in shown for name in wanted):
                        return shown
                    await asyncio.sleep(0.5)
                raise AssertionError(f"not on the page after 60 s: {[n for n in wanted if n not in shown]}")

            await call("Page.navigate", url=page)
            await wait_for(names[:1])
            expand = "document.querySelectorAll('button[data-component-id*=runnamecellrenderer]').forEach(b => b.click())"
            await call("Runtime.evaluate", expression=expand)
            shown = await wait_for(names)
            png = await call("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(png["data"]))
            return shown


@pytest.mark.browser
def test_clims_ui_shows_the_sweep_runs_in_chromium(tmp_path, base_params):
    assert Path(CHROMIUM).exists(), "this test needs Debian's chromium: apt-get install chromium"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base_params["sweep"]["name"] = "browser"
    params = validate(base_params)
    # The sweep's own MLflow writer, fed the results Tune would hand it.
    trials = MlflowTrials(params.model_copy(update={"tracking": params.tracking.model_copy(update={"uri": uri})}))
    for trial_id, config in TRIALS.items():
        for epoch in (1, 2):
            trials.result(trial_id, config, {"epoch": epoch, "cam_miou": 40 + epoch + config["otm"], "loss": 1.0 / epoch})
        trials.finish(trial_id, config, "FINISHED")
    trials.end({"cam_miou": 47.0, "config": TRIALS["t0003"]})

    port = bindable_port("127.0.0.1", 0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**base_params, "tracking": {"uri": uri, "experiment": "clims"}}))
    server = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"clims ui did not answer on {url}")
        from mlflow import MlflowClient

        experiment = MlflowClient(uri).get_experiment_by_name("clims").experiment_id
        query = urllib.parse.quote("tags.`clims.sweep` = 'browser'")
        page = f"{url}/#/experiments/{experiment}/runs?searchFilter={query}"
        debug_port = bindable_port("127.0.0.1", 0)
        browser = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                                    f"--remote-debugging-port={debug_port}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "mlflow_sweep.png"
        try:
            names = ["sweep-browser", *(f"trial-{t}" for t in TRIALS)]
            shown = asyncio.run(asyncio.wait_for(_show_sweep(debug_port, page, names, shot), 120))
        finally:
            browser.terminate()
            browser.wait(timeout=30)
        # The parent row, its four nested trial rows once expanded, and the count of them all.
        assert f"{1 + len(TRIALS)} matching runs" in " ".join(shown.split())
        assert shot.stat().st_size > 10_000
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(timeout=30)
