"""`clims ui` in a real browser: the MLflow UI, started by the command a user types, shows a
sweep's parent run and, expanded, its trial runs, and two pipeline runs side by side by their
headline figures, in headless Chromium (driven over the DevTools protocol with aiohttp, which Ray
already brings). Needs Debian's chromium (`apt-get install chromium`); run with
`python -m pytest -m browser`. The screenshots are kept in test-artifacts/."""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from conftest import REPO
from servers import serving
from pipeline.distributed import bindable_port
from pipeline.params import validate
from pipeline.sweep import MlflowTrials

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
TRIALS = {f"t{i:04d}": {"otm": 2.0 + i, "btm": 24.0, "cbs": 1.0, "reg": 0.2, "tau": 0.3 + 0.05 * i} for i in range(4)}


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900"]


async def _show(debug_port: int, page: str, names: list[str], shot: Path, expand: bool = False, scroll_to: str = "") -> str:
    """Drive Chromium over the DevTools protocol: open `page`, wait for the first of `names`,
    (with `expand`) expand every parent row, wait until every name is on the page, scroll the
    last element whose text is `scroll_to` into view, screenshot; returns the page text."""
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
            if expand:
                click = "document.querySelectorAll('button[data-component-id*=runnamecellrenderer]').forEach(b => b.click())"
                await call("Runtime.evaluate", expression=click)
            shown = await wait_for(names)
            if scroll_to:
                scroll = ("Array.from(document.querySelectorAll('td, th, span, div')).filter(e => e.textContent.trim() === "
                          f"{json.dumps(scroll_to)}).pop()?.scrollIntoView({{block: 'start'}})")
                await call("Runtime.evaluate", expression=scroll)
                await asyncio.sleep(1)
            png = await call("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(png["data"]))
            return shown


@contextmanager
def clims_ui(folder: Path, base_params: dict, uri: str) -> Iterator[str]:
    """`clims ui` started as a user would, in `folder`, on the store `uri`; yields its address."""
    port = bindable_port("127.0.0.1", 0)
    (folder / "params.yaml").write_text(yaml.safe_dump({**base_params, "tracking": {"uri": uri, "experiment": "clims"}}))
    url = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port)], url, folder / "ui.log", cwd=folder,
                 env={**os.environ, "PYTHONPATH": str(REPO)}):
        yield url


def show_in_chromium(folder: Path, page: str, names: list[str], shot_name: str, expand: bool = False,
                     scroll_to: str = "") -> str:
    """Open `page` in headless Chromium until every name in `names` shows; screenshot into
    test-artifacts/; returns the page text."""
    assert Path(CHROMIUM).exists(), "this test needs Debian's chromium: apt-get install chromium"
    debug_port = bindable_port("127.0.0.1", 0)
    browser = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}",
                                f"--remote-debugging-port={debug_port}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / shot_name
    try:
        shown = asyncio.run(asyncio.wait_for(_show(debug_port, page, names, shot, expand, scroll_to), 120))
    finally:
        browser.terminate()
        browser.wait(timeout=30)
    assert shot.stat().st_size > 10_000
    return " ".join(shown.split())


@pytest.mark.browser
def test_clims_ui_shows_the_sweep_runs_in_chromium(tmp_path, base_params):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base_params["sweep"]["name"] = "browser"
    params = validate(base_params)
    # The sweep's own MLflow writer, fed the results Tune would hand it.
    trials = MlflowTrials(params.model_copy(update={"tracking": params.tracking.model_copy(update={"uri": uri})}), str(tmp_path))
    for trial_id, config in TRIALS.items():
        for epoch in (1, 2):
            trials.result(trial_id, config, {"epoch": epoch, "cam_miou": 40 + epoch + config["otm"], "loss": 1.0 / epoch})
        trials.finish(trial_id, config, "FINISHED")
    trials.end({"cam_miou": 47.0, "config": TRIALS["t0003"]})

    with clims_ui(tmp_path, base_params, uri) as url:
        from mlflow import MlflowClient

        experiment = MlflowClient(uri).get_experiment_by_name("clims").experiment_id
        query = urllib.parse.quote("tags.`clims.sweep` = 'browser'")
        page = f"{url}/#/experiments/{experiment}/runs?searchFilter={query}"
        names = ["sweep-browser", *(f"trial-{t}" for t in TRIALS)]
        shown = show_in_chromium(tmp_path, page, names, "mlflow_sweep.png", expand=True)
    # The parent row, its four nested trial rows once expanded, and the count of them all.
    assert f"{1 + len(TRIALS)} matching runs" in shown


# Two pipeline runs as `dvc repro` and `dvc exp run -S clims_loss.weights.cbs=2` leave them
PIPELINES = {
    "default": {"cam_baseline": {"miou": 41.12, "context_leak": 27.94}, "cam_clims": {"miou": 57.46, "context_leak": 17.43},
                "pseudo_labels": {"miou": 63.21, "context_leak": 21.5}, "segmentation": {"miou": 52.75, "context_leak": 19.25}},
    "cbs-x2": {"cam_baseline": {"miou": 41.12, "context_leak": 27.94}, "cam_clims": {"miou": 48.61, "context_leak": 12.07},
               "pseudo_labels": {"miou": 58.3, "context_leak": 14.75}, "segmentation": {"miou": 49.5, "context_leak": 11.25}},
}


@pytest.mark.browser
def test_two_pipeline_runs_compare_by_headline_figures_in_chromium(tmp_path, base_params, monkeypatch):
    """Every stage logs its headline figures on its pipeline's parent run: MLflow's compare view
    of two parent runs shows them side by side, no child run opened."""
    from mlflow import MlflowClient

    from pipeline import tracking
    from pipeline.report import write_metrics

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base_params["tracking"].update(uri=uri, experiment="clims")
    params = validate(base_params)
    monkeypatch.chdir(tmp_path)
    for name, records in PIPELINES.items():
        monkeypatch.setenv("DVC_EXP_NAME", name)
        monkeypatch.setenv("CLIMS_PIPELINE_RUN", f"key-{name}")
        for record, figures in records.items():
            with tracking.stage_run(f"eval_{record}", params, sections=()) as run:
                write_metrics(run, record, {**figures, "iou": {"boat": 1.0}})
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("clims").experiment_id
    parents = {run.info.run_name: run.info.run_id for run in client.search_runs([experiment], "tags.`clims.pipeline_key` LIKE 'key-%'")
               if "mlflow.parentRunId" not in run.data.tags}
    assert set(parents) == set(PIPELINES)

    with clims_ui(tmp_path, base_params, uri) as url:
        ids = urllib.parse.quote(json.dumps([parents["default"], parents["cbs-x2"]]))
        page = f"{url}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([experiment]))}"
        values = [f"{figures['miou']}" for records in PIPELINES.values() for figures in records.values()]
        shown = show_in_chromium(tmp_path, page, ["cam_clims.miou", "segmentation.context_leak", *values],
                                 "mlflow_compare_pipelines.png", scroll_to="Metrics")
    # the compare view's metrics table: the figures' names, then one value per pipeline run for each
    value = lambda run, name: PIPELINES[run][name.split(".")[0]][name.split(".")[1]]  # noqa: E731
    names = sorted(f"{record}.{key}" for record in PIPELINES["default"] for key in ("miou", "context_leak"))
    table = " ".join(names) + " " + " ".join(f"{value('default', n)} {value('cbs-x2', n)}" for n in names)
    assert f"Metrics Show diff only {table}" in shown, shown
