"""Outgrowing one machine, on this host: a two-node Ray cluster started with Ray's own CLI, the
checkpoints in an S3-compatible object store, an MLflow tracking server, and queued DVC
experiments, all on the tiny world. The `cluster` group: `python -m pytest -m cluster`.

The tests run in file order on one cluster, one store, one server and one project: training on
both nodes and the loss of one, a per-image stage sharded over both, the sweep on the server,
then two queued experiments.
"""
import csv
import json
import re
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from servers import RayCluster, mlflow_server, s3_client, s3_server
from tiny_project import run, tiny_project

pytestmark = pytest.mark.cluster

HEAD, SECOND = RayCluster.HEAD, "127.0.0.3"
BUCKET = "checkpoints"
EPOCHS = 40  # ~0.2 s each: the kill after epoch 2 lands well before the end


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as env:
        yield env


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """Two nodes of one CPU each: a run of two 1-CPU workers needs both."""
    with RayCluster(tmp_path_factory.mktemp("ray_cluster"), cpus_per_node=1, env=s3) as cluster:
        cluster.start_node(HEAD)
        cluster.start_node(SECOND)
        yield cluster


@pytest.fixture(scope="module")
def project(tmp_path_factory, cluster, s3, tracking):
    """The tiny project with the cluster's settings: Ray Train with one worker per node, the
    checkpoints in the object store, every stage tracked on the server."""
    root = tmp_path_factory.mktemp("cluster_project")
    changes = {
        "dataset/synthetic.yaml": {"num_train": 16},
        "config.yaml": {
            "distributed": {"launcher": "ray", "num_workers": 2, "cpus_per_worker": 1, "max_failures": 3,
                            "storage": f"s3://{BUCKET}/runs"},
            "tracking": {"uri": tracking},
            "train_cam": {"epochs": EPOCHS, "batch_size": 4},
            "make_cam": {"scales": [1.0], "num_workers": 2},
        },
    }
    env = tiny_project(root, {**s3, **cluster.env}, changes)
    env.pop("MLFLOW_TRACKING_URI", None)  # tracking.uri names the server
    return root, env


def stream(args, cwd, env, on_line=lambda line: None, timeout: float = 900, fails: bool = False) -> str:
    """Run `args`, handing each output line to `on_line` as it comes; returns the whole output
    once it has succeeded (failed, with `fails`)."""
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.time() + timeout
    for line in process.stdout:
        lines.append(line)
        on_line(line)
        assert time.time() < deadline, f"{' '.join(args)} ran past {timeout} s"
    process.wait()
    output = "".join(lines)
    assert (process.returncode != 0) == fails, f"{' '.join(args)} exited with {process.returncode}:\n{output[-5000:]}"
    return output


def test_training_spans_both_nodes_and_survives_losing_one(project, cluster, s3):
    """train_cam's two workers land on the two nodes; the second node dies during the third epoch
    and comes back: Ray Train restarts the workers and the run resumes from its checkpoint in
    the object store (epoch 1's at least: rank 0 prints an epoch before reporting its checkpoint)."""
    root, env = project
    lost = []

    def kill_in_third_epoch(line: str) -> None:
        if not lost and f"epoch 2/{EPOCHS}" in line:
            cluster.kill_node(SECOND)
            lost.append(time.time())
            time.sleep(3)
            cluster.start_node(SECOND)  # resources return

    output = stream(["dvc", "repro", "train_cam"], root, env, kill_in_third_epoch)
    assert lost, "the second epoch never finished"
    placements = re.findall(r"2 worker\(s\) on (\d) node\(s\): rank 0 on (\S+) \((\w+)\), rank 1 on (\S+) \((\w+)\)", output)
    assert len(placements) >= 2, output[-5000:]  # the first start and the one after the loss
    nodes = [{ip0: node0, ip1: node1} for count, ip0, node0, ip1, node1 in placements]
    assert all(count == "2" for count, *_ in placements)
    assert all(set(n) == {HEAD, SECOND} and n[HEAD] != n[SECOND] for n in nodes)
    assert nodes[0][SECOND] != nodes[-1][SECOND]  # the second node's new raylet: a new node id

    history = list(csv.DictReader(open(root / "plots" / "train_cam.csv")))
    assert [int(row["epoch"]) for row in history] == list(range(1, EPOCHS + 1))
    assert max(int(row["start_epoch"]) for row in history) >= 1, f"the run started over instead of resuming:\n{output[-6000:]}"
    keys = [o["Key"] for o in s3_client(s3).list_objects_v2(Bucket=BUCKET, Prefix="runs/train_cam-")["Contents"]]
    assert any(key.endswith("/state.pt") for key in keys)  # the checkpoints live in the object store


