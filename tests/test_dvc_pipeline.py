"""dvc.yaml and the Hydra integration, driven by the real `dvc` command on a tiny world: what each
stage writes for the next, the sweep and its experiment (the real datasets' path through the same
stages: tests/test_voc_plumbing.py)."""
import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from conftest import REPO, run_stage
from tiny_project import run as _run
from pipeline.data.manifest import read_manifest


@pytest.fixture(scope="module")
def reproduced(project):
    """The tiny project after one `dvc repro`. The tests below read what its stages wrote, in
    file order, before the sweep and the experiments change the workspace."""
    root, env = project
    _run(["dvc", "repro"], root, env)
    return root, env


def test_repro_then_metrics_then_nothing_to_do(reproduced):
    root, env = reproduced
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], root, env))
    metrics = next(iter(shown.values()))["data"]  # the workspace
    clip = metrics["metrics/clip.json"]["data"]
    assert {"object_top1", "background_top1_masked", "hole_margin"} <= set(clip)
    assert metrics["metrics/data.json"]["data"]["train_images"] == 8
    for name in ("cam_baseline", "cam_clims", "pseudo_labels", "segmentation"):
        assert 0 <= metrics[f"metrics/{name}.json"]["data"]["miou"] <= 100
    assert 0 < metrics["metrics/ir_labels.json"]["data"]["coverage"] <= 100
    assert "didn't change" in _run(["dvc", "repro"], root, env) or "up to date" in _run(["dvc", "status"], root, env)


def test_the_context_leak_by_class_averages_to_eval_cams_leak(reproduced):
    root, _ = reproduced
    sys.path.insert(0, str(REPO / "benchmarks"))
    from leak_by_class import context_leak_by_class

    for cams in ("baseline", "clims"):
        by_class = context_leak_by_class(root, cams)
        assert by_class and set(by_class) <= {"boat", "train", "plane", "car", "cow", "bird"}
        metrics = json.loads((root / "metrics" / f"cam_{cams}.json").read_text())
        assert sum(by_class.values()) / len(by_class) == pytest.approx(metrics["context_leak"])
        assert metrics["per_class_context_leak"] == pytest.approx(by_class)  # eval_cam records it too


def test_prepare_data_writes_manifests_that_match_the_masks(reproduced):
    root, _ = reproduced
    for split, count in (("train", 8), ("train_eval", 8), ("val", 4)):
        records = read_manifest(root / "data" / f"{split}.parquet")
        assert len(records) == count
        for r in records:
            image = np.asarray(Image.open(r.image_path))
            mask = np.asarray(Image.open(r.label_path))
            background = np.asarray(Image.open(r.background_path))
            assert image.shape == (r.height, r.width, 3) and mask.shape == background.shape == (r.height, r.width)
            assert tuple(sorted(set(np.unique(mask).tolist()) - {0})) == r.class_ids
    metrics = json.loads((root / "metrics" / "data.json").read_text())
    assert metrics["train_images"] == metrics["train_eval_images"] == 8 and 0 < metrics["train_object_pixel_fraction"] < 0.5
    assert Image.open(root / "data" / "preview.png").size[0] > 0
    assert not list(root.glob("data/.*")), "a temporary folder was left behind"


def test_prepare_clip_writes_a_clip_later_stages_can_load(reproduced):
    from pipeline.clip.model import load_clip

    root, _ = reproduced
    clip, texts = load_clip(root / "artifacts" / "clip")
    assert texts["class_names"] == ["boat", "train", "plane", "car", "cow", "bird"]
    assert texts["class_embeddings"].shape == (6, 32) and texts["background_embeddings"].shape == (9, 32)
    assert texts["class_prompts"][0] == "a photo of boat."
    assert clip.encode_images(torch.rand(2, 3, 64, 64)).shape == (2, 32)
    metrics = json.loads((root / "metrics" / "clip.json").read_text())
    for key in ("object_top1", "object_top1_masked", "background_top1", "background_top1_masked", "context_margin", "hole_margin",
                "part_margin", "body_margin"):
        assert key in metrics and np.isfinite(metrics[key])


def test_stage_runs_are_tracked_under_one_parent(reproduced):
    root, env = reproduced
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("clims").experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.info.run_name == "prepare_data").data.tags["mlflow.parentRunId"]  # dvc repro's
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
    assert set(children) == {"prepare_data", "prepare_clip", "train_cam", "train_clims", "make_cam_baseline",
                             "make_cam_clims", "eval_cam_baseline", "eval_cam_clims", "make_ir_label", "train_irn",
                             "make_sem_seg", "eval_sem_seg", "train_seg", "eval_seg"}
    assert "object_top1" in children["prepare_clip"].data.metrics
    assert "train_object_pixel_fraction" in children["prepare_data"].data.metrics
    assert "preview.png" in [a.path for a in client.list_artifacts(children["prepare_data"].info.run_id)]
    assert client.list_artifacts(children["eval_sem_seg"].info.run_id, "overlays"), "no overlays logged"


