"""`distributed.launcher: local`: a training stage's epochs in its own process, without Ray: the
same net as a one-worker Ray Train run, its state file as the checkpoint a killed run resumes from."""
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_cam, tiny_world
from pipeline import train_loop
from pipeline.cam.ray_train import train
from pipeline.data.prepare import render_splits
from pipeline.errors import UserError
from pipeline.io import NET_META, NET_WEIGHTS, file_digest
from pipeline.nets.cam_net import load_cam_net
from pipeline.params import validate
from pipeline.storage import StateFile, join, storage_path
from servers import s3_client, s3_server


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    raw = tiny_cam(tiny_world(yaml.safe_load((REPO / "params.yaml").read_text()), num_train=16))
    root = tmp_path_factory.mktemp("local_world")
    raw["distributed"].update(num_workers=1, storage=str(root / "runs"), launcher="local")
    raw["train_cam"].update(epochs=3, batch_size=8)
    params = validate(raw)
    render_splits(params.dataset, root / "data", root / "data")
    return params, root


def weights(folder):
    return load_cam_net(folder)[0].state_dict()


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_local_run_trains_the_same_net_as_a_one_worker_ray_run(world, ray_session):
    params, root = world
    history = train(params, "baseline", root / "data" / "train.parquet", root / "local", name="local")
    assert [row["epoch"] for row in history] == [1, 2, 3] and all(row["steps"] == 2 for row in history)
    assert (root / "runs" / "local" / train_loop.STATE_FILE).is_file()
    on_ray = params.model_copy(update={"distributed": params.distributed.model_copy(update={"launcher": "ray"})})
    train(on_ray, "baseline", root / "data" / "train.parquet", root / "ray", name="ray")
    assert same_weights(weights(root / "local"), weights(root / "ray"))
    same_files(root / "local", root / "ray")


def same_files(a, b) -> None:
    """Two net folders byte for byte, net.json included: a rerun that trains the same net leaves
    DVC's hash of the folder as it was, so the stages after it are not rerun."""
    for name in (NET_WEIGHTS, NET_META):
        assert file_digest(a / name) == file_digest(b / name), name


def killed_after_epoch_1(params, root, name: str, monkeypatch) -> None:
    """Train until the process is killed right after epoch 1's state was saved."""
    report = train_loop.LocalSession.report

    def report_then_die(self, metrics, state=None, folder=None):
        report(self, metrics, state, folder)
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(train_loop.LocalSession, "report", report_then_die)
        with pytest.raises(KeyboardInterrupt):
            train(params, "baseline", root / "data" / "train.parquet", root / name, name=name)


def test_a_killed_local_run_resumes_from_its_state_file(world, monkeypatch):
    params, root = world
    train(params, "baseline", root / "data" / "train.parquet", root / "whole", name="whole")
    killed_after_epoch_1(params, root, "killed", monkeypatch)
    assert not (root / "killed").exists()
    history = train(params, "baseline", root / "data" / "train.parquet", root / "killed", name="killed")
    assert [row["start_epoch"] for row in history] == [0, 1, 1]  # epochs 2 and 3 after resuming from epoch 1
    assert same_weights(weights(root / "killed"), weights(root / "whole"))
    same_files(root / "killed", root / "whole")  # the net folder does not tell that it was resumed


def test_a_local_run_checkpoints_into_an_object_store_and_resumes_from_it(world, monkeypatch):
    """distributed.storage as a URI: the state file goes to an S3-compatible store (moto's, on
    127.0.0.1) and a killed run resumes from it."""
    params, root = world
    with s3_server("checkpoints") as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        on_s3 = params.model_copy(update={"distributed": params.distributed.model_copy(update={"storage": "s3://checkpoints/runs/"})})
        killed_after_epoch_1(on_s3, root, "s3", monkeypatch)
        keys = [o["Key"] for o in s3_client(env).list_objects_v2(Bucket="checkpoints")["Contents"]]
        assert f"runs/s3/{train_loop.STATE_FILE}" in keys and not any(k.endswith(".partial") for k in keys)
        history = train(on_s3, "baseline", root / "data" / "train.parquet", root / "s3", name="s3")
    assert [row["start_epoch"] for row in history] == [0, 1, 1]


def test_storage_locations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_path("s3://bucket/runs/") == "s3://bucket/runs"
    assert Path(storage_path("ray_results")).is_absolute()
    assert join("s3://bucket/runs", "sweeps", "a") == "s3://bucket/runs/sweeps/a"
    with pytest.raises(UserError, match="distributed.storage: cannot open nosuch://x/state.pt"):
        StateFile("nosuch://x/state.pt")


def test_local_training_is_one_worker(base_params):
    base_params["distributed"].update(launcher="local", num_workers=2)
    with pytest.raises(UserError, match="distributed.*num_workers must be 1"):
        validate(base_params)


def test_auto_trains_in_process_only_for_one_worker_outside_a_cluster(base_params, monkeypatch):
    def in_process(**distributed) -> bool:
        base_params["distributed"].update(distributed)
        return validate(base_params).distributed.trains_in_process()

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert in_process(launcher="auto", num_workers=1)
    assert not in_process(launcher="auto", num_workers=2)  # DDP needs Ray Train
    assert not in_process(launcher="ray", num_workers=1)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert not in_process(launcher="auto", num_workers=1)  # a cluster's GPUs and nodes are Ray's
    assert in_process(launcher="local", num_workers=1)


def test_the_epoch_log_keeps_its_sums_on_the_device_until_read():
    log = train_loop.EpochLog()
    for value, n in ((0.5, 4), (0.25, 2)):
        log.add({"loss": torch.tensor(value)}, n)
    assert isinstance(log.sums["loss"], torch.Tensor)
    assert log.means() == {"loss": pytest.approx((0.5 * 4 + 0.25 * 2) / 6)}
