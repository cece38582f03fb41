"""CAM training on Ray Train: DDP over two CPU workers (gloo), reports, checkpoints, resumption."""
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_cam, tiny_world
from faults import dying_once
from pipeline.cam import ray_train
from pipeline.cam.ray_train import train
from pipeline.nets.cam_net import load_cam_net
from pipeline.data.prepare import render_splits
from pipeline.params import validate


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_session):
    raw = tiny_cam(tiny_world(yaml.safe_load((REPO / "params.yaml").read_text()), num_train=16))
    root = tmp_path_factory.mktemp("ray_world")
    raw["distributed"].update(num_workers=2, max_failures=1, storage=str(root / "ray"))
    raw["train_cam"].update(epochs=3, batch_size=8)
    params = validate(raw)
    render_splits(params.dataset, root / "data", root / "data")
    return params, root


def test_two_worker_ddp_trains_reports_and_checkpoints(world):
    params, root = world
    history = train(params, "baseline", root / "data" / "train.parquet", root / "net", name="ddp")
    assert [row["epoch"] for row in history] == [1, 2, 3] and all(row["start_epoch"] == 0 for row in history)
    assert all(row["workers"] == 2 for row in history)
    assert all(math.isfinite(row["loss"]) for row in history)
    checkpoints = [p for p in Path(params.distributed.storage, "ddp").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # one per epoch, the latest two kept
    net, meta = load_cam_net(root / "net")
    assert meta["kind"] == "baseline" and len(meta["history"]) == 3
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 6, 16, 16)


def test_a_killed_worker_resumes_from_the_last_checkpoint(world, monkeypatch):
    params, root = world
    marker = root / "worker-died"
    monkeypatch.setattr(ray_train, "train_worker", dying_once(ray_train.train_worker, after_epoch=1, marker=marker))
    history = train(params, "baseline", root / "data" / "train.parquet", root / "net-resumed", name="resume")
    assert marker.exists(), "the worker was not killed"
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["start_epoch"] for row in history] == [0, 1, 1]  # epochs 2 and 3 ran after resuming from epoch 1