def test_cam_stages_chain_nets_cams_and_scores(reproduced):
    from pipeline.data.cam_files import load_cam
    from pipeline.nets.cam_net import load_cam_net

    root, _ = reproduced
    baseline, meta = load_cam_net(root / "artifacts" / "net_baseline")
    clims, clims_meta = load_cam_net(root / "artifacts" / "net_clims")
    assert meta["kind"] == "baseline" and clims_meta["kind"] == "clims" and clims.classifier.bias is not None
    trained = json.loads((root / "metrics" / "train_clims.json").read_text())
    clip = json.loads((root / "metrics" / "clip.json").read_text())
    assert trained["tau"] == pytest.approx((clip["cos_object_vs_background_p99"] + clip["cos_context_together_mean"]) / 2)
    assert {"otm", "btm", "cbs", "reg", "loss"} <= set(trained)
    for record in read_manifest(root / "data" / "train.parquet"):
        cam = load_cam(root / "artifacts" / "cams_clims" / f"{record.image_id}.npz")
        assert cam["class_ids"].tolist() == list(record.class_ids) and cam["high_res"].shape[-2:] == (64, 64)
    for net in ("baseline", "clims"):
        scores = json.loads((root / "metrics" / f"cam_{net}.json").read_text())
        assert 0 <= scores["miou"] <= 100 and 0.05 <= scores["best_threshold"] <= 0.95
        assert {"context_leak", "mask_miou", "mask_miou_at_0.5", "per_class_iou"} <= set(scores)
        curve = (root / "plots" / f"cam_{net}_thresholds.csv").read_text().splitlines()
        assert curve[0].startswith("threshold,miou") and len(curve) == 1 + 19


def test_irn_stages_chain_ir_labels_boundary_net_and_pseudo_labels(reproduced):
    from pipeline.io import read_label
    from pipeline.nets.boundary import load_boundary_net

    root, _ = reproduced
    for record in read_manifest(root / "data" / "train.parquet"):
        ir_label = read_label(root / "artifacts" / "ir_labels" / f"{record.image_id}.png")
        pseudo = read_label(root / "artifacts" / "pseudo_labels" / f"{record.image_id}.png")
        assert ir_label.shape == pseudo.shape == (record.height, record.width)
        assert set(np.unique(ir_label).tolist()) <= {0, 255, *record.class_ids}
        assert set(np.unique(pseudo).tolist()) <= {0, *record.class_ids}
    net, meta = load_boundary_net(root / "artifacts" / "net_irn")
    assert len(meta["history"]) == 1 and {"bg_pos", "fg_pos", "neg", "loss"} <= set(meta["history"][0])
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 1, 16, 16)
    quality = json.loads((root / "metrics" / "ir_labels.json").read_text())
    assert 0 < quality["coverage"] <= 100 and 0 <= quality["miou"] <= 100
    scores = json.loads((root / "metrics" / "pseudo_labels.json").read_text())
    assert 0 <= scores["miou"] <= 100 and {"per_class_iou", "context_leak"} <= set(scores)
    per_class = (root / "plots" / "pseudo_labels_per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,cam,pseudo_label" and per_class[1].startswith("background,")


def test_segmentation_stages_train_on_pseudo_labels_and_score_val(reproduced):
    from pipeline.nets.deeplab import load_seg_net

    root, _ = reproduced
    net, meta = load_seg_net(root / "artifacts" / "net_seg")
    assert len(meta["history"]) == 1 and meta["class_names"][0] == "boat"
    assert net(torch.rand(1, 3, 64, 64))["out"].shape == (1, 7, 64, 64)
    scores = json.loads((root / "metrics" / "segmentation.json").read_text())
    assert scores["images"] == 4 and 0 <= scores["miou"] <= 100 and "per_class_iou" in scores
    rows = (root / "plots" / "segmentation_confusion.csv").read_text().splitlines()
    assert rows[0].startswith("actual,background,boat") and len(rows) == 8
    pixels = sum(int(v) for row in rows[1:] for v in row.split(",")[1:])
    assert pixels == 4 * 64 * 64  # every val pixel counted once
    assert Image.open(root / "plots" / "segmentation_confusion.png").size[0] > 100


def test_a_missing_net_is_one_clear_error(reproduced, tmp_path, mlflow_uri):
    root, _ = reproduced
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "data", tmp_path / "data")
    result = run_stage("make_cam", tmp_path, mlflow_uri, "clims")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: artifacts/net_clims/net.json: no trained CAM net here (run its training stage first)"
    assert not (tmp_path / "artifacts").exists()
    result = run_stage("make_sem_seg", tmp_path, mlflow_uri)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: artifacts/net_irn/net.json: no trained IRN here (run train_irn first)"
    assert not (tmp_path / "artifacts").exists()


