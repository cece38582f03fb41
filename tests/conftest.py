import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """One SQLite store for the whole test session (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def base_params():
    """params.yaml as committed, as a plain dict."""
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_world(raw: dict, **dataset) -> dict:
    """Shrink the default params to a world that renders in a blink."""
    raw["dataset"].update({"num_train": 6, "num_val": 3, "preview_count": 4, **dataset})
    return raw


def run_stage(name: str, workdir: Path, mlflow_uri: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a stage's real command in `workdir` (which holds params.yaml), as dvc would."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )
