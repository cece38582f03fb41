"""`clims ui` in a real browser: the MLflow UI, started by the command a user types, shows a
sweep's runs in headless Chromium. Needs Debian's chromium (`apt-get install chromium`); run with
`python -m pytest -m browser`. The screenshot is kept in test-artifacts/."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pipeline.params import validate
from pipeline.sweep import MlflowTrials

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
TRIALS = {f"t{i:04d}": {"otm": 2.0 + i, "btm": 24.0, "cbs": 1.0, "reg": 0.2, "tau": 0.3 + 0.05 * i} for i in range(4)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(*args: str, profile: Path) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=20000"]
    done = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


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

    port = _free_port()
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
        dom = _chromium("--dump-dom", page, profile=tmp_path / "profile")
        # The parent row (its trials are nested under it, collapsed) and the count of every run
        # of the sweep: the parent and its four trials.
        text = re.sub(r"<[^>]+>", "", dom)
        assert "sweep-browser" in text and f"{1 + len(TRIALS)} matching runs" in text
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "mlflow_sweep.png"
        _chromium(f"--screenshot={shot}", page, profile=tmp_path / "profile")
        assert shot.stat().st_size > 10_000
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(timeout=30)
