"""CAM training on Ray Train: DDP over two CPU workers (gloo), reports, checkpoints, resumption."""
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from conftest import REPO, tiny_cam, tiny_world
from faults import counting_starts, dying_once, refusing_work
from pipeline.errors import UserError
from pipeline.cam import ray_train
from pipeline.cam.ray_train import train
from pipeline.data.manifest import read_manifest
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


def test_a_data_error_in_a_worker_is_one_line_and_not_retried(world, monkeypatch):
    params, root = world
    data = root / "broken_data"
    shutil.copytree(root / "data", data)
    records = read_manifest(data / "train.parquet")
    broken = records[3].image_path
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated PNG
    starts = root / "worker-starts"
    monkeypatch.setattr(ray_train, "train_worker", counting_starts(ray_train.train_worker, starts))
    with pytest.raises(UserError) as error:
        train(params, "baseline", data / "train.parquet", root / "net-broken", name="broken")
    message = str(error.value)
    assert message.startswith(f"{broken}: unreadable image") and "\n" not in message
    assert len(starts.read_text().splitlines()) == 2  # one attempt of the two workers: max_failures=1 was not spent
    assert not (root / "net-broken").exists()


def test_a_local_cluster_listens_on_loopback_only_beside_another_on_the_host(world, capfd):
    params, root = world
    other = subprocess.Popen([sys.executable, "-c", "import time; from pipeline.distributed import init_ray; "
                              "init_ray(num_cpus=1); print('up', flush=True); time.sleep(300)"],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    try:
        assert other.stdout.readline().strip() == "up"
        train(params.model_copy(update={"train_cam": params.train_cam.model_copy(update={"epochs": 1})}), "baseline",
              root / "data" / "train.parquet", root / "net-beside", name="beside")
        out, err = capfd.readouterr()
        assert "multiple active Ray instances" not in out + err
        ours = [psutil.Process(), *psutil.Process().children(recursive=True)]
        listening = {(c.laddr.ip, c.laddr.port) for p in ours for c in _listening(p)}
        assert listening, "no listening socket found for this process's Ray"
        assert {ip for ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening
    finally:
        other.send_signal(signal.SIGINT)  # ray.shutdown() at exit stops its cluster
        other.wait(timeout=60)


def _listening(process: psutil.Process) -> list:
    try:
        return [c for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_a_data_error_in_a_ray_task_is_one_line(world):
    from pipeline.distributed import map_shards

    with pytest.raises(UserError) as error:
        map_shards(refusing_work, ["a.png", "b.png"], 2, False)
    assert str(error.value) in ("a.png: unreadable image (a bad file)", "b.png: unreadable image (a bad file)")