def test_a_per_image_stage_shards_over_both_nodes(project):
    root, env = project
    output = stream(["dvc", "repro", "make_cam@baseline"], root, env)
    assert re.search(r"2 shards on 2 node\(s\): 127\.0\.0\.2 \(\w+\), 127\.0\.0\.3 \(\w+\)", output), output[-3000:]
    assert len(list((root / "artifacts" / "cams_baseline").glob("*.npz"))) == 16


def test_stages_and_a_sweep_are_tracked_on_the_server(project, tracking):
    root, env = project
    run(["dvc", "repro", "prepare_clip"], root, env)
    run([sys.executable, "-m", "pipeline.cli", "sweep", "--num-samples", "2"], root, env)
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("clims").experiment_id
    # the artifacts go to the server's store, which every machine reaches, not to a node's disk
    assert client.get_experiment(experiment).artifact_location.startswith("mlflow-artifacts:")
    stages = {r.data.tags["clims.stage"]: r for r in client.search_runs([experiment], "tags.`clims.stage` != ''")}
    assert {"prepare_data", "train_cam", "make_cam_baseline", "prepare_clip"} <= set(stages)
    assert len(stages["train_cam"].data.metrics) > 0 and stages["train_cam"].info.status == "FINISHED"
    trials = client.search_runs([experiment], "tags.`clims.sweep` = 'tiny' and tags.`clims.trial` != 'parent'")
    assert len(trials) == 2 and all("cam_miou" in t.data.metrics for t in trials)
    # the trials' overlays, read from their checkpoints in the object store, are on the server
    assert any(a.path == "overlays" for a in client.list_artifacts(trials[0].info.run_id))


def test_two_queued_experiments_run_at_once(project, tracking):
    root, env = project
    for lr in ("0.05", "0.2"):
        run(["dvc", "exp", "run", "--queue", "-S", f"train_cam.lr={lr}", "eval_cam@baseline"], root, env)
    run(["dvc", "queue", "start", "-j", "2"], root, env)
    deadline = time.time() + 900
    while True:
        status = run(["dvc", "queue", "status"], root, env)
        if "Queued" not in status and "Running" not in status:
            break
        assert time.time() < deadline, status
        time.sleep(5)
    assert status.count("Success") == 2, status
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env))
    names = [e["name"] for entry in shown for e in (entry.get("experiments") or []) if e.get("name")]
    assert len(names) == 2, shown
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("clims").experiment_id
    spans = []
    for name in names:  # each experiment's stages wrote their runs: no write was lost
        runs = client.search_runs([experiment], f"tags.`dvc.experiment` = '{name}' and tags.`clims.stage` = 'train_cam'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "loss" in runs[0].data.metrics
        spans.append((runs[0].info.start_time, runs[0].info.end_time))
        # it joined the cluster (its own Ray would be one node)
        assert "2 worker(s) on 2 node(s)" in run(["dvc", "queue", "logs", name], root, env)
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # the two ran at the same time


def test_without_retries_a_lost_node_stops_the_run_in_one_line_and_the_next_repro_resumes(project, cluster):
    """With no retries left, the loss of a node ends the stage with one line naming what failed
    and where the checkpoints are; once the node is back, with retries, `dvc repro` resumes."""
    root, env = project
    committed = (root / "params.yaml").read_text()
    params = yaml.safe_load(committed)
    params["train_cam"]["epochs"] = EPOCHS // 2  # another run than the first test's
    params["distributed"]["max_failures"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        lost = []

        def kill_in_third_epoch(line: str) -> None:
            if not lost and f"epoch 2/{EPOCHS // 2}" in line:
                cluster.kill_node(SECOND)
                lost.append(line)

        output = stream(["dvc", "repro", "train_cam"], root, env, kill_in_third_epoch, fails=True)
        assert lost
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, output[-5000:]
        print(errors[0])  # shown with -s
        assert re.match(rf"error: train_cam-\w+: training stopped after 0 retries \(distributed.max_failures\): rank \d: .+\. "
                        rf"Its checkpoints stay in s3://{BUCKET}/runs/train_cam-\w+: run the stage again", errors[0]), errors[0]
    finally:
        if SECOND not in cluster.nodes:
            cluster.start_node(SECOND)
        params["distributed"]["max_failures"] = 3
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stream(["dvc", "repro", "train_cam"], root, env)
    history = list(csv.DictReader(open(root / "plots" / "train_cam.csv")))
    assert [int(row["epoch"]) for row in history] == list(range(1, EPOCHS // 2 + 1))
    assert max(int(row["start_epoch"]) for row in history) >= 1, "the stopped run was not resumed"
    (root / "params.yaml").write_text(committed)