def test_bad_params_stop_dvc_before_it_removes_any_output(reproduced):
    """check_params fails first, so DVC never reaches (and never clears) the stages after it."""
    root, env = reproduced
    params_file = root / "params.yaml"
    good = params_file.read_text()
    kept = ["artifacts/net_baseline/weights.pt", "metrics/train_cam.json", "plots/train_cam.csv", "metrics/clip.json",
            "metrics/data.json", "data/train.parquet"]
    before = {name: (root / name).read_bytes() for name in kept}
    bad = {"train_cam.epochs: must be at least 1": lambda raw: raw["train_cam"].update(epochs=-1),
           "train_cam.epochz: unknown key": lambda raw: raw["train_cam"].update(epochz=3)}
    try:
        for message, change in bad.items():
            raw = yaml.safe_load(good)
            change(raw)
            params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
            result = subprocess.run(["dvc", "repro", "train_cam"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode != 0
            assert message.split(":")[0] in result.stderr and "Running stage 'train_cam'" not in result.stdout
            assert {name: (root / name).read_bytes() for name in kept} == before, message
        _run([sys.executable, "-m", "pipeline.cli", "compose", "dataset=voc12", "dataset.root=/nowhere/VOC2012"], root, env)
        result = subprocess.run(["dvc", "repro", "prepare_data"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and "/nowhere/VOC2012: dataset.root is not a folder" in result.stderr
        assert {name: (root / name).read_bytes() for name in kept} == before
    finally:
        params_file.write_text(good)
    # the good params again: only the check reruns, everything else is still up to date
    out = _run(["dvc", "repro"], root, env)
    assert out.count("Running stage") == 1 and "Running stage 'check_params'" in out


def test_a_sweep_resumes_and_its_best_weights_run_as_an_experiment(reproduced):
    root, env = reproduced
    # A sweep over the loss weights, interrupted once its first trial has finished, then run again.
    sweep = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sweep", "--num-samples", "4"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    trials = lambda: _trial_runs(client, "tiny")  # noqa: E731
    deadline = time.time() + 600  # a wait, not a timing goal: on shared cores a trial took over 300 s
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

    # Applying the best weights: an experiment that reruns CLIMS. It stops at the CLIMS CAMs' scores
    # (the stages after them rerun by the same DVC rules, which the `reproduced` tests cover).
    trained_before = _lock_outs(root, "train_clims")
    out = _run(["dvc", "exp", "run", "-n", "best-weights", *best["apply"].split()[3:], "eval_cam@clims"], root, env)
    assert "Running stage 'train_clims'" in out and "Running stage 'train_cam'" not in out
    applied = yaml.safe_load((root / "params.yaml").read_text())["clims_loss"]
    assert applied["weights"] == best["clims_loss"]["weights"] and applied["tau"] == best["clims_loss"]["tau"]
    rows = list(csv.DictReader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], root, env))))
    by_name = {row["Experiment"] or row["rev"]: row for row in rows}
    assert float(by_name["best-weights"]["clims_loss.tau"]) == best["clims_loss"]["tau"]
    assert _lock_outs(root, "train_clims") != trained_before  # the new weights trained a new net ...
    scored = json.loads((root / "metrics" / "cam_clims.json").read_text())["miou"]
    assert float(by_name["best-weights"]["metrics/cam_clims.json:miou"]) == pytest.approx(scored)  # ... scored in the experiment
    baseline = [row for row in rows if row["typ"] == "baseline" and row["rev"] != "workspace"]
    assert baseline[0]["clims_loss.tau"] == "auto"  # the commit the experiment branched from


def _lock_outs(root: Path, stage: str) -> list[str]:
    """The content hashes dvc.lock records for a stage's outputs."""
    return [out["md5"] for out in yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["outs"]]


def _trial_runs(client, sweep: str):
    experiment = client.get_experiment_by_name("clims")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`clims.sweep` = '{sweep}' and tags.`clims.trial` != 'parent'")
