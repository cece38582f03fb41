"""The tiny project: a copy of this working tree as its own git repository, conf/ shrunk to a
world that runs through every stage in seconds, driven by the real `dvc` command."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
        # co-occurrence as the data's: with the default's 0, its 10 held-out renders would show no
        # object on its context, which clims_loss.tau 'auto' reads
        "train": {"steps": 3, "batch_size": 8, "pool_size": 16, "eval_scenes": 10, "warmup_steps": 1, "cooccurrence": 0.85},
    },
    "backbone/small_resnet.yaml": {"widths": [8, 8, 16, 16]},
    "config.yaml": {
        # two sweep trials at once on 2 CPUs; the stages train (launcher auto: one worker, no
        # cluster) and map their images in their own processes, as the default does: Ray Train's
        # fits are tested in tests/test_cam_ray.py and by the sweep's trials below, the per-image
        # stages' Ray tasks in tests/test_cam_maps.py (against the in-process path) and
        # tests/test_cluster.py
        "distributed": {"cpus_per_worker": 1},
        "train_cam": {"epochs": 1, "batch_size": 4},
        "train_clims": {"epochs": 1, "batch_size": 4},
        "make_cam": {"scales": [1.0], "num_workers": 0},
        "make_ir_label": {"num_workers": 0},
        "make_sem_seg": {"num_workers": 0},
        "eval_cam": {"overlays": 1},
        "train_irn": {"epochs": 1, "batch_size": 4, "radius": 4, "side_channels": 8},
        "eval_sem_seg": {"overlays": 1},
        "train_seg": {"epochs": 1, "batch_size": 4, "head_width": 8},
        "eval_seg": {"scales": [1.0], "overlays": 1},
        "sweep": {"name": "tiny", "epochs": 2, "train_images": 4, "held_images": 4, "overlays": 2},
    },
}


def merge(tree: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            merge(tree[key], value)
        else:
            tree[key] = value


def run(args, cwd, env, timeout: int = 900) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def tiny_project(root: Path, env: dict, changes: dict | None = None) -> dict:
    """Copy this working tree into `root` with SMALL (then `changes`, by conf file) applied to
    conf/, compose params.yaml, commit; returns the environment to run dvc there with (`env` on
    top of this one)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in files.stdout.split():
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for layer in (SMALL, changes or {}):
        for name, change in layer.items():
            conf = yaml.safe_load((root / "conf" / name).read_text())
            merge(conf, change)
            (root / "conf" / name).write_text(yaml.safe_dump(conf, sort_keys=False))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
        # dvc runs `python stages/...`: the interpreter running the tests comes first on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **env,
    }
    run([sys.executable, "-m", "pipeline.cli", "compose"], root, env)
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        run(args, root, env)
    return env
