"""dvc.yaml and the Hydra integration, driven by the real `dvc` command on a tiny world."""
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

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
        "distributed": {"cpus_per_worker": 1},  # two sweep trials at once on 2 CPUs
        "train_cam": {"epochs": 1, "batch_size": 4},
        "train_clims": {"epochs": 1, "batch_size": 4},
        "make_cam": {"scales": [1.0], "num_workers": 1},
        "eval_cam": {"overlays": 1},
        "train_irn": {"epochs": 1, "batch_size": 4, "radius": 4, "side_channels": 8},
        "eval_sem_seg": {"overlays": 1},
        "train_seg": {"epochs": 1, "batch_size": 4, "head_width": 8},
        "eval_seg": {"scales": [1.0], "overlays": 1},
        "sweep": {"name": "tiny", "epochs": 2, "train_images": 4, "held_images": 4, "overlays": 2},
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

    # A sweep over the loss weights, interrupted once its first trial has finished, then run again.
    sweep = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sweep", "--num-samples", "4"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    trials = lambda: _trial_runs(client, "tiny")  # noqa: E731
    deadline = time.time() + 300
    while not any(r.info.status == "FINISHED" for r in trials()) and sweep.poll() is None and time.time() < deadline:
        time.sleep(1)
    sweep.send_signal(signal.SIGINT)
    assert sweep.wait(timeout=120) is not None
    finished_before = {r.info.run_id for r in trials() if r.info.status == "FINISHED"}
    assert finished_before, sweep.stdout.read()[-3000:]
    out = _run([sys.executable, "-m", "pipeline.cli", "sweep", "--num-samples", "4"], root, env)
    assert "resuming sweep tiny" in out
    runs = trials()
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert finished_before <= {r.info.run_id for r in runs}  # the finished trials were not run again
    for run in runs:
        assert set(run.data.params) == {"otm", "btm", "cbs", "reg", "tau"}
        assert 0 <= run.data.metrics["cam_miou"] <= 100
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "cam_miou")]
        assert epochs == sorted(set(epochs)) and set(epochs) <= {1, 2}  # no epoch logged twice
    assert any(client.list_artifacts(r.info.run_id, "overlays") for r in runs)
    best = yaml.safe_load((root / "sweeps" / "tiny" / "best.yaml").read_text())
    assert best["trials"] == 4 and best["cam_miou"] == round(max(r.data.metrics["cam_miou"] for r in runs), 2)
    assert best["apply"].startswith("dvc exp run -S clims_loss.weights.otm=")

    # Applying the best weights: an experiment that reruns CLIMS and what follows it.
    _run(["dvc", "exp", "run", "-n", "best-weights", *best["apply"].split()[3:]], root, env)
    applied = yaml.safe_load((root / "params.yaml").read_text())["clims_loss"]
    assert applied["weights"] == best["clims_loss"]["weights"] and applied["tau"] == best["clims_loss"]["tau"]
    rows = list(csv.DictReader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], root, env))))
    by_name = {row["Experiment"] or row["rev"]: row for row in rows}
    assert float(by_name["best-weights"]["clims_loss.tau"]) == best["clims_loss"]["tau"]
    assert by_name["best-weights"]["metrics/segmentation.json:miou"] != ""
    baseline = [row for row in rows if row["typ"] == "baseline" and row["rev"] != "workspace"]
    assert baseline[0]["clims_loss.tau"] == "auto"  # the commit the experiment branched from


def _trial_runs(client, sweep: str):
    experiment = client.get_experiment_by_name("clims")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`clims.sweep` = '{sweep}' and tags.`clims.trial` != 'parent'")
