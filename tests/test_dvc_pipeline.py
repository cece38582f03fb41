"""dvc.yaml and the Hydra integration, driven by the real `dvc` command on a tiny world."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SMALL = {
    "dataset/synthetic.yaml": {"num_train": 8, "num_val": 4, "preview_count": 4},
    "clip/tiny.yaml": {
        "architecture": {
            "embed_dim": 32,
            "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
            "text": {"context_length": 16, "width": 32, "heads": 2, "layers": 1},
        },
        "train": {"steps": 3, "batch_size": 8, "pool_size": 16, "eval_scenes": 10, "warmup_steps": 1},
    },
    "backbone/small_resnet.yaml": {"widths": [8, 8, 16, 16]},
    "config.yaml": {
        "train_cam": {"epochs": 1, "batch_size": 4},
        "train_clims": {"epochs": 1, "batch_size": 4},
        "make_cam": {"scales": [1.0], "num_workers": 1},
        "eval_cam": {"overlays": 1},
        "train_irn": {"epochs": 1, "batch_size": 4, "radius": 4, "side_channels": 8},
        "eval_sem_seg": {"overlays": 1},
        "train_seg": {"epochs": 1, "batch_size": 4, "head_width": 8},
        "eval_seg": {"scales": [1.0], "overlays": 1},
    },
}


def _merge(tree: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_uri):
    """A copy of this working tree as its own git repository, with conf/ shrunk to a tiny world."""
    root = tmp_path_factory.mktemp("project")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in files.stdout.split():
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for name, changes in SMALL.items():
        conf = yaml.safe_load((root / "conf" / name).read_text())
        _merge(conf, changes)
        (root / "conf" / name).write_text(yaml.safe_dump(conf, sort_keys=False))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
        # dvc runs `python stages/...`: the interpreter running the tests comes first on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    _run([sys.executable, "-m", "pipeline.cli", "compose"], root, env)
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        _run(args, root, env)
    return root, env


def test_repro_then_metrics_then_experiment(project):
    root, env = project
    _run(["dvc", "repro"], root, env)
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], root, env))
    metrics = next(iter(shown.values()))["data"]  # the workspace
    clip = metrics["metrics/clip.json"]["data"]
    assert {"object_top1", "background_top1_masked", "hole_margin"} <= set(clip)
    assert metrics["metrics/data.json"]["data"]["train_images"] == 8
    for name in ("cam_baseline", "cam_clims", "pseudo_labels", "segmentation"):
        assert 0 <= metrics[f"metrics/{name}.json"]["data"]["miou"] <= 100
    assert 0 < metrics["metrics/ir_labels.json"]["data"]["coverage"] <= 100
    assert "didn't change" in _run(["dvc", "repro"], root, env) or "up to date" in _run(["dvc", "status"], root, env)

    _run(["dvc", "exp", "run", "-n", "less-context", "-S", "dataset.cooccurrence=0.5"], root, env)
    assert yaml.safe_load((root / "params.yaml").read_text())["dataset"]["cooccurrence"] == 0.5
    rows = list(csv.DictReader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], root, env))))
    by_name = {row["Experiment"] or row["rev"]: row for row in rows}
    assert by_name["workspace"]["dataset.cooccurrence"] == "0.5"
    assert by_name["less-context"]["dataset.cooccurrence"] == "0.5"
    baseline = [row for row in rows if row["typ"] == "baseline" and row["rev"] != "workspace"]
    assert baseline[0]["dataset.cooccurrence"] == "0.85"  # the commit the experiment branched from
