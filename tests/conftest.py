import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.allocator import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
keep_freed_memory()  # as every stage does (pipeline/stage.py): the nets trained in-process run as there


def pytest_collection_modifyitems(items):
    """The longest module first: under pytest-xdist (`-n 2 --dist loadfile`, pyproject.toml) it
    starts at once on one worker while the other takes the rest."""
    items.sort(key=lambda item: item.path.name != "test_dvc_pipeline.py")  # stable: file order kept otherwise


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """One SQLite store for the whole test session (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_uri):
    """The tiny project (tests/tiny_project.py): a copy of this working tree as its own git
    repository, conf/ shrunk to a tiny world; one per test module."""
    from tiny_project import tiny_project

    root = tmp_path_factory.mktemp("project")
    return root, tiny_project(root, {"MLFLOW_TRACKING_URI": mlflow_uri})


@pytest.fixture
def base_params():
    """params.yaml as committed, as a plain dict."""
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_world(raw: dict, **dataset) -> dict:
    """Shrink the default params to a world that renders in a blink."""
    raw["dataset"].update({"num_train": 6, "num_val": 3, "preview_count": 4, **dataset})
    return raw


def run_stage(name: str, workdir: Path, mlflow_uri: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a stage's real command in `workdir` (which holds params.yaml), as dvc would."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py"), *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (starting Ray costs seconds)."""
    from pipeline.distributed import init_ray

    init_ray(num_cpus=2)  # as the stages start it: bound to 127.0.0.1
    yield
    import ray

    ray.shutdown()


def tiny_cam(raw: dict) -> dict:
    """Shrink the CAM, IRN and segmentation sections: a narrow net, one short epoch each,
    single-process per-image stages."""
    raw["backbone"].update(widths=[8, 8, 16, 16])
    raw["distributed"].update(cpus_per_worker=1)
    for section in ("train_cam", "train_clims"):
        raw[section].update(epochs=1, batch_size=4)
    raw["make_cam"].update(scales=[1.0, 0.5], num_workers=0)
    raw["eval_cam"].update(overlays=2)
    raw["make_ir_label"].update(num_workers=0)
    raw["train_irn"].update(epochs=1, batch_size=4, radius=4, side_channels=8)
    raw["make_sem_seg"].update(exp_times=4, num_workers=0)
    raw["eval_sem_seg"].update(overlays=2)
    raw["train_seg"].update(epochs=1, batch_size=4, head_width=8)
    raw["eval_seg"].update(scales=[1.0], overlays=2)
    return raw
